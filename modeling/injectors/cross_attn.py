"""Gated cross-attention injection: wrapped decoder layers re-read the memory at every step.

Nothing goes through ``past_key_values``: the wrapped layers attend to the memory at every
forward, so generation works with and without the KV cache, with batches, left padding, greedy
decoding, sampling and ``num_return_sequences``. The wrappers are installed for a
:func:`cross_attention` block only and are safe to share between threads (see its docstring).

Example:
    >>> xattn = GatedCrossAttention(hidden_size=16, memory_dim=8, num_heads=2, gate_init=0.5)
    >>> xattn(torch.randn(1, 5, 16), torch.randn(1, 3, 8), torch.ones(1, 3, dtype=torch.bool)).shape
    torch.Size([1, 5, 16])
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from memadapter._validate import check_positive_int, check_tensor
from memadapter.errors import ConfigError, DTypeError, ShapeError

from ..backbones import backbone_parts
from .base import _EPS, Injector, Prepared, built_module, check_mask, rms

if TYPE_CHECKING:
    from ..selection import Selection


class GatedCrossAttention(nn.Module):
    """``hidden + tanh(gate) * attn(hidden -> memory)``, the added term scaled to the hidden norm.

    Queries come from the RMS-normalised hidden state (Gemma's hidden states carry sqrt(H), which
    would saturate the softmax); the attention output is rescaled per token to the hidden state's
    RMS, so the gate alone sets the relative size of the injection on every family. Rows whose
    memory is fully masked get exactly zero added, and ``gate_init=0`` (default) makes the module
    the exact identity, so an untrained adapter leaves the backbone's output unchanged.

    Example:
        >>> xattn = GatedCrossAttention(hidden_size=16, memory_dim=8, num_heads=2)
        >>> h = torch.randn(1, 5, 16)
        >>> out = xattn(h, torch.randn(1, 3, 8), torch.ones(1, 3, dtype=torch.bool))
        >>> torch.equal(out, h)
        True
    """

    def __init__(self, hidden_size: int, memory_dim: int, num_heads: int = 4, gate_init: float = 0.0) -> None:
        super().__init__()
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.memory_dim = check_positive_int("memory_dim", memory_dim)
        self.num_heads = check_positive_int("num_heads", num_heads)
        if hidden_size % num_heads:
            raise ConfigError(f"num_heads: hidden_size {hidden_size} is not divisible by {num_heads} heads")
        if isinstance(gate_init, bool) or not isinstance(gate_init, (int, float)) or not math.isfinite(gate_init):
            raise ConfigError(f"gate_init: must be a finite number, got {gate_init!r}")
        self.head_dim = hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(memory_dim, hidden_size, bias=False)
        self.v_proj = nn.Linear(memory_dim, hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))

    def _check(self, hidden: object, memory: object, memory_mask: object) -> tuple[torch.Tensor, ...]:
        hidden = check_tensor("hidden", hidden, ndim=3, last_dim=self.hidden_size, finite=False)
        memory = check_tensor("memory", memory, ndim=3, last_dim=self.memory_dim, nonempty=False)
        if memory.shape[0] != hidden.shape[0]:
            raise ShapeError(f"memory: batch {memory.shape[0]} does not match hidden batch {hidden.shape[0]}")
        mask = check_mask("memory_mask", memory_mask, tuple(memory.shape[:2]))
        return hidden, memory, mask

    def _finish(self, hidden: torch.Tensor, attn_out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = hidden.to(attn_out.dtype)
        added = attn_out / rms(attn_out) * rms(x)  # [B, T, H], same per-token RMS as hidden
        has_memory = mask.any(dim=1)[:, None, None].to(added.dtype)  # [B, 1, 1]
        return hidden + (torch.tanh(self.gate) * added * has_memory).to(hidden.dtype)

    def forward(self, hidden: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """hidden [B, T, H], memory [B, S, dm], memory_mask [B, S] bool -> [B, T, H]."""
        hidden, memory, mask = self._check(hidden, memory, memory_mask)
        b, t, _ = hidden.shape
        s, nh, hd = memory.shape[1], self.num_heads, self.head_dim
        dtype = self.q_proj.weight.dtype
        x = hidden.to(dtype)
        q = self.q_proj(x / rms(x)).view(b, t, nh, hd).transpose(1, 2)  # [B, nh, T, hd]
        k = self.k_proj(memory.to(dtype)).view(b, s, nh, hd).transpose(1, 2)  # [B, nh, S, hd]
        v = self.v_proj(memory.to(dtype)).view(b, s, nh, hd).transpose(1, 2)  # [B, nh, S, hd]
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # [B, nh, T, S]
        # A fully masked row would softmax to NaN; fill it with 0 (uniform weights) and let
        # `has_memory` in _finish zero its contribution exactly.
        scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
        ctx = torch.softmax(scores, dim=-1) @ v  # [B, nh, T, hd]
        ctx = ctx.transpose(1, 2).reshape(b, t, nh * hd)  # [B, T, H]
        return self._finish(hidden, self.o_proj(ctx), mask)

    def forward_reference(self, hidden: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """Plain-loop reference for :meth:`forward`: one row, head and query token at a time."""
        hidden, memory, mask = self._check(hidden, memory, memory_mask)
        b, t, h = hidden.shape
        hd, dtype = self.head_dim, self.q_proj.weight.dtype
        ctx = hidden.new_zeros(b, t, h, dtype=dtype)
        for i in range(b):
            keep = [j for j in range(memory.shape[1]) if mask[i, j]]
            if not keep:
                continue  # no memory: nothing is added (its context is never used)
            mem = memory[i, keep].to(dtype)  # [S_i, dm]
            k, v = self.k_proj(mem), self.v_proj(mem)
            for pos in range(t):
                x = hidden[i, pos].to(dtype)
                q = self.q_proj(x / x.pow(2).mean().add(_EPS).sqrt())
                for head in range(self.num_heads):
                    sl = slice(head * hd, (head + 1) * hd)
                    w = torch.softmax(k[:, sl] @ q[sl] / math.sqrt(hd), dim=0)  # [S_i]
                    ctx[i, pos, sl] = w @ v[:, sl]
        return self._finish(hidden, self.o_proj(ctx), mask)


# The cross-attention blocks open in this thread / task: wrapper -> (module, memory [B, S, dm],
# mask [B, S]). A context variable, so each thread (and asyncio task) sees only its own blocks.
_BINDINGS: ContextVar[Mapping[nn.Module, tuple[nn.Module, torch.Tensor, torch.Tensor]]] = \
    ContextVar("memadapter_cross_attention", default={})
# Guards installing / removing wrappers and their user counts, across every model.
_WRAP_LOCK = threading.Lock()


class _CrossAttnLayer(nn.Module):
    """Stands in for decoder layer ``layer``: runs it, then, when the current thread / task has a
    cross-attention block open on this layer, adds its gated cross-attention to its memory.

    One wrapper serves every concurrent block on the layer (``users`` counts them); a forward
    with no block open in its context gets the layer's output unchanged.
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.users = 0  # open blocks, in any thread; changed under _WRAP_LOCK

    @property
    def wrapped_layer(self) -> nn.Module:
        """The original layer (read_hidden_states hooks it, whether or not it is wrapped then)."""
        return self.layer

    def __getattr__(self, name: str):
        # Decoders read per-layer attributes (attention_type, layer_type, self_attn.layer_idx ...).
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_modules"]["layer"], name)

    def state_dict(self, *args, **kwargs):
        # The original layer's keys: a save in another thread while a block is open sees no wrapper.
        return self.layer.state_dict(*args, **kwargs)

    def forward(self, *args, **kwargs):
        out = self.layer(*args, **kwargs)
        binding = _BINDINGS.get().get(self)
        if binding is None:
            return out  # no block open on this layer in this thread / task
        xattn, memory, mask = binding
        hidden = out[0] if isinstance(out, tuple) else out  # Llama & co return a plain tensor in 5.x
        memory, mask = _match_batch(memory, mask, hidden.shape[0])
        hidden = xattn(hidden, memory, mask)
        return (hidden,) + tuple(out[1:]) if isinstance(out, tuple) else hidden


