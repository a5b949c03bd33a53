"""``memadapter demo`` end to end on SmolLM2 with the bundled adapter (slow: ~2 minutes on 2 cores). It
must finish, print the memory table and every answer with its right/wrong mark, and the memory row
must answer all six right by the demo's rule (the answer's words occur in the reply, no stale value
does). The withdrawn code is read from a withdrawal: the answer pointer's withdrawal score fires on
the plain-English retraction. The night guard's cat is right by that rule only: the reply is the
pointer's whole clause ("grey cat named Pepper in the ticket office."), not the bare name (issue
24). The cat is answered from a retrieved chunk (the memory row says "(chunk)"): no slot holds it.
Issue 28 bounds the whole demo at 3 minutes on 2 cores, first model conversion included: the demo
runs on an empty model cache, so the timed run converts the GGUF as a fresh machine does. The bound
is that product limit, not a benchmark."""

import time

import pytest
import torch

from memadapter import cli
from memadapter.demo.stream import QUESTIONS

pytestmark = pytest.mark.slow

# The questions the memory row answers right (greedy decoding, fp32, one thread): all of them.
MEMORY_RIGHT = tuple(q.text for q in QUESTIONS)
FROM_A_CHUNK = tuple(q.text for q in QUESTIONS if q.kind == "chunk fallback")
DEMO_LIMIT_S = 180.0  # issue 28's limit for the whole demo on 2 cores


def test_the_demo_finishes_and_prints_marked_answers(capsys, tmp_path, monkeypatch):
    real_models = pytest.importorskip("memadapter.modeling.real_models")
    try:
        real_models.find_smollm2_gguf()
    except Exception as err:  # package not installed: the message names the pip command
        pytest.skip(str(err))
    monkeypatch.setenv("MEMADAPTER_CACHE", str(tmp_path / "cache"))  # first run: the conversion is timed too
    threads, start = torch.get_num_threads(), time.monotonic()
    try:
        assert cli.main(["demo", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert time.monotonic() - start <= DEMO_LIMIT_S
    out = capsys.readouterr().out
    assert "slot  key_text" in out and "Nadia Petrova" in out  # the memory table
    tokens = int(out.split("ingesting ", 1)[1].split(" tokens", 1)[0].replace(",", ""))
    assert tokens >= 16384
    blocks = {block.split("\n", 1)[0].split("] ", 1)[1].split("   (expected", 1)[0]: block
              for block in out.split("\n[")[1:]}
    assert sorted(blocks) == sorted(q.text for q in QUESTIONS)
    for question, block in blocks.items():
        rows = [line.strip() for line in block.splitlines()[1:4]]
        assert [r.split()[0] for r in rows] == ["memory", "tail", "bm25"], block
        assert all(("RIGHT" in r) != ("WRONG" in r) for r in rows), block
        if question in MEMORY_RIGHT:
            assert "RIGHT" in rows[0], block
        assert rows[0].startswith("memory (chunk)" if question in FROM_A_CHUNK else "memory ("), block
    assert "right answers: memory 6/6" in out and FROM_A_CHUNK
