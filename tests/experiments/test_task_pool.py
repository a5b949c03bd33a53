"""The task-pool listing ranks a sample's pool entries by the reader's score."""
import torch

from experiments.task_pool import top_entries
from memadapter.modeling.configuration_memadapter import MemAdapterConfig
from memadapter.modeling.modeling_memadapter import MemAdapterForCausalLM
from memadapter.modeling.tiny import tiny_backbone
from memadapter.training.train import build_word_tokenizer

TEXT = "alice lives in paris . bob lives in rome . update alice now moved to berlin"


def test_entries_come_best_score_first_and_at_most_top():
    tok = build_word_tokenizer([TEXT, "where does alice live"], vocab_size=1000)
    torch.manual_seed(0)
    cfg = MemAdapterConfig(read_layer=1, key_dim=16, value_dim=16, num_slots=8, top_k=1, chunk_tokens=32)
    model = MemAdapterForCausalLM(cfg, backbone=tiny_backbone("llama"), tokenizer=tok).eval()
    with torch.no_grad():
        entries = top_entries(model, tok, TEXT, "where does alice live", top=2)
        every = top_entries(model, tok, TEXT, "where does alice live", top=100)
    assert 0 < len(entries) <= 2 and entries == every[:len(entries)]
    assert [e["score"] for e in every] == sorted((e["score"] for e in every), reverse=True)
    assert all(abs(e["score"]) < float("inf") for e in every)  # only entries the reader may pick
    assert all(set(e) == {"score", "slot", "withdrawn", "event_type", "value", "sentence"} for e in every)
