"""memadapter.modeling: the Hugging Face classes (config, model, backbone registry, injectors)."""

from .configuration_memadapter import MemAdapterConfig
from .modeling_memadapter import MemAdapterForCausalLM

__all__ = ["MemAdapterConfig", "MemAdapterForCausalLM"]
