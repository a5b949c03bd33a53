"""Reading the pointer's prompt once gives the features of the padded pairs, on every family."""
import pytest
import torch

from experiments.pointer_prompt_cache import best_time, shared_prompt_features
from memadapter.modeling.configuration_memadapter import MemAdapterConfig
from memadapter.modeling.modeling_memadapter import MemAdapterForCausalLM
from memadapter.modeling.read_answers import pair_ids, pointer_features
from memadapter.modeling.tiny import tiny_backbone
from memadapter.training.train import build_word_tokenizer

SENTENCES = ["alice lives in paris", "bob lives in rome now moved to berlin", "update"]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma"])
def test_shared_prompt_features_match_the_padded_pairs(family):
    tok = build_word_tokenizer(SENTENCES + ["where does alice live"], vocab_size=1000)
    torch.manual_seed(0)
    cfg = MemAdapterConfig(read_layer=1, key_dim=16, value_dim=16, num_slots=8, top_k=1, chunk_tokens=32)
    model = MemAdapterForCausalLM(cfg, backbone=tiny_backbone(family), tokenizer=tok).eval()
    encoded = [pair_ids(tok, "where does alice live", s) for s in SENTENCES]
    n = encoded[0][1]
    ids, mask = model._right_pad([e for e, _ in encoded])
    with torch.no_grad():
        plain = pointer_features(model, ids, mask, [1, 2])[0]
        shared = shared_prompt_features(model, encoded[0][0][:n], [e[n:] for e, _ in encoded], [1, 2])
    assert shared.shape == plain.shape
    torch.testing.assert_close(shared[mask.bool()], plain[mask.bool()], atol=1e-4, rtol=1e-4)


def test_best_time_gives_the_fastest_call_and_the_last_result():
    calls = []
    seconds, out = best_time(lambda: calls.append(1) or torch.tensor(len(calls)), 3)
    assert len(calls) == 3 and int(out) == 3 and seconds >= 0.0
