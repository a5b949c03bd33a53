"""MemAdapterForCausalLM: a frozen causal LM plus an editable, request-local memory adapter.

The backbone is never trained or saved. The adapter is the grounding / write / query heads and
the injector (soft prefix or gated cross-attention modules), plus an optional peft LoRA on the
backbone. Data path of one request (see DESIGN.md):

    ingest:   chunk of <= chunk_tokens tokens -> backbone layers [0, read_layer) -> hidden
              -> ChunkIndex.add (summary + text)  and  GroundingHead -> WriteController -> SlotMemory
    generate: question -> QueryHead -> pool (slots + events grounded in retrieved chunks) -> ReadScorer
              -> prefix | cross_attn | text
              -> backbone.generate

Each stage has its module: ingest in :mod:`.ingest` (``IngestMixin``), the read in :mod:`.reader`
(``MemoryReaderMixin``), injection in :mod:`.injectors`, text through the backbone in
:mod:`.backbone_text` (``BackboneTextMixin``); from_pretrained's argument handling and base
loading in :mod:`.adapter_loading`, the Auto-class registration in :mod:`.auto_registration`.

Nothing is injected through ``past_key_values``, so the KV cache, batching with left padding,
greedy decoding and sampling all behave as in the plain backbone.

Threads: one model may serve concurrent requests (threads or asyncio tasks), each with its own
``RequestMemory``; they get exactly what they get one at a time (tests/modeling/test_concurrency.py).
Hidden-state capture, cross-attention memory and ``disable_adapter`` are per thread / task
(context variables), never model-wide. Not covered: one memory used by two requests at once
(lock it), sampling (the global torch RNG is shared, so draws interleave), a peft LoRA's
``disable_adapter`` (model-wide in peft), loading weights while requests run, and a caller that
tokenizes with ``padding=`` / ``truncation=`` on the shared fast tokenizer in other threads
(memadapter's own calls never pad or truncate, but a settings change can race them, 'Already
borrowed': give such threads a copy).

    >>> model = MemAdapterForCausalLM.from_pretrained(base_model, tokenizer=tok)   # doctest: +SKIP
    >>> memory = model.new_memory()                                                # doctest: +SKIP
    >>> model.ingest(memory, "alice lives in paris")                               # doctest: +SKIP
    >>> model.generate(**tok("where does alice live", return_tensors="pt"), memory=memory)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any, Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from memadapter._validate import check_allocation, check_size
from memadapter.answer_pointer import AnswerPointer
from memadapter.chunk_index import ChunkIndex, index_bytes
from memadapter.errors import ConfigError, ShapeError
from memadapter.heads import GroundingHead, QueryHead, WriteController
from memadapter.request_memory import RequestMemory
from memadapter.slots import SlotMemory, slot_state_bytes

from . import hub
from .adapter_loading import auto_kwargs, is_adapter_folder, load_base, saved_config
from .auto_registration import register_auto_classes
from .backbone_text import BackboneTextMixin
from .backbones import backbone_parts, embed_tokens
from .configuration_memadapter import MemAdapterConfig
from .ingest import PROGRESS_MIN_CHUNKS, IngestMixin, IngestReport, reference_ingest
from .injectors import INJECTORS, Injector, get_injector
from .input_checks import InputChecksMixin
from .read_scorer import ReadScorer, widen_features
from .reader import MemoryReaderMixin
from .selection import Selection

# Adapter tensors added to a head after adapters were saved with that head: an adapter without one
# reads it as zeros, which is how it read (the answer pointer's restatement weights, 2026-12-06;
# its hedge head, 2026-12-07: a scorer saved before reads the hedge feature with weight 0).
ZERO_WHEN_MISSING = ("answer_pointer.restated", "answer_pointer.hedge.weight", "answer_pointer.hedge.bias")

# The write path's names, imported from here by benches and tests before it had its own module.
__all__ = ["MemAdapterForCausalLM", "IngestReport", "PROGRESS_MIN_CHUNKS", "reference_ingest"]

# ids of the models whose adapter is off (disable_adapter) in this thread / asyncio task
_ADAPTER_OFF: ContextVar[frozenset[int]] = ContextVar("memadapter_adapter_off", default=frozenset())


class MemAdapterForCausalLM(MemoryReaderMixin, IngestMixin, InputChecksMixin, BackboneTextMixin, PreTrainedModel):
    """A frozen causal LM with a request-local slot memory and sparse chunk fallback.

    Example:
        >>> model = MemAdapterForCausalLM(MemAdapterConfig(key_dim=16, value_dim=16), backbone=lm)  # doctest: +SKIP
        >>> memory = model.new_memory(batch_size=2)                                   # doctest: +SKIP
        >>> model.ingest(memory, ["alice lives in paris", "bob lives in rome"])      # doctest: +SKIP
        >>> memory.table(0)                                                           # doctest: +SKIP
    """

    config_class = MemAdapterConfig
    base_model_prefix = "memadapter"
    supports_gradient_checkpointing = True
    _no_split_modules: list[str] = []

    def __init__(self, config: MemAdapterConfig, backbone: Optional[nn.Module] = None, tokenizer: Any = None):
        if backbone is None:
            raise ConfigError("backbone: MemAdapterForCausalLM needs a base model; use from_pretrained(base, adapter=...)")
        parts = backbone_parts(backbone)  # UnsupportedBackboneError for unknown families
        config.check_backbone(_unwrap(backbone).config)  # AdapterMismatchError naming both sides
        config.backbone_model_type = config.backbone_model_type or _unwrap(backbone).config.model_type
        config.hidden_size = config.hidden_size or parts.hidden_size
        config.backbone_num_layers = config.backbone_num_layers or parts.num_layers
        config.validate_fields()
        super().__init__(config)
        self.backbone = backbone
        for name, p in self.backbone.named_parameters():
            p.requires_grad_("lora_" in name)  # frozen backbone; a peft LoRA on it is adapter
        self._build_heads(config, parts.hidden_size)
        self.tokenizer = tokenizer
        self.post_init()
        ref = next(backbone.parameters())
        self._adapter_modules().to(device=ref.device, dtype=ref.dtype)

    def _build_heads(self, config: MemAdapterConfig, hidden: int) -> None:
        self.grounding = GroundingHead(hidden, config.key_dim, config.value_dim, config.num_event_types,
                                       context_size=config.grounding_context_size)
        self.writer = WriteController(config.key_dim, config.num_event_types)
        self.query_head = QueryHead(hidden, config.key_dim)
        self.read_scorer = ReadScorer()  # fitted after the heads (memadapter.training.fit_reader)
        # fitted after the heads too (memadapter.training.fit_pointer); None: the adapter has none
        self.answer_pointer = AnswerPointer(len(config.answer_layers) * hidden) if config.answer_layers else None
        self._build_injector(config, hidden)

    def _build_injector(self, config: MemAdapterConfig, hidden: int) -> None:
        # The injector's modules under the attribute names that are their state-dict prefixes
        # ("injector", "cross_attn", "value_token_proj"): saved adapters keep their keys.
        built = get_injector(config.injection).build(self, config, hidden)
        for name, module in built.items():
            setattr(self, name, module)
        self._injection_modules = tuple(built)

    def replace_injector(self, injection: str, cross_attn_layers: Sequence[int] = ()) -> None:
        """Swap the trained injector for a fresh, untrained one of kind ``injection`` (heads, reader
        and pointer kept; a cross-attention starts at gate 0, the identity), to be fitted by
        ``memadapter.training.fit_injector``. A ConfigError for bad fields leaves the model as it was."""
        fields = {"injection": injection, "cross_attn_layers": list(cross_attn_layers), "cross_attn_gate_init": 0.0}
        trial = MemAdapterConfig.from_dict({**self.config.to_dict(), **fields})
        trial.validate_fields()
        get_injector(injection).check_config(trial)
        for name in self._injection_modules:
            delattr(self, name)
        for key, value in fields.items():
            setattr(self.config, key, value)
        self._build_injector(self.config, self.config.hidden_size)
        ref = next(self.backbone.parameters())
        self._adapter_modules().to(device=ref.device, dtype=ref.dtype)  # as __init__ places them

    def _adapter_modules(self) -> nn.ModuleList:
        mods = (self.grounding, self.writer, self.query_head, self.read_scorer, *(getattr(self, n) for n in self._injection_modules),
                *([self.answer_pointer] if self.answer_pointer is not None else []))
        return nn.ModuleList(mods)

    def _init_weights(self, module: nn.Module) -> None:
        """Heads initialise themselves; the frozen backbone must never be re-initialised."""

    # ------------------------------------------------------------------ adapter parameters
    @staticmethod
    def _is_adapter_key(name: str) -> bool:
        # peft LoRA weights live inside the backbone and are part of the adapter.
        return not name.startswith("backbone.") or "lora_" in name

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the adapter's tensors: heads, injector, cross-attention, LoRA. Never the backbone."""
        return {k: v for k, v in self.state_dict().items() if self._is_adapter_key(k)}

    def adapter_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if self._is_adapter_key(n))

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Strict load of adapter tensors; a missing or unexpected key is a ConfigError naming it.
        An adapter saved before the learned reader has no ``read_scorer.*`` tensors: it reads with
        the scorer's prior (the plain joint score). A scorer saved before features were added reads
        them with weight 0 (they are appended to ``FEATURES``). A tensor of :data:`ZERO_WHEN_MISSING`
        (added to a head after adapters were saved with it) reads as zeros, as that adapter read."""
        own = self.adapter_state_dict()
        state = {**{k: torch.zeros_like(own[k]) for k in ZERO_WHEN_MISSING if k in own and k not in state}, **state}
        if not any(k.startswith("read_scorer.") for k in state):
            self.read_scorer.reset_prior()
            own = {k: v for k, v in own.items() if not k.startswith("read_scorer.")}
        state = {k: widen_features(v, own[k]) if k in own and k.startswith("read_scorer.") else v for k, v in state.items()}
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ConfigError(f"adapter weights: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        for k, v in state.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise ConfigError(f"adapter weights: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
        self.load_state_dict(state, strict=False)

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the plain backbone (no memory, no LoRA) inside the block.

        The memory is off only in the calling thread / task: concurrent requests keep theirs. A
        peft LoRA on the backbone is switched off by peft itself, which is model-wide.
        """
        peft_off = getattr(self.backbone, "disable_adapter", None)
        token = _ADAPTER_OFF.set(_ADAPTER_OFF.get() | {id(self)})
        try:
            with peft_off() if callable(peft_off) else nullcontext():
                yield
        finally:
            _ADAPTER_OFF.reset(token)

    @property
    def _adapter_enabled(self) -> bool:
        return id(self) not in _ADAPTER_OFF.get()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[dict] = None) -> None:
        # Non-reentrant by default: with a frozen backbone the reentrant variant drops adapter grads.
        kwargs = gradient_checkpointing_kwargs or {"use_reentrant": False}
        _unwrap(self.backbone).activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)

    def gradient_checkpointing_disable(self) -> None:
        _unwrap(self.backbone).activation_checkpointing_disable()

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    # ------------------------------------------------------------------ memory (ingest and its writes: .ingest)
    def new_memory(self, batch_size: int = 1) -> RequestMemory:
        """An empty memory for ``batch_size`` independent requests (CapacityError, before
        allocating, if it would not fit in the available memory)."""
        cfg = self.config
        check_size("batch_size", batch_size)
        need = slot_state_bytes(batch_size, cfg.num_slots, cfg.key_dim, cfg.value_dim) \
            + batch_size * index_bytes(cfg.hidden_size)
        check_allocation("batch_size x (num_slots x (key_dim + value_dim) + hidden_size)", need)
        # Memory lives on the CPU: it is small request data, and rows are edited by index from Python.
        slots = SlotMemory(cfg.num_slots, cfg.key_dim, cfg.value_dim, batch_size=batch_size,
                           match_threshold=cfg.ingest.slot_match_threshold,
                           update_match_threshold=cfg.ingest.slot_update_match_threshold,
                           tombstones=cfg.ingest.retract_tombstones, update_name_weight=cfg.ingest.slot_update_name_weight)
        indexes = [ChunkIndex(cfg.hidden_size, chunk_tokens=cfg.chunk_tokens) for _ in range(batch_size)]
        memory = RequestMemory(slots, indexes, self.encode_text)
        memory.adapter_id = self.adapter_fingerprint()  # _check_adapter_id refuses it to any other adapter
        return memory

    def _value_embeds(self, sel: Selection) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Selected value token ids [B, K, L] -> backbone embeddings [B, K, L, H] and mask [B, K, L]."""
        if sel.value_ids is None:
            return None, None
        ids = sel.value_ids.to(self._device())
        mask = ids >= 0
        b, k, n = ids.shape
        embeds = embed_tokens(self.backbone, ids.clamp(min=0).view(b, k * n)).view(b, k, n, -1)  # [B, K, L, H]
        return embeds, mask

    # ------------------------------------------------------------------ injection
    def _memory_on(self, memory: Optional[RequestMemory]) -> bool:
        if memory is not None:
            self._check_memory(memory)
        return memory is not None and self._adapter_enabled

    def _injector(self) -> Injector:
        """The injector ``config.injection`` names, looked up per call: generation_eval switches a
        trained adapter to ``text`` on the same memory."""
        return get_injector(self.config.injection)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, memory: Optional[RequestMemory] = None,
                **kwargs: Any) -> CausalLMOutputWithPast:
        """Causal LM forward with the memory injected; logits are aligned with ``input_ids``."""
        attention_mask = self._check_ids(input_ids, attention_mask)
        if labels is not None:
            self._check_labels(labels, input_ids)
        if not self._memory_on(memory):
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        with torch.no_grad():
            sel = self.select(memory, input_ids, attention_mask)
        return self._forward_selected(sel, input_ids, attention_mask, labels, **kwargs)

    def forward_with_values(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                            values: torch.Tensor, valid: torch.Tensor, labels: Optional[torch.Tensor] = None,
                            value_ids: Optional[torch.Tensor] = None, **kwargs: Any) -> CausalLMOutputWithPast:
        """Differentiable forward with given memory ``values`` [B, K, dv] / ``valid`` [B, K] injected.

        Training's teacher-forced path: the values come from the grounding head (gold or softly
        selected events) with gradients, bypassing the router. ``value_ids`` [B, K, value_tokens]
        (-1 = none) are the entries' value tokens, required exactly when ``config.value_tokens > 0``.
        Injectors with ``takes_values`` only (``prefix``, ``cross_attn``): ``text`` has nothing differentiable to feed.
        """
        attention_mask = self._check_ids(input_ids, attention_mask)
        if not self._injector().takes_values:
            raise ConfigError(f"injection: forward_with_values needs an injector that reads value vectors "
                              f"({', '.join(n for n, i in INJECTORS.items() if i.takes_values)}), not "
                              f"{self.config.injection!r}")
        if values.dim() != 3 or tuple(values.shape[:2]) != tuple(valid.shape) or values.shape[0] != input_ids.shape[0]:
            raise ShapeError(f"values: expected [B={input_ids.shape[0]}, K, dv] matching valid {tuple(valid.shape)}, "
                             f"got {tuple(values.shape)}")
        if (value_ids is None) != (self.config.value_tokens == 0):
            raise ConfigError(f"value_ids: needed exactly when config.value_tokens > 0 (it is {self.config.value_tokens})")
        if value_ids is not None and tuple(value_ids.shape) != (*valid.shape, self.config.value_tokens):
            raise ShapeError(f"value_ids: expected {(*valid.shape, self.config.value_tokens)}, got {tuple(value_ids.shape)}")
        sel = Selection(values, valid.bool(), [[] for _ in range(values.shape[0])], ["memory"] * values.shape[0], value_ids)
        return self._forward_selected(sel, input_ids, attention_mask, labels, **kwargs)

    def _forward_selected(self, sel: Selection, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          labels: Optional[torch.Tensor], **kwargs: Any) -> CausalLMOutputWithPast:
        prep = self._injector().prepare(self, sel, input_ids, attention_mask)
        with prep.context:
            if prep.where is None:  # the text kept its places: the backbone's own output and loss
                return self.backbone(**prep.inputs, labels=labels, **kwargs)
            out = self.backbone(**prep.inputs, **kwargs)
        logits = out.logits.gather(1, prep.where[..., None].expand(-1, -1, out.logits.shape[-1]))  # [B, T, V]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 memory: Optional[RequestMemory] = None, **generate_kwargs: Any) -> torch.Tensor:
        """Like the backbone's generate (returns prompt + new tokens), with the memory injected."""
        attention_mask = self._check_ids(input_ids, attention_mask)
        if not self._memory_on(memory):
            return self.backbone.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
        generate_kwargs.setdefault("pad_token_id", self._pad_id())
        sel = self.select(memory, input_ids, attention_mask)
        prep = self._injector().prepare(self, sel, input_ids, attention_mask)
        with prep.context:
            out = self.backbone.generate(**prep.inputs, **generate_kwargs)
        # generate returns prompt + new tokens from input_ids, only the new ones from inputs_embeds
        new = out[:, prep.inputs["input_ids"].shape[1]:] if "input_ids" in prep.inputs else out
        return torch.cat([input_ids.repeat_interleave(new.shape[0] // input_ids.shape[0], 0), new], dim=1)

    # ------------------------------------------------------------------ save, load, Hub
    def _config_dict(self) -> dict:
        return json.loads(self.config.to_json_string(use_diff=True))

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> list:
        """Write adapter_config.json, adapter_model.safetensors and README.md, all at once.

        The files go to a fresh folder beside ``save_directory`` that is then swapped in
        (:func:`hub.save_adapter`): a save that fails or is killed leaves the previous adapter
        loadable. Other files in the folder are kept, and so is a README.md the user wrote (one
        without ``hub.CARD_MARKER``). ``results`` (a dict) fills the card's results table.
        """
        config = self._config_dict()
        n_params = sum(v.numel() for v in self.adapter_state_dict().values())
        card = hub.adapter_card(config, n_params, kwargs.get("results"))
        return hub.save_adapter(save_directory, config, self.adapter_state_dict(), card)

    def push_to_hub(self, repo_id: str, *, token: Optional[Union[str, bool]] = None, private: Optional[bool] = None,
                    revision: Optional[str] = None, commit_message: str = "Upload memadapter adapter", **_: Any) -> Any:
        """Save to a temporary folder and upload exactly the three adapter files."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return hub.push_adapter(tmp, repo_id, token=token, private=private, revision=revision,
                                    commit_message=commit_message)

    @classmethod
    def from_pretrained(cls, base: Any = None, *, adapter: Any = None, revision: Optional[str] = None,
                        tokenizer: Any = None, token: Optional[Union[str, bool]] = None, dtype: Any = None,
                        **config_overrides: Any) -> "MemAdapterForCausalLM":
        """``base``: repo id / local dir / loaded model; ``adapter``: adapter dir or Hub repo id (optional:
        without it a fresh, untrained adapter is built from ``config_overrides``).

        ``from_pretrained(adapter_folder)`` alone, and ``AutoModelForCausalLM.from_pretrained(adapter_folder
        or repo_id)`` (which lands here through the ``config.json`` saved beside the adapter), load the
        base named in the adapter config plus the adapter, as peft's auto classes do; the config the
        Auto class built is not used (adapter_config.json is the adapter's config), and its
        ``cache_dir`` / ``force_download`` / ``local_files_only`` apply to the adapter and the base.
        A Hub adapter also loads with ``from_pretrained(adapter=repo_id)``, which needs no config.json
        (adapters pushed before it existed).
        """
        download: dict = {}
        if config_overrides.pop("_from_auto", False):
            dtype, download = auto_kwargs(config_overrides, dtype)
            if adapter is None:
                base, adapter = None, base
        elif adapter is None and is_adapter_folder(base):
            base, adapter = None, base
        if adapter is not None and config_overrides:
            raise ConfigError(f"config_overrides: {sorted(config_overrides)} cannot change a saved adapter's config")
        weights = None
        if adapter is not None:  # both files are read and checked before the base is loaded
            folder = hub.resolve_adapter(adapter, revision=revision, token=token, **download)
            config = saved_config(folder)
            weights = hub.load_adapter_weights(folder)
        else:
            config = MemAdapterConfig(**config_overrides)
        if base is None:
            base = config.base_model_name_or_path
        backbone, tokenizer = load_base(base, config, tokenizer, dtype, token, download)
        if isinstance(base, str) and config.base_model_name_or_path is None:
            config.base_model_name_or_path = base
        model = cls(config, backbone=backbone, tokenizer=tokenizer)
        if weights is not None:
            model.load_adapter_state_dict(weights)
        return model.eval()


def _unwrap(model: nn.Module) -> nn.Module:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


# AutoConfig / AutoModelForCausalLM map model_type "memadapter" to these classes from import on.
register_auto_classes(MemAdapterForCausalLM)
