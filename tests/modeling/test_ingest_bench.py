import json

from memadapter.cli import main


def test_ingest_bench_rows(tmp_path):
    out = tmp_path / "ingest.json"
    assert main(["bench", "ingest", "--lengths", "256,512", "--chunk", "128", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["tokens"] for r in rows] == [256, 512]
    for r in rows:
        assert {"method", "task", "correct", "total", "accuracy", "max_active"} <= set(r)
        assert r["chunks"] == r["tokens"] // 128  # one index entry per chunk
        assert 0 <= r["slots_used"] <= r["num_slots"]  # bounded memory
        assert r["ingest_s"] > 0 and r["read_s"] > 0
