"""What ``MemAdapterForCausalLM`` accepts: token ids, masks, labels and memories, checked before any
work, so bad input gets a typed error naming the argument and every memory stays as it was.

A memory carries the fingerprint of the adapter that made it (``adapter_fingerprint``): keys and
values written by other heads mean nothing to these, even when the sizes agree.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Optional

import torch
from torch import nn

from memadapter.errors import AdapterMismatchError, CapacityError, DTypeError, EmptyInputError, ShapeError
from memadapter.request_memory import RequestMemory

from .configuration_memadapter import RETUNABLE

# Config fields left out of the adapter fingerprint: settings that may change on a trained adapter
# (the read / ingest sub-configs, RETUNABLE; generation_eval switches injection on one memory) and
# names of the base, not what a memory holds.
NOT_IN_FINGERPRINT = frozenset({"read", "ingest", *RETUNABLE, "injection", "base_model_name_or_path",
                                "base_model_revision"})


class InputChecksMixin:
    """Input and memory checks of ``MemAdapterForCausalLM`` (a mixin: it reads ``self.config``,
    ``self.backbone`` and the adapter tensors)."""

    def _check_memory(self, memory: Any) -> RequestMemory:
        """A RequestMemory whose sizes are this model's (one made by another model's new_memory()
        would fail deep inside a matmul)."""
        if not isinstance(memory, RequestMemory):
            raise DTypeError(f"memory: expected a RequestMemory (model.new_memory()), got {type(memory).__name__}")
        cfg, slots = self.config, memory.slots
        have = (slots.key_dim, slots.value_dim, {i.dim for i in memory.indexes})
        if have != (cfg.key_dim, cfg.value_dim, {cfg.hidden_size}):
            raise ShapeError(f"memory: has key_dim, value_dim, index dim {have[0]}, {have[1]}, {sorted(have[2])}; this "
                             f"model needs {cfg.key_dim}, {cfg.value_dim}, {cfg.hidden_size} (use model.new_memory())")
        self._check_adapter_id(memory)
        return memory

    def _check_adapter_id(self, memory: RequestMemory) -> None:
        """Refuse a memory that another adapter (or this one before its weights changed) made: its
        keys and values mean nothing to these heads, even when the sizes agree. A memory built by
        hand (``adapter_id`` None) is taken as it is."""
        made_by = getattr(memory, "adapter_id", None)
        if made_by is None:
            return
        mine = self.adapter_fingerprint()
        if made_by != mine:
            raise AdapterMismatchError(
                f"memory: was made by another adapter (id {str(made_by)[:12]}), not this one (id {mine[:12]}), or by this "
                "one before its weights or config changed; make it with this model's new_memory() and ingest again")

    def adapter_fingerprint(self) -> str:
        """sha256 (hex) of this adapter: its config fields but NOT_IN_FINGERPRINT, and every adapter
        tensor but the ReadScorer's (:func:`adapter_fingerprint`); the scorer only ranks what a
        memory holds, so a memory stays valid when the reader is refitted. Cached; recomputed when the config changed or a
        tensor was replaced or changed in place (its version counter moved). Writes through
        ``param.data`` bypass that counter: call it after such edits only if the cache was cleared
        (``model._fingerprint_cache = None``)."""
        config = {k: getattr(self.config, k) for k in type(self.config).__annotations__ if k not in NOT_IN_FINGERPRINT}
        tensors = [(n, t) for n, t in (*self.named_parameters(), *self.named_buffers())
                   if self._is_adapter_key(n) and not n.startswith("read_scorer.")]
        key = (json.dumps(config, sort_keys=True, default=str), [(n, t.data_ptr(), _version(t)) for n, t in tensors])
        cached = getattr(self, "_fingerprint_cache", None)
        if cached is not None and cached[0] == key and all(v is not None for _, _, v in key[1]):
            return cached[1]
        digest = adapter_fingerprint(config, tensors)
        self._fingerprint_cache = (key, digest)
        return digest

    def _check_ids(self, input_ids: Any, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Check ids [B, T] (integer, inside the vocabulary, non-empty) and the mask; returns the mask."""
        if not isinstance(input_ids, torch.Tensor):
            raise DTypeError(f"input_ids: expected a tensor of token ids [B, T], got {type(input_ids).__name__}")
        self._check_token_ids("input_ids", input_ids)
        if input_ids.dim() != 2:
            raise ShapeError(f"input_ids: expected integer ids [B, T], got shape {tuple(input_ids.shape)}")
        if input_ids.numel() == 0:
            raise EmptyInputError(f"input_ids: no tokens (shape {tuple(input_ids.shape)})")
        if attention_mask is None:
            return torch.ones_like(input_ids)
        return self._check_mask(attention_mask, input_ids, empty_rows=False)

    def _vocab_size(self) -> int:
        rows = getattr(self.backbone.get_input_embeddings(), "num_embeddings", None)
        return int(rows) if rows is not None else int(_unwrap(self.backbone).config.vocab_size)

    def _check_token_ids(self, name: str, ids: torch.Tensor) -> None:
        """Integer (not bool) ids inside [0, vocab): an id past the embedding table is an IndexError
        deep in the backbone (or reads another row's memory on some devices)."""
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise DTypeError(f"{name}: expected integer token ids, got dtype {ids.dtype}")
        if ids.numel():
            low, high, vocab = int(ids.min()), int(ids.max()), self._vocab_size()
            if low < 0 or high >= vocab:
                raise CapacityError(f"{name}: token id {low if low < 0 else high} outside the vocabulary [0, {vocab})")

    @staticmethod
    def _check_mask(mask: Any, ids: torch.Tensor, *, empty_rows: bool) -> torch.Tensor:
        """A 0/1 tensor of exactly ``ids``' shape (never reshaped); rows all 0 only if ``empty_rows``."""
        if not isinstance(mask, torch.Tensor):
            raise DTypeError(f"attention_mask: expected a tensor shaped like the ids, got {type(mask).__name__}")
        if tuple(mask.shape) != tuple(ids.shape):
            raise ShapeError(f"attention_mask: expected shape {tuple(ids.shape)}, got {tuple(mask.shape)}")
        if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
            raise CapacityError("attention_mask: values must be 0 or 1")
        if not empty_rows and mask.numel():
            empty = (mask == 0).reshape(-1, mask.shape[-1]).all(dim=1)  # [B]
            if bool(empty.any()):
                raise EmptyInputError(f"attention_mask: row {int(empty.nonzero()[0])} masks every token (nothing to read)")
        return mask

    def _check_labels(self, labels: Any, input_ids: torch.Tensor) -> None:
        """Labels [B, T] like input_ids: token ids, or -100 where no loss is taken."""
        if not isinstance(labels, torch.Tensor):
            raise DTypeError(f"labels: expected a tensor of token ids, got {type(labels).__name__}")
        if tuple(labels.shape) != tuple(input_ids.shape):
            raise ShapeError(f"labels: expected shape {tuple(input_ids.shape)}, got {tuple(labels.shape)}")
        self._check_token_ids("labels", labels.masked_fill(labels == -100, 0))


def _version(tensor: torch.Tensor) -> Optional[int]:
    """The in-place version counter (None for inference-mode tensors, which have none)."""
    try:
        return tensor._version
    except RuntimeError:
        return None


def _unwrap(model: nn.Module) -> nn.Module:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def adapter_fingerprint(config: dict, tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 (hex) of a config dict (as sorted JSON) and named tensors (name, dtype, shape, bytes).

    Two adapters share it only when both agree exactly; the same adapter saved and loaded again
    (in the same dtype) keeps it.

        >>> a = adapter_fingerprint({"key_dim": 8}, [("w", torch.zeros(2))])
        >>> a == adapter_fingerprint({"key_dim": 8}, [("w", torch.zeros(2))]), len(a)
        (True, 64)
        >>> a == adapter_fingerprint({"key_dim": 8}, [("w", torch.ones(2))])
        False
    """
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"\0{name}\0{flat.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()
