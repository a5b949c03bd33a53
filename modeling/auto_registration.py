"""How transformers' Auto classes reach MemAdapterForCausalLM: model_type "memadapter" registered
with ``AutoConfig`` / ``AutoModelForCausalLM`` (no remote code: the package is the code), and the
Auto class's peft probe kept off memadapter adapters so a Hub id loads as a local folder does.

:mod:`.modeling_memadapter` calls :func:`register_auto_classes` once the model class exists, so
``import memadapter.modeling`` registers.

    >>> from transformers import AutoConfig
    >>> from memadapter.modeling import MemAdapterConfig
    >>> type(AutoConfig.for_model("memadapter")) is MemAdapterConfig
    True
"""

from __future__ import annotations

import functools
from typing import Any, Optional

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from . import hub
from .configuration_memadapter import MemAdapterConfig

__all__ = ["register_auto_classes"]


def register_auto_classes(model_class: type[PreTrainedModel]) -> None:
    """Map model_type "memadapter" to MemAdapterConfig and ``model_class`` in the Auto classes
    (again on a reload: ``exist_ok``), and wrap the peft probe once."""
    AutoConfig.register("memadapter", MemAdapterConfig, exist_ok=True)
    AutoModelForCausalLM.register(MemAdapterConfig, model_class, exist_ok=True)
    _keep_peft_detection_off_memadapter()


def _keep_peft_detection_off_memadapter() -> None:
    """Let ``AutoModelForCausalLM.from_pretrained(repo_id)`` reach MemAdapterForCausalLM on a Hub id.

    The Auto class first asks ``find_adapter_config_file`` whether the path holds an
    adapter_config.json. For a Hub id (no local config.json to keep it) it then swaps in the base
    named there and hands the repo to peft, which refuses our config (no peft_type) before any
    registered class is asked. A local folder escapes only because its config.json is found on disk.
    The wrapper answers "no peft adapter" for memadapter configs alone (hub.is_adapter_config_file:
    model_type "memadapter", no peft_type), so transformers reads config.json, finds the registered
    type, and calls our from_pretrained; every other answer is transformers' own, unchanged.

    Why this and not a new file name for the config: adapter_config.json is peft's convention, the
    trainer's checkpoints and every saved adapter (the bundled one included) use it, and adapters
    already pushed with it would stay unloadable by id, where this way they load. The wrapper only
    sees the name auto_factory imported; if a transformers release moves it, Hub ids go to peft
    again and tests/modeling/test_auto_loading.py fails, rather than anything breaking at import.
    """
    from transformers.models.auto import auto_factory

    find = getattr(auto_factory, "find_adapter_config_file", None)
    if find is None or getattr(find, "_memadapter_wrapper", False):
        return  # another transformers layout, or wrapped already (a second call, a reload)

    @functools.wraps(find)
    def find_adapter_config_file(*args: Any, **kwargs: Any) -> Optional[str]:
        path = find(*args, **kwargs)
        return None if path is not None and hub.is_adapter_config_file(path) else path

    find_adapter_config_file._memadapter_wrapper = True  # type: ignore[attr-defined]
    auto_factory.find_adapter_config_file = find_adapter_config_file
