"""Tiny random backbones of every supported family, built from configs (no download).

Used by the tests, the Phase 13 bridge and the ingest benchmark: hidden 64, 2 layers, 4 heads
(2 KV heads), vocab 1000. ``head_dim`` is explicit because internlm3 and the Gemmas otherwise
default to large values; the pad id lies inside the vocab because GLM needs it.

    >>> model = tiny_backbone("llama")
    >>> model.config.hidden_size, model.config.num_hidden_layers
    (64, 2)
"""

from __future__ import annotations

import torch
from torch import nn

TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=1000,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=2,
    eos_token_id=3,
    # Untied, so that sharpening the LM head leaves the input embeddings alone.
    tie_word_embeddings=False,
)


def tiny_backbone(model_type: str, seed: int = 0, *, sharpen_head: float = 1.0, **overrides) -> nn.Module:
    """A tiny random causal LM of ``model_type`` in eval mode, float32, seeded.

    ``sharpen_head`` scales the LM head: random inits give near-flat logits, and a larger head
    makes greedy choices decisive, so token-equality tests compare behaviour, not float noise.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, **{**TINY_CONFIG, **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    if sharpen_head != 1.0:
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(sharpen_head)
    return model.eval()


def tiny_word_tokenizer(vocab_size: int = TINY_CONFIG["vocab_size"]):
    """A whitespace word-level tokenizer whose words are ``w4`` .. ``w{vocab_size-1}`` (id = number)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3}
    vocab.update({f"w{i}": i for i in range(4, vocab_size)})
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<bos>", eos_token="<eos>")
