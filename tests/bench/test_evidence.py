"""`memadapter bench evidence` on tiny sizes: table, JSON rows, CLI dispatch."""

import argparse
import json

import pytest

from memadapter.bench import evidence
from memadapter.errors import ConfigError

KEYS = {"method", "task", "correct", "total", "accuracy", "max_active"}


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    evidence.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_writes_one_row_per_method_and_task(tmp_path, capsys):
    path = tmp_path / "evidence.json"
    methods = "full_scan,memory,hybrid"
    tasks = "overwrite_facts,uniform_recall"
    rc = evidence.run(_args("--seeds", "1", "--samples", "6", "--length", "512",
                            "--methods", methods, "--tasks", tasks, "--json", str(path)))
    assert rc == 0
    rows = json.loads(path.read_text())
    assert [(r["method"], r["task"]) for r in rows] == [(m, t) for m in methods.split(",") for t in tasks.split(",")]
    for r in rows:
        assert set(r) == KEYS and r["total"] == 6 and r["accuracy"] == r["correct"] / r["total"]
    by = {(r["method"], r["task"]): r for r in rows}
    assert by[("hybrid", "uniform_recall")]["correct"] == 6 and by[("memory", "uniform_recall")]["correct"] == 0
    out = capsys.readouterr().out
    assert "hybrid" in out and "max_active" in out and "peak RSS" in out


def test_through_the_console_entry_point(tmp_path):
    cli = pytest.importorskip("memadapter.cli")
    path = tmp_path / "e.json"
    assert cli.main(["bench", "evidence", "--seeds", "1", "--samples", "2", "--length", "256",
                     "--methods", "tail_window,fifo", "--tasks", "associative_recall", "--json", str(path)]) == 0
    assert len(json.loads(path.read_text())) == 2


def test_bad_arguments_raise_before_any_work(tmp_path):
    path = tmp_path / "never.json"
    with pytest.raises(ConfigError, match="--methods"):
        evidence.run(_args("--methods", "full_scan,nope", "--json", str(path)))
    with pytest.raises(ConfigError, match="--length"):
        evidence.run(_args("--length", "100", "--json", str(path)))
    assert not path.exists()
