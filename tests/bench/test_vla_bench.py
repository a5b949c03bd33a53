import json
import math

import pytest

from memadapter.bench.stats import wilson_interval, write_rows_json
from memadapter.cli import main
from memadapter.errors import CapacityError, ConfigError


def test_bench_vla_smoke_writes_consistent_rows(tmp_path, capsys):
    out = tmp_path / "vla.json"
    assert main(["bench", "vla", "--dim", "8", "--seeds", "2", "--length", "50", "--episodes", "3",
                 "--speed-tokens", "1024", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    for row in rows:
        assert {"method", "task", "correct", "total", "accuracy", "max_active"} <= set(row)
    mqar = [r for r in rows if r["task"].startswith("mqar_n")]
    assert {r["task"] for r in mqar} == {f"mqar_n{n}" for n in (1, 2, 4, 6, 8, 12, 16, 32)}
    for row in mqar:
        assert row["total"] == 2 * 3 * row["n_pairs"] and row["accuracy"] == row["correct"] / row["total"]
    norms = {r["method"]: r for r in rows if r["task"] == "state_norm"}
    assert set(norms) == {"linear", "deltanet", "gated_deltanet", "vla"}
    assert norms["linear"]["ratio_linear_over_method"] == 1.0
    assert norms["vla"]["norm_mean"] < norms["linear"]["norm_mean"]  # sqrt(50) ~ 7 vs <= sqrt(8) ~ 2.8
    speed = {r["method"]: r for r in rows if r["task"] == "speed"}
    assert speed["linear"]["ratio_to_linear"] == 1.0 and all(r["seconds"] > 0 for r in speed.values())
    assert "mqar_n8" in capsys.readouterr().out


@pytest.mark.parametrize("correct,total,expected", [
    (8, 10, (0.4902, 0.9433)), (0, 10, (0.0, 0.2775)), (10, 10, (0.7225, 1.0)), (50, 100, (0.4038, 0.5962)),
])
def test_wilson_interval_known_values(correct, total, expected):
    lo, hi = wilson_interval(correct, total)
    assert lo == pytest.approx(expected[0], abs=1e-4) and hi == pytest.approx(expected[1], abs=1e-4)


def test_wilson_interval_narrows_with_z_and_rejects_bad_counts():
    wide, narrow = wilson_interval(30, 60, z=2.58), wilson_interval(30, 60, z=1.0)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]
    for bad in ((11, 10), (-1, 10), (0, 0)):
        with pytest.raises(CapacityError):
            wilson_interval(*bad)


def test_write_rows_json_is_atomic(tmp_path):
    path = tmp_path / "rows.json"
    write_rows_json(path, [{"method": "a", "task": "t", "accuracy": 0.5}])
    with pytest.raises(ConfigError, match="rows\\[0\\]"):
        write_rows_json(path, [{"task": "t"}])
    with pytest.raises(ValueError):
        write_rows_json(path, [{"method": "a", "task": "t", "accuracy": math.nan}])
    assert json.loads(path.read_text()) == [{"method": "a", "task": "t", "accuracy": 0.5}]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.json"]