def _match_batch(memory: torch.Tensor, mask: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeat each request's memory to the batch generate() runs.

    ``generate`` with ``num_return_sequences=n`` or ``num_beams=n`` expands every input row
    with ``repeat_interleave(n, dim=0)``, so row i's copies are rows i*n .. i*n+n-1; repeating
    the memory the same way keeps each request reading only its own memory.
    """
    if memory.shape[0] == batch:
        return memory, mask
    if batch % memory.shape[0]:
        raise ShapeError(f"memory: batch {memory.shape[0]} does not divide the hidden batch {batch}")
    n = batch // memory.shape[0]
    return memory.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)


@contextmanager
def cross_attention(
    model: nn.Module,
    layer_indices: Sequence[int],
    modules: nn.ModuleList,
    memory: torch.Tensor,
    memory_mask: torch.Tensor,
) -> Iterator[None]:
    """Wrap decoder layers ``layer_indices[j]`` with ``modules[j]`` reading ``memory`` for the block.

    memory [B, S, dm], memory_mask [B, S] (bool). Inside the block the model's forward and
    ``generate`` add ``modules[j](hidden, memory, memory_mask)`` to the output of those layers;
    under ``num_return_sequences`` / beams the memory is repeated to the expanded batch (see
    ``_match_batch``). On exit, also after an exception, the original layers are put back.
    All checks run before anything is changed, so a rejected call leaves the model as it was.

    Threads: blocks in different threads (or asyncio tasks) may be open on one model at the same
    time; each forward reads only the memory of the block open in its own context, and a forward
    with none runs the plain layers. The wrappers are installed by the first open block and
    removed when the last one closes. Nesting blocks on one layer in one context is an error.

    Note: transformers' ``output_hidden_states`` hooks sit on the original layer, so a wrapped
    layer's own recorded hidden state is the one *before* its cross-attention term (later layers
    see and record the injected state). The state dict keeps the backbone's own keys while wrapped.
    """
    layers = backbone_parts(model).layers
    indices = _check_cross_attention_args(layers, layer_indices, modules, memory, memory_mask)
    bound = _acquire_wrappers(layers, indices)
    try:
        mask = memory_mask.bool()
        token = _BINDINGS.set({**_BINDINGS.get(), **{w: (modules[j], memory, mask) for j, w in enumerate(bound)}})
        try:
            yield
        finally:
            _BINDINGS.reset(token)
    finally:
        _release_wrappers(layers, indices, bound)


def _acquire_wrappers(layers: nn.ModuleList, indices: list[int]) -> list[_CrossAttnLayer]:
    """Wrap layers ``indices`` unless a block in another thread already did; count this block."""
    with _WRAP_LOCK:
        bound = []
        for i in indices:
            if not isinstance(layers[i], _CrossAttnLayer):
                layers[i] = _CrossAttnLayer(layers[i])
            layers[i].users += 1
            bound.append(layers[i])
        return bound


def _release_wrappers(layers: nn.ModuleList, indices: list[int], bound: list[_CrossAttnLayer]) -> None:
    """Uncount this block; the last block out puts the original layer back."""
    with _WRAP_LOCK:
        for i, wrapper in zip(indices, bound):
            wrapper.users -= 1
            if wrapper.users == 0 and layers[i] is wrapper:
                layers[i] = wrapper.layer


def _check_cross_attention_args(
    layers: nn.ModuleList, layer_indices: object, modules: object, memory: object, memory_mask: object
) -> list[int]:
    if not isinstance(modules, (nn.ModuleList, list, tuple)):
        raise DTypeError(f"modules: expected an nn.ModuleList, got {type(modules).__name__}")
    indices = list(layer_indices) if isinstance(layer_indices, (list, tuple, range)) else None
    if indices is None:
        raise DTypeError(f"layer_indices: expected a sequence of ints, got {type(layer_indices).__name__}")
    if len(indices) != len(modules):
        raise ShapeError(f"layer_indices: {len(indices)} indices for {len(modules)} modules")
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(layers):
            raise ShapeError(f"layer_indices: each must be an int in 0..{len(layers) - 1}, got {i!r}")
    if len(set(indices)) != len(indices):
        raise ShapeError(f"layer_indices: indices must be unique, got {indices}")
    open_here = _BINDINGS.get()  # blocks of other threads share the wrappers; only this context's count
    for i in indices:
        if layers[i] in open_here:
            raise ConfigError(f"layer_indices: layer {i} is already wrapped (nested cross_attention blocks)")
    memory = check_tensor("memory", memory, ndim=3, nonempty=False)
    check_mask("memory_mask", memory_mask, tuple(memory.shape[:2]))
    for j, mod in enumerate(modules):
        dim = getattr(mod, "memory_dim", memory.shape[-1])
        if memory.shape[-1] != dim:
            raise ShapeError(f"memory: last dim {memory.shape[-1]} does not match modules[{j}].memory_dim {dim}")
    return indices


class CrossAttnInjector(Injector):
    """``injection="cross_attn"``: one :class:`GatedCrossAttention` per ``cross_attn_layers`` entry
    (model attribute ``cross_attn``) reads the selected values, plus (``value_tokens > 0``) each
    value's token embeddings mapped into value space by ``value_token_proj``. The text keeps its
    places, so the backbone's own output (and loss) is returned."""

    def check_config(self, config: Any) -> None:
        if not config.cross_attn_layers:
            raise ConfigError("cross_attn_layers: injection='cross_attn' needs at least one layer index")
        if config.hidden_size is not None and config.hidden_size % config.cross_attn_heads:
            raise ConfigError(
                f"cross_attn_heads: hidden_size {config.hidden_size} is not divisible by {config.cross_attn_heads} heads")

    def build(self, model: nn.Module, config: Any, hidden: int) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"cross_attn": nn.ModuleList(
            GatedCrossAttention(hidden, config.value_dim, config.cross_attn_heads, config.cross_attn_gate_init)
            for _ in config.cross_attn_layers)}
        if config.value_tokens > 0:  # value tokens become extra memory entries, mapped into value space
            mods["value_token_proj"] = nn.Linear(hidden, config.value_dim, bias=False)
        return mods

    def prepare(self, model: nn.Module, sel: "Selection", input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> Prepared:
        modules = built_module(model, "cross_attn")
        w = modules[0].k_proj.weight
        memory, mask = sel.values.to(w.device, w.dtype), sel.valid.to(w.device)  # [B, K, dv], [B, K]
        value_embeds, value_mask = model._value_embeds(sel)
        if value_embeds is not None:
            b, k, n, _ = value_embeds.shape
            tokens = built_module(model, "value_token_proj")(value_embeds.to(w.dtype)).view(b, k * n, -1)  # [B, K*L, dv]
            memory = torch.cat([memory, tokens], 1)  # [B, K + K*L, dv]
            mask = torch.cat([mask, (value_mask & mask[:, :, None]).view(b, k * n)], 1)  # [B, K + K*L]
        block = cross_attention(model.backbone, model.config.cross_attn_layers, modules, memory, mask)
        return Prepared({"input_ids": input_ids, "attention_mask": attention_mask}, context=block)
