"""Injectors: the ways the selected memory enters the frozen backbone, one module each.

``INJECTORS`` maps ``MemAdapterConfig.injection`` to an :class:`Injector`; the config takes its
choices from here and the model's forward / generate run whichever is named, with no branch per
strategy. A new injector is one module under ``modeling/injectors/`` and one entry here
(docs/ARCHITECTURE.md has the checklist).

    >>> sorted(INJECTORS)
    ['cross_attn', 'prefix', 'text']
    >>> get_injector("prefix").takes_values, get_injector("text").takes_values
    (True, False)
"""

from __future__ import annotations

from memadapter.errors import ConfigError

from .base import Injector, Prepared
from .cross_attn import CrossAttnInjector, GatedCrossAttention, cross_attention
from .prefix import PrefixInjector, SoftPrefixInjector
from .text import TextInjector

INJECTORS: dict[str, Injector] = {
    "prefix": PrefixInjector(),
    "cross_attn": CrossAttnInjector(),
    "text": TextInjector(),
}


def get_injector(name: object) -> Injector:
    """The registered injector ``name``; a ConfigError naming ``injection`` and the choices otherwise."""
    injector = INJECTORS.get(name) if isinstance(name, str) else None
    if injector is None:
        raise ConfigError(f"injection: must be one of {', '.join(INJECTORS)}, got {name!r}")
    return injector


__all__ = ["INJECTORS", "Injector", "Prepared", "get_injector", "PrefixInjector", "CrossAttnInjector",
           "TextInjector", "SoftPrefixInjector", "GatedCrossAttention", "cross_attention"]
