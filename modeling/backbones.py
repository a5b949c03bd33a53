"""Backbone-family registry: where each supported decoder keeps its layers, embeddings and norm.

Every family supported here (checked on transformers 5.23) lays its causal LM out the same way:
``model.model.{embed_tokens, layers, norm}``. The registry still holds one entry per
``config.model_type`` so that a family with another layout, or a new quirk, is one entry and one
test row, and so that an unknown backbone is refused with the list of known ones.

Quirks that matter to memadapter:

* Gemma (gemma, gemma2, gemma3_text) multiplies token embeddings by ``sqrt(hidden_size)``. In
  transformers 5.x that scale lives *inside* the embedding module (``...TextScaledWordEmbedding``),
  and the decoder does **not** rescale ``inputs_embeds``. So ``generate(inputs_embeds=...)``
  expects embeddings that already carry the scale, which is exactly what :func:`embed_tokens`
  returns, and a soft prefix must be produced at that (large) magnitude too
  (see :func:`token_embedding_rms`). Hidden states stay large, which is why injected residual
  terms are scaled to the hidden-state norm.
* GLM (glm, glm4) needs ``pad_token_id`` inside the vocabulary; batched generation pads with it.
* internlm3 is served by ``LlamaForCausalLM`` in transformers 5.x (native, no remote code).

Example:
    >>> fam = get_family("gemma")
    >>> fam.scales_embeddings
    True
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from memadapter._validate import check_positive_int
from memadapter.errors import ConfigError, DTypeError, ShapeError, UnsupportedBackboneError


@dataclass(frozen=True)
class BackboneFamily:
    """One registry entry: attribute paths inside the causal LM and the family's quirks.

    Example:
        >>> BackboneFamily("llama").layers_attr
        'layers'
    """

    model_type: str
    decoder_path: str = "model"  # dotted path from the *ForCausalLM to the decoder stack
    layers_attr: str = "layers"
    embed_attr: str = "embed_tokens"
    norm_attr: str = "norm"
    scales_embeddings: bool = False  # Gemma: embeddings (and so hidden states) carry sqrt(H)
    needs_pad_token: bool = False  # GLM: pad_token_id must be set and inside the vocabulary


def _entries(*families: BackboneFamily) -> dict[str, BackboneFamily]:
    return {f.model_type: f for f in families}


FAMILIES: dict[str, BackboneFamily] = _entries(
    BackboneFamily("llama"),
    BackboneFamily("qwen2"),
    BackboneFamily("qwen3"),
    BackboneFamily("mistral"),
    BackboneFamily("gemma", scales_embeddings=True),
    BackboneFamily("gemma2", scales_embeddings=True),
    BackboneFamily("gemma3_text", scales_embeddings=True),
    BackboneFamily("glm", needs_pad_token=True),
    BackboneFamily("glm4", needs_pad_token=True),
    BackboneFamily("internlm3"),
)


def supported_model_types() -> list[str]:
    """The registered ``model_type`` strings, sorted."""
    return sorted(FAMILIES)


def get_family(model_type: str) -> BackboneFamily:
    """Registry lookup. Raises UnsupportedBackboneError listing every supported type."""
    if not isinstance(model_type, str):
        raise DTypeError(f"model_type: expected a str, got {type(model_type).__name__}")
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise UnsupportedBackboneError(
            f"model_type: {model_type!r} is not a supported backbone; supported: "
            + ", ".join(supported_model_types())
        ) from None


@dataclass
class BackboneParts:
    """The pieces of a causal LM that memadapter reads and wraps.

    Example:
        >>> parts = backbone_parts(model)          # doctest: +SKIP
        >>> parts.layers[0], parts.hidden_size      # doctest: +SKIP
    """

    decoder: nn.Module
    layers: nn.ModuleList
    embed_tokens: nn.Module
    norm: nn.Module
    hidden_size: int
    num_layers: int
    embed_scale: float  # sqrt(hidden) for Gemma, else 1.0; already applied by embed_tokens
    family: Optional[BackboneFamily] = None


def _unwrap(model: nn.Module) -> nn.Module:
    # peft wraps the causal LM; the registry paths are relative to the transformers model.
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _resolve(root: nn.Module, dotted: str, what: str) -> nn.Module:
    obj = root
    for name in dotted.split("."):
        if not hasattr(obj, name):
            raise UnsupportedBackboneError(
                f"model: {type(root).__name__} has no '{dotted}' ({what}); registry entry does not fit"
            )
        obj = getattr(obj, name)
    return obj


def backbone_parts(model: nn.Module) -> BackboneParts:
    """Resolve decoder, layers, embeddings and norm of ``model`` through the registry."""
    model = _unwrap(model)
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "model_type"):
        raise DTypeError(f"model: expected a transformers causal LM with a config, got {type(model).__name__}")
    family = get_family(config.model_type)
    decoder = _resolve(model, family.decoder_path, "decoder")
    layers = _resolve(decoder, family.layers_attr, "decoder layers")
    embed = _resolve(decoder, family.embed_attr, "token embeddings")
    norm = _resolve(decoder, family.norm_attr, "final norm")
    hidden = int(config.hidden_size)
    if family.scales_embeddings:
        # The scaled-embedding module stores the factor it applies; fall back to Gemma's rule.
        scale = float(getattr(embed, "scalar_embed_scale", math.sqrt(hidden)))
    else:
        scale = 1.0
    return BackboneParts(decoder, layers, embed, norm, hidden, len(layers), scale, family)


def embed_tokens(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Token ids [B, T] -> the embeddings the model feeds layer 0, [B, T, H].

    This is also what ``model(inputs_embeds=...)`` / ``generate(inputs_embeds=...)`` expect:
    in transformers 5.x Gemma's sqrt(H) scale is part of the embedding module, and the decoder
    does not scale ``inputs_embeds`` again (tested per family).
    """
    _check_ids("input_ids", input_ids)
    return backbone_parts(model).embed_tokens(input_ids)


