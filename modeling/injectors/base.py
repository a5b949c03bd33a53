"""The injector interface: how the selected memory enters the frozen backbone.

An injector is one small stateless object (kvpress style: one class per strategy) with three
steps, so ``MemAdapterForCausalLM.forward`` and ``generate`` run every strategy the same way:

- ``check_config(config)``: refuse the settings it cannot run with (ConfigError naming the field);
- ``build(model, config, hidden)``: the adapter modules it trains, by the model attribute they
  live under (their state-dict prefix, so saved adapters keep their keys);
- ``prepare(model, sel, input_ids, attention_mask)``: per call, a :class:`Prepared` - what to give
  the backbone, a context to run it in, and where each of the caller's tokens went.

Shared tensor helpers of the injectors live here too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn

from memadapter.errors import ConfigError, DTypeError, ShapeError

if TYPE_CHECKING:
    from ..selection import Selection

_EPS = 1e-6


@dataclass
class Prepared:
    """One call's backbone inputs.

    ``inputs``: keyword arguments for the backbone's forward / generate (``input_ids`` or
    ``inputs_embeds``, and ``attention_mask``). ``where`` [B, T]: the position in ``inputs`` of each
    of the caller's T tokens, so logits can be mapped back to them; None when they kept their
    places. ``context``: entered around the backbone call (cross-attention wraps layers in it).
    """

    inputs: dict[str, torch.Tensor]
    where: Optional[torch.Tensor] = None
    context: AbstractContextManager = field(default_factory=nullcontext)


class Injector(ABC):
    """One way to put a :class:`Selection` into the frozen backbone.

    A new injector is a subclass in its own module under ``modeling/injectors/`` plus one entry in
    ``INJECTORS``; the config's ``injection`` names it.

    Example:
        >>> class Nothing(Injector):
        ...     def prepare(self, model, sel, input_ids, attention_mask):
        ...         return Prepared({"input_ids": input_ids, "attention_mask": attention_mask})
        >>> Nothing().build(None, None, 64)
        {}
    """

    # forward_with_values (training's teacher-forced path) hands it value vectors with gradients
    takes_values: bool = True

    def check_config(self, config: Any) -> None:
        """Raise ConfigError naming the field when ``config`` cannot run this injector."""

    def build(self, model: nn.Module, config: Any, hidden: int) -> dict[str, nn.Module]:
        """The trained modules, by model attribute name (their state-dict prefix); none by default."""
        return {}

    @abstractmethod
    def prepare(self, model: nn.Module, sel: "Selection", input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> Prepared:
        """ids [B, T] and mask [B, T] (checked, left padding allowed) plus ``sel`` -> backbone inputs."""


def built_module(model: nn.Module, name: str) -> nn.Module:
    """The module ``build`` put at ``model.<name>``; a ConfigError when the adapter was built for
    another injection (``config.injection`` switched to one whose weights it does not have)."""
    module = model._modules.get(name)
    if module is None:
        raise ConfigError(f"injection: {model.config.injection!r} needs the adapter module {name!r}, which this "
                          "adapter does not have (it was built for another injection)")
    return module


def rms(x: torch.Tensor) -> torch.Tensor:
    """Root-mean-square over the last dim, kept for broadcasting: [..., 1]."""
    return x.pow(2).mean(dim=-1, keepdim=True).add(_EPS).sqrt()


def check_mask(name: str, mask: object, shape: tuple[int, ...]) -> torch.Tensor:
    """A bool or 0/1 integer mask of exactly ``shape``, as bool."""
    if not isinstance(mask, torch.Tensor):
        raise DTypeError(f"{name}: expected a torch.Tensor, got {type(mask).__name__}")
    if mask.is_floating_point():
        raise DTypeError(f"{name}: expected a bool or 0/1 integer mask, got dtype {mask.dtype}")
    if tuple(mask.shape) != shape:
        raise ShapeError(f"{name}: expected shape {shape}, got {tuple(mask.shape)}")
    return mask.bool()
