"""Phase 13's frozen backbones and their hidden-state cache: the six paper families as tiny random
models (or SmolLM2 as a real one), their word tokenizer, the default read layer, and
:class:`HiddenCache` (token hidden states per text, on disk as safetensors shards).
"""

from __future__ import annotations

import hashlib
import os
import time
import zlib
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from memadapter.errors import EmptyInputError

from .phase13_data import vocabulary

PAPER_FAMILIES = ("llama", "qwen2", "mistral", "gemma", "glm", "internlm3")


# Mirrors tests/modeling/conftest.py's tiny configs (hidden 64, 2 layers), which tests cannot import.
def word_tokenizer():
    """A whitespace word-level tokenizer over :func:`vocabulary` (ids 4.., 0 = pad, 1 = unk)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3}
    vocab.update({w: i + 4 for i, w in enumerate(vocabulary())})
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")


def tiny_backbone(model_type: str, seed: int = 0):
    """A frozen tiny random causal LM of ``model_type`` (hidden 64, 2 layers), eval mode."""
    from memadapter.modeling.tiny import tiny_backbone as build

    return build(model_type, seed).requires_grad_(False)


def load_backbone(family: str):
    """(model, tokenizer, name): ``smollm2`` is the real offline SmolLM2-135M, else a tiny random family."""
    if family == "smollm2":
        from memadapter.modeling.real_models import load_smollm2

        model, tok = load_smollm2()
        return model.eval().requires_grad_(False), tok, "smollm2-135m"
    # A seed per family: from one seed, same-architecture families (llama, mistral, internlm3)
    # would otherwise get identical weights and the "six families" would be three.
    return tiny_backbone(family, seed=zlib.crc32(family.encode()) % 2**31), word_tokenizer(), f"tiny-{family}"


def default_read_layer(family: str, model: nn.Module) -> int:
    """Last hidden state for the 2-layer tiny backbones; the middle layer of a real model, whose last
    layers specialise in next-token prediction (fixed a priori, not tuned on the test split)."""
    return model.config.num_hidden_layers // 2 if family == "smollm2" else -1


def backbone_fingerprint(model: nn.Module, name: str) -> str:
    """Cache key part: name + config + a digest of the first and last parameter tensors."""
    params = list(model.parameters())
    h = hashlib.sha1(name.encode())
    h.update(model.config.to_json_string().encode())
    for p in (params[0], params[-1]):
        h.update(p.detach().float().cpu().numpy().tobytes()[:1 << 20])
    return h.hexdigest()[:16]


class HiddenCache:
    """Token hidden states (of ``layer``) per text, cached on disk as safetensors shards keyed by
    sha1(backbone fingerprint + text), so reruns skip the backbone.

    Example:
        >>> cache = HiddenCache(tiny_backbone("llama"), word_tokenizer(), "tiny-llama", None)
        >>> tuple(cache.tokens(["note : abel ashby lives in paris ."])[0].shape)
        (8, 64)
    """

    def __init__(self, model: nn.Module, tokenizer, name: str, cache_dir: Optional[str | Path],
                 batch_size: int = 256, layer: int = -1) -> None:
        from memadapter.modeling.backbones import read_hidden_states

        self.model, self.tokenizer, self._read, self.layer = model, tokenizer, read_hidden_states, layer
        # The read layer is part of the key: states of another layer must never be served.
        self.fp = backbone_fingerprint(model, name if layer == -1 else f"{name}@layer{layer}")
        self.dir = None if cache_dir is None else Path(cache_dir) / self.fp
        self.batch_size = batch_size
        self.mem: dict[str, torch.Tensor] = {}
        if self.dir is not None and self.dir.is_dir():
            for shard in sorted(self.dir.glob("shard_*.safetensors")):
                self.mem.update(load_file(str(shard)))

    def _key(self, text: str) -> str:
        return hashlib.sha1(f"{self.fp}\n{text}".encode()).hexdigest()

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Batches of equal token length, so no padding can touch a state (the cache is batch-free)."""
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        by_len: dict[int, list[int]] = {}
        for i, row in enumerate(ids):
            if not row:
                raise EmptyInputError(f"texts[{i}]: tokenizes to nothing: {texts[i]!r}")
            by_len.setdefault(len(row), []).append(i)
        out = {}
        batches = [idx[s:s + self.batch_size] for idx in by_len.values() for s in range(0, len(idx), self.batch_size)]
        for part in tqdm(batches, desc="hidden states", unit="batch", disable=len(batches) < 8):
            x = torch.tensor([ids[i] for i in part])  # [b, T]
            hidden = self._read(self.model, x, torch.ones_like(x), self.layer).float()  # [b, T, H]
            out.update({self._key(texts[i]): hidden[j].to(torch.float16) for j, i in enumerate(part)})
        return out

    def tokens(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """[T_i, H] float32 per text; missing texts are encoded once and appended as a new shard."""
        missing = sorted({t for t in texts if self._key(t) not in self.mem})
        if missing:
            new = self._encode(missing)
            self.mem.update(new)
            if self.dir is not None:  # write-then-rename so a crash leaves no half shard
                self.dir.mkdir(parents=True, exist_ok=True)
                path = self.dir / f"shard_{time.time_ns()}_{os.getpid()}.safetensors"
                tmp = path.with_suffix(".tmp")
                save_file({k: v.contiguous() for k, v in new.items()}, str(tmp))
                os.replace(tmp, path)
        return [self.mem[self._key(t)].float() for t in texts]

    def mean(self, texts: Sequence[str]) -> torch.Tensor:
        """[N, H] mean-pooled full-sentence vectors (the paper's pooling)."""
        return torch.stack([t.mean(0) for t in self.tokens(texts)])