@torch.no_grad()
def token_embedding_rms(model: nn.Module) -> float:
    """Root-mean-square of the token embeddings as the model feeds them (incl. Gemma's scale).

    A soft prefix should start at this magnitude: far smaller vectors are drowned out by the
    real tokens (Gemma's scale is ~45 at H=2048), far larger ones dominate attention.
    """
    parts = backbone_parts(model)
    weight = parts.embed_tokens.weight  # [V, H]
    return float(weight.float().pow(2).mean().sqrt()) * parts.embed_scale


def _check_ids(name: str, ids: object) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor):
        raise DTypeError(f"{name}: expected a torch.Tensor, got {type(ids).__name__}")
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise DTypeError(f"{name}: expected integer token ids, got dtype {ids.dtype}")
    if ids.dim() != 2:
        raise ShapeError(f"{name}: expected [B, T], got shape {tuple(ids.shape)}")
    return ids


def _normalize_layer(layer: int, num_layers: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise DTypeError(f"layer: expected an int, got {type(layer).__name__}")
    if not -(num_layers + 1) <= layer <= num_layers:
        raise ShapeError(f"layer: must index the {num_layers + 1} hidden states (0..{num_layers}), got {layer}")
    return layer % (num_layers + 1)


class _StopForward(Exception):
    """Raised by the capture hook once the last needed layer has run; never escapes."""


# The read_hidden_states call running in this thread / task, if any. Its capture hook acts only
# when this holds its own token, so calls in other threads (whose forwards run through the same
# shared layer and so through every hook on it) and nested calls pass through untouched.
_CAPTURING: ContextVar[Optional[object]] = ContextVar("memadapter_capturing", default=None)


def _innermost(layer: nn.Module) -> nn.Module:
    # A cross-attention block (injectors/cross_attn.py) may wrap the layer now and unwrap it before our
    # forward; the original layer runs either way, so the hook goes there.
    while isinstance(getattr(layer, "wrapped_layer", None), nn.Module):
        layer = layer.wrapped_layer
    return layer


def read_hidden_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    layer: int,
) -> torch.Tensor:
    """Hidden states after decoder layer ``layer`` ([B, T, H]), running layers [0, layer) only.

    Matches ``model(..., output_hidden_states=True).hidden_states[layer]`` exactly: index 0 is the
    embedding output, index ``i`` the output of layer ``i-1``, and the last index
    (``num_layers``) is post-final-norm, as transformers ties it to ``last_hidden_state``.
    Negative ``layer`` counts from the end like Python indexing of that tuple.

    How later layers are skipped: a forward hook on the last needed module stores its output and
    raises a private exception that unwinds the decoder's loop, so no later layer, final norm or
    LM head runs, and the model is never mutated (no layer-list surgery to undo).

    Thread-safe: the hook sits on a module that other threads may be running at the same time;
    it acts only in the call that registered it (a context-variable token) and passes every other
    forward through, so it never stores another thread's tensor nor unwinds another's forward.
    """
    parts = backbone_parts(model)
    _check_ids("input_ids", input_ids)
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ShapeError(
            f"attention_mask: expected shape {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}"
        )
    idx = _normalize_layer(layer, parts.num_layers)
    target = parts.embed_tokens if idx == 0 else _innermost(parts.layers[idx - 1])
    captured: list[torch.Tensor] = []
    me = object()

    def hook(_module: nn.Module, _args: object, output: object) -> None:
        if _CAPTURING.get() is not me:
            return  # another thread's (or an outer call's) forward through the shared layer
        # Decoder layers return a plain tensor in 5.x (Llama) or a tuple whose first item is it.
        captured.append(output[0] if isinstance(output, (tuple, list)) else output)
        raise _StopForward

    handle = target.register_forward_hook(hook)
    token = _CAPTURING.set(me)
    try:
        parts.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        _CAPTURING.reset(token)
        handle.remove()
    if not captured:  # pragma: no cover - would mean the decoder skipped the module
        raise RuntimeError("read_hidden_states: the capture hook never ran")
    hidden = captured[0]
    return parts.norm(hidden) if idx == parts.num_layers else hidden


def read_hidden_states_reference(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], layer: int
) -> torch.Tensor:
    """Plain reference for :func:`read_hidden_states`: a full forward with every hidden state."""
    parts = backbone_parts(model)
    idx = _normalize_layer(layer, parts.num_layers)
    out = parts.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, output_hidden_states=True)
    return out.hidden_states[idx]


def check_pad_token(model: nn.Module) -> int | None:
    """Return the pad id; for families that need one, insist it is set and inside the vocabulary."""
    model = _unwrap(model)
    family = get_family(model.config.model_type)
    pad = getattr(model.config, "pad_token_id", None)
    if family.needs_pad_token:
        vocab = check_positive_int("vocab_size", int(model.config.vocab_size))
        if pad is None or not 0 <= int(pad) < vocab:
            raise ConfigError(f"pad_token_id: {family.model_type} needs a pad id inside the vocab (0..{vocab - 1}), got {pad}")
    return pad
