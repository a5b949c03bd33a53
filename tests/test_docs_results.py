"""docs/results keeps only files that a doc or a test cites, and every cited path exists.

A doc cites a file by its name or its path under docs/results, or by a pattern the docs use:
``phase13_{smollm2,tiny}_x.json``, ``generation_3k_v5_{split}.json``, ``generation_*_first.json``,
``..._seed5.json``. ``X_predictions.json`` is cited with ``X.json`` ("predictions beside it").
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
TOKEN = re.compile(r"[\w.{},*/-]+\.(?:json|md|diff)\b")


def citing_texts() -> dict[str, str]:
    paths = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").glob("*.md"),
             *ROOT.glob("modeling/adapters/*/README.md"), *(ROOT / "hub_cards").glob("*"), ROOT / "experiments" / "README.md",
             *(ROOT / "tests").rglob("*.py"), *(ROOT / "experiments").rglob("*.py")]
    return {str(p.relative_to(ROOT)): p.read_text() for p in paths if p.is_file() and p != Path(__file__).resolve()}


def patterns(text: str) -> set[str]:
    """File-name patterns (fnmatch) cited in ``text``, relative to docs/results."""
    out = set()
    for token in TOKEN.findall(text):
        name = token.split("docs/results/")[-1]
        name = "*" + name[3:] if name.startswith("...") else name
        name = re.sub(r"\{\w+\}", "*", name)  # {split}: any split
        group = re.search(r"\{([^{}]*,[^{}]*)\}", name)
        names = [name[:group.start()] + alt + name[group.end():] for alt in group.group(1).split(",")] if group else [name]
        # a pattern that names nothing ("*.json", "{stem}.json") cites nothing
        out.update(n for n in names if len(re.sub(r"[*.]|json$|md$|diff$", "", n)) >= 4)
    return out


def cited(files: list[str], pats: set[str]) -> set[str]:
    hit = {f for f in files for p in pats if fnmatch.fnmatch(f, p) or fnmatch.fnmatch(f.rsplit("/", 1)[-1], p)}
    return hit | {f for f in files if f.endswith("_predictions.json") and f.replace("_predictions", "") in hit}


def test_the_matcher_reads_the_docs_patterns():
    files = ["a_v5_test_x.json", "a_v5_test_x_predictions.json", "p_smollm2_lex.json", "p_tiny_lex.json",
             "q_seed5.json", "g_32k_first.json", "phase12/phase12.md", "orphan_v3.json"]
    text = ("`docs/results/a_v5_{split}.json`, predictions beside each; `p_{smollm2,tiny}_lex.json`; "
            "`..._seed5.json`; `docs/results/g_*_first.json`; `docs/results/phase12/phase12.md`; {stem}.json")
    assert set(files) - cited(files, patterns(text)) == {"orphan_v3.json"}


def test_every_result_file_is_cited():
    files = sorted(str(p.relative_to(RESULTS)) for p in RESULTS.rglob("*") if p.is_file())
    pats = set().union(*map(patterns, citing_texts().values()))
    assert sorted(set(files) - cited(files, pats)) == []


def test_every_cited_result_path_exists():
    named = {m for text in citing_texts().values() for m in re.findall(r"docs/results/[\w./-]+\.(?:json|md|diff)\b", text)}
    assert sorted(p for p in named if not (ROOT / p).exists()) == []
