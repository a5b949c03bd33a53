"""The read diagnosis files each question under the first read stage that loses its gold answer."""
from types import SimpleNamespace

import torch

from experiments.read_diagnosis import STAGES, diagnose
from memadapter.modeling.configuration_memadapter import MemAdapterConfig
from memadapter.modeling.modeling_memadapter import MemAdapterForCausalLM
from memadapter.modeling.tiny import tiny_backbone
from memadapter.training.train import build_word_tokenizer

TEXT = "alice lives in paris . bob lives in rome . update alice now moved to berlin"


def _stream():
    start = TEXT.index("update")
    value = TEXT.index("berlin")
    event = {"start": start, "end": len(TEXT), "value_start": value, "value_end": value + 6}
    return {"id": "s0", "text": TEXT, "events": [event],
            "questions": [{"question": "where does alice live", "answer": "berlin", "kind": "overwrite", "answer_event": 0},
                          {"question": "what city is bob in now", "answer": "rome", "kind": "recall", "answer_event": -1}]}


def test_every_question_gets_one_stage_and_ok_means_the_pick_holds_the_gold():
    stream = _stream()
    tok = build_word_tokenizer([TEXT] + [q["question"] for q in stream["questions"]], vocab_size=1000)
    torch.manual_seed(0)
    cfg = MemAdapterConfig(read_layer=1, key_dim=16, value_dim=16, num_slots=8, top_k=1, chunk_tokens=32)
    model = MemAdapterForCausalLM(cfg, backbone=tiny_backbone("llama"), tokenizer=tok).eval()
    with torch.no_grad():
        rows = diagnose(model, tok, stream)
    assert [r["question"] for r in rows] == ["where does alice live", "what city is bob in now"]
    for r in rows:
        assert r["stage"] in STAGES
        assert (r["stage"] == "ok") == (r["picked"] is not None and r["picked"].strip().lower() == r["gold"])
    assert rows[0]["gold_sentence"] == "update alice now moved to berlin" and rows[1]["gold_sentence"] == ""


class _Pool(SimpleNamespace):
    def __len__(self):
        return len(self.value_texts)


def test_a_withdrawn_pick_is_the_answer_unknown(monkeypatch):
    stream = _stream()
    stream["questions"] = [{"question": "where does alice live", "answer": "unknown", "kind": "retraction", "answer_event": 0},
                           {"question": "what city is bob in now", "answer": "rome", "kind": "recall", "answer_event": -1}]
    tok = build_word_tokenizer([TEXT] + [q["question"] for q in stream["questions"]], vocab_size=1000)
    cfg = MemAdapterConfig(read_layer=1, key_dim=16, value_dim=16, num_slots=8, top_k=1, chunk_tokens=32)
    model = MemAdapterForCausalLM(cfg, backbone=tiny_backbone("llama"), tokenizer=tok).eval()
    pool = _Pool(value_texts=["rome", None], sentences=[TEXT, TEXT], event_types=["", "answer"])
    pools = SimpleNamespace(pool=pool, chunks=[])
    monkeypatch.setattr(model, "read_pools", lambda *a: [pools])
    monkeypatch.setattr(model, "score_pools", lambda qps: (torch.tensor([[0.0, 1.0]]), torch.ones(1, 2, dtype=torch.bool)))
    with torch.no_grad():
        rows = diagnose(model, tok, stream)
    assert rows[0]["stage"] == "ok" and rows[0]["picked"] == "unknown"  # the withdrawal is said "unknown"
    assert rows[1]["stage"] == "score"  # the pool holds "rome", the pick says "unknown"
