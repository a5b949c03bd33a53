"""Shared fixtures for the modeling tests: tiny random backbones of every family and a tiny
word-level tokenizer. No network: every model is built from a config, every tokenizer in memory.

``tiny_backbone(model_type)`` builds a causal LM with hidden 64, 2 layers, 4 heads (2 KV heads),
vocab 1000, in eval mode and float32, seeded so that the same call gives the same weights.
"""

from __future__ import annotations

import pytest
import torch

from transformers import PreTrainedTokenizerFast  # noqa: E402

from memadapter.modeling import MemAdapterForCausalLM
from memadapter.modeling.configuration_settings import nest_flat_settings
from memadapter.modeling.tiny import TINY_CONFIG, tiny_backbone as _tiny_backbone

# The test machine's few cores are shared; one thread is faster for these tiny matmuls anyway.
torch.set_num_threads(1)

ALL_MODEL_TYPES = (
    "llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3_text", "glm", "glm4", "internlm3",
)

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
VOCAB_SIZE = TINY_CONFIG["vocab_size"]


def tiny_backbone(model_type: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny random causal LM of ``model_type`` (hidden 64, 2 layers) with a sharpened LM head."""
    return _tiny_backbone(model_type, seed, sharpen_head=8.0, **overrides)


# A small adapter over the tiny backbones, a stream its tokenizer reads word for word, two questions.
SMALL = dict(key_dim=16, value_dim=16, num_slots=8, top_k=2, chunk_tokens=8, read_layer=1)
STREAM = "alice lives in paris . the old fact : bob lives in rome . update alice now moved to berlin"
QUESTIONS = ["where does alice live", "what city is bob in now"]


def build(backbone, tok, injection="prefix", seed=0, **kw):
    """A SMALL adapter (config overrides in ``kw``) over ``backbone``, seeded. Read and ingest
    settings may be given by their flat names (``name_chunks=3``): they go to ``read`` / ``ingest``."""
    if injection == "cross_attn":
        kw = {"cross_attn_layers": [1], "cross_attn_gate_init": 0.5, **kw}
    torch.manual_seed(seed)
    kw = nest_flat_settings({**SMALL, **kw})
    model = MemAdapterForCausalLM.from_pretrained(backbone, tokenizer=tok, injection=injection, **kw)
    with torch.no_grad():  # an untrained tagger may say "O" everywhere: make it propose NEW facts
        model.grounding.tagger.bias[0] = -5.0
        model.grounding.event.bias[0] = 5.0
    return model


def ingest(model, texts):
    """A fresh memory with one row per text, each text ingested."""
    mem = model.new_memory(batch_size=len(texts))
    model.ingest(mem, texts)
    return mem


_WORDS = (
    "alice bob carol dave lives in paris london rome berlin the a of is now moved to where does "
    "what city color red blue green update old new fact value key version question answer"
).split()


def tiny_tokenizer(words: tuple[str, ...] = tuple(_WORDS)) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over a small vocabulary (``words``, ids < 1000), left padding."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    vocab = {"<pad>": PAD_ID, "<unk>": UNK_ID, "<bos>": BOS_ID, "<eos>": EOS_ID}
    vocab.update({w: i + 4 for i, w in enumerate(words)})
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        padding_side="left",
    )


@pytest.fixture(scope="session")
def build_tiny():
    """The :func:`tiny_backbone` builder itself, for tests that need fresh or resized models."""
    return tiny_backbone


@pytest.fixture(scope="session")
def tiny_models() -> dict:
    """Session cache: model_type -> tiny model (built once; tests must not modify weights)."""
    return {}


@pytest.fixture
def get_tiny(tiny_models):
    """``get_tiny(model_type)`` returns the cached tiny model of that family."""

    def _get(model_type: str) -> torch.nn.Module:
        if model_type not in tiny_models:
            tiny_models[model_type] = tiny_backbone(model_type)
        return tiny_models[model_type]

    return _get


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return tiny_tokenizer()


@pytest.fixture
def padded_rows():
    """Two prompts of different lengths, as a left-padded batch and as unpadded single rows."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(4, 1000, (6,), generator=g), torch.randint(4, 1000, (4,), generator=g)
    ids = torch.stack([a, torch.cat([torch.zeros(2, dtype=torch.long), b])])
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    return ids, mask, [a[None], b[None]]
