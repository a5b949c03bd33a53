"""``memadapter bench perf`` on the tiny config and a small shape: every issue-26 row, with its keys.
Speed itself is never asserted (timings belong in docs/BENCHMARKS.md)."""

from __future__ import annotations

import json

import torch

from memadapter.cli import main
from memadapter.modeling.perf_bench import bias_for_rate, load, proposals_per_chunk

KEYS = {"backbone", "device", "dtype", "tokens", "batch", "metric", "value", "baseline", "ratio"}


def _run(tmp_path, *extra):
    out = tmp_path / "perf.json"
    assert main(["bench", "perf", "--tokens", "256", "--repeats", "1", "--new-tokens", "2", "--json", str(out),
                 *extra]) == 0
    return json.loads(out.read_text())


def test_perf_rows_cover_every_metric(tmp_path):
    rows = _run(tmp_path)
    assert all(KEYS <= set(r) for r in rows)
    metrics = {(r["metric"], r["batch"]) for r in rows}
    assert {("read_s", 1), ("ingest_s", 1), ("ingest_10x_s", 1), ("ingest_reference_s", 1), ("state_bytes", 1),
            ("ingest_peak_bytes", 1), ("select_s", 1), ("select_s", 8), ("select_cold_s", 1), ("select_cold_s", 8),
            ("select_reference_s", 1), ("select_reference_s", 8), ("decode_token_s[prefix]", 1),
            ("generate_s[prefix]", 1), ("decode_token_s[cross_attn]", 1), ("generate_s[cross_attn]", 1)} <= metrics
    for r in rows:
        assert r["backbone"] == "tiny" and r["device"] == "cpu" and r["dtype"] == "float32"
        if r["baseline"]:
            assert r["ratio"] == r["value"] / r["baseline"]
    rate = {r["metric"]: r["proposals_per_chunk"] for r in rows if "proposals_per_chunk" in r}
    assert rate["ingest_10x_s"] > 3 * rate["ingest_s"] > 0  # the forced rate is well above the held one


def test_only_select_times_the_select_rows(tmp_path):
    rows = _run(tmp_path, "--only", "select")
    assert {(r["metric"], r["batch"]) for r in rows} == {
        (m, b) for m in ("select_s", "select_cold_s", "select_reference_s") for b in (1, 8)}
    by = {(r["metric"], r["batch"]): r for r in rows}
    assert all(by[m, 8]["baseline"] == by[m, 1]["value"] for m in ("select_s", "select_cold_s"))


def test_small_shape_runs(tmp_path):
    rows = _run(tmp_path, "--backbone", "smollm2-135m", "--small-shapes", "--no-reference")
    assert {r["backbone"] for r in rows} == {"smollm2-135m-small"}
    assert not {"ingest_reference_s", "select_reference_s"} & {r["metric"] for r in rows}


def test_bias_for_rate_reaches_the_target():
    class Args:
        backbone, small_shapes, dtype, device = "tiny", False, "float32", "cpu"

    model, real = load(Args)
    ids = torch.randint(4, 1000, (1, 256), generator=torch.Generator().manual_seed(0))
    bias = bias_for_rate(model, ids, 6.0)
    assert not real and abs(proposals_per_chunk(model, ids, bias) - 6.0) <= 3.0
