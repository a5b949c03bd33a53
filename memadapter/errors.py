"""One small exception hierarchy for everything memadapter rejects.

Every error a user can trigger with bad input is a ``MemAdapterError``; the subclasses also
inherit the matching built-in (``ValueError``, ``TypeError``, ``KeyError``) so callers that
already catch those keep working. Messages name the argument and what was wrong with it.

Example:
    >>> from memadapter.errors import MemAdapterError, ShapeError
    >>> try:
    ...     raise ShapeError("keys: expected last dim 64, got 32")
    ... except MemAdapterError as err:
    ...     print(type(err).__name__)
    ShapeError
"""


class MemAdapterError(Exception):
    """Base class of every error raised on purpose by memadapter."""


class ShapeError(MemAdapterError, ValueError):
    """A tensor has the wrong number of dimensions or a mismatched size."""


class DTypeError(MemAdapterError, TypeError):
    """A tensor (or value) has a dtype the operation cannot take."""


class EmptyInputError(MemAdapterError, ValueError):
    """An input that must hold something is empty."""


class NonFiniteError(MemAdapterError, ValueError):
    """An input holds NaN or infinity."""


class CapacityError(MemAdapterError, ValueError):
    """A size or count is out of range: zero slots, top_k above the slot count, a full index."""


class ConfigError(MemAdapterError, ValueError):
    """A configuration value is invalid or inconsistent with another one."""


class UnsupportedBackboneError(MemAdapterError, ValueError):
    """The backbone's model_type has no registry entry."""


class AdapterMismatchError(MemAdapterError, ValueError):
    """A saved adapter was trained for another backbone family or hidden size."""


class UnsafeLoadError(MemAdapterError, ValueError):
    """A file or config asked for something loading never does (pickle, remote code, imports)."""


class MissingDependencyError(MemAdapterError, ImportError):
    """An optional package needed for this operation is not installed; the message names the pip command."""
