"""The README stays short (issue 28: at most 120 lines) and keeps the two commands exactly as CI runs them."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_is_at_most_120_lines():
    assert len(README.splitlines()) <= 120


def test_readme_gives_the_demo_and_the_ci_test_command():
    assert "bash scripts/bootstrap.sh && .venv/bin/memadapter demo\n" in README
    test_command = "bash scripts/bootstrap.sh && .venv/bin/python -m pytest -q\n"
    assert test_command in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/bootstrap.sh" in ci and ".venv/bin/python -m pytest -q\n" in ci  # the same command


def test_every_file_the_readme_names_exists():
    named = set(re.findall(r"\b(?:docs/|experiments/|notebooks/)?[\w-]+\.(?:md|ipynb)\b", README)) - {"README.md"}
    assert {"docs/ARCHITECTURE.md", "docs/USAGE.md", "docs/RESULTS.md", "CONTRIBUTING.md"} <= named
    # a bare name in the layout's docs/ line lives in docs/
    assert sorted(n for n in named if not ((ROOT / n).is_file() or (ROOT / "docs" / n).is_file())) == []
