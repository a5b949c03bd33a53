"""The small native memory-managed LM of the paper's Phase 12 (section 4.3): an event-token model.

One position per event. An event is a structured token ``(marker, key, value)``: the marker is the
write signal of the controlled tasks (``NONE`` for an ordinary, unsignalled fact, ``WRITE``,
``UPDATE``, ``PROTECT``, ``ASIDE`` for an irrelevant remark) and the last position of a stream is
the question ``(QUERY, key, NO_VALUE)``. The model (about 2.74M parameters) has

* token embeddings (marker + key + value fields summed) and a causal fast-state backbone:
  DeltaNet mixing layers (chunkwise, per-token outputs) with MLPs;
* a write head producing ``p_write`` per event, a memory key from the event's key field and a
  memory value from the backbone state;
* a differentiable soft memory (``experiments.soft_slots``) used in training, and a 32-slot hard
  :class:`~memadapter.slots.SlotMemory` used at evaluation, where the number of state-changing
  actions per stream is counted;
* a top-16 sparse fallback over the summaries of all past events, a router (memory branch when a
  slot's key matches the query, else the fallback) and an answer head over value ids.

Labels never enter the model: ``p_write`` is the model's own, the event type is inferred by the
slot memory from key match and value agreement (no explicit UPDATE events are passed).

Example:
    >>> import torch
    >>> from experiments.native_lm import NativeLMConfig, NativeMemoryLM
    >>> model = NativeMemoryLM(NativeLMConfig(d_model=32, n_heads=2, mlp_hidden=64, answer_hidden=32))
    >>> m, k, v = torch.zeros(2, 9, dtype=torch.long), torch.randint(0, 256, (2, 9)), torch.randint(0, 256, (2, 9))
    >>> m[:, -1] = model.config.query_marker
    >>> model.forward_soft(m, k, v, temperature=0.1).logits.shape
    torch.Size([2, 256])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from memadapter._validate import check_positive_int
from memadapter.errors import ConfigError, DTypeError, ShapeError
from memadapter.slots import SlotMemory, WriteResult
from experiments.soft_slots import SoftSlotConfig, SoftSlotState, soft_read, soft_write

MARKER_NAMES = ("NONE", "WRITE", "UPDATE", "PROTECT", "ASIDE", "QUERY")
NONE, WRITE, UPDATE, PROTECT, ASIDE, QUERY = range(len(MARKER_NAMES))


@dataclass(frozen=True)
class NativeLMConfig:
    """Sizes of :class:`NativeMemoryLM`; the defaults give about 2.74M parameters."""

    num_keys: int = 256
    num_values: int = 256
    d_model: int = 192
    n_layers: int = 2
    n_heads: int = 3
    mlp_hidden: int = 768
    # The fast state is a bounded window: restarted every chunk_size events, so an event at position
    # 4,000 sees the same kind of context as in the 48-event training streams (without this, the
    # state drifts with length and p_write / values degrade past ~200 events: measured, seed 0).
    chunk_size: int = 32
    carry_state: bool = False
    key_dim: int = 64
    value_dim: int = 64
    answer_hidden: int = 3760  # a wide head runs once per stream: parameters that cost no per-event time
    num_slots: int = 32
    read_top_k: int = 1
    fallback_top_k: int = 16
    match_threshold: float = 0.8
    write_threshold: float = 0.5

    @property
    def num_markers(self) -> int:
        return len(MARKER_NAMES)

    @property
    def query_marker(self) -> int:
        return QUERY

    @property
    def no_value(self) -> int:
        """The value id of the question token (it carries no value)."""
        return self.num_values

    def validate(self) -> None:
        for name in ("num_keys", "num_values", "d_model", "n_layers", "n_heads", "mlp_hidden", "chunk_size",
                     "key_dim", "value_dim", "answer_hidden", "num_slots", "read_top_k", "fallback_top_k"):
            check_positive_int(name, getattr(self, name))
        if self.d_model % self.n_heads:
            raise ConfigError(f"n_heads: {self.n_heads} does not divide d_model {self.d_model}")
        if self.read_top_k > self.num_slots:
            raise ConfigError(f"read_top_k: {self.read_top_k} exceeds num_slots {self.num_slots}")
        for name in ("match_threshold", "write_threshold"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise ConfigError(f"{name}: must lie in (0, 1), got {value!r}")


# --------------------------------------------------------------------------- DeltaNet token mixing
def delta_rule_outputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                       chunk_size: int, carry_state: bool = True) -> torch.Tensor:
    """Per-token outputs ``o_t = S_t q_t`` of ``S_t = S_{t-1} + b_t (v_t - S_{t-1} k_t) k_t^T``, chunkwise.

    q, k [B, H, T, dk], v [B, H, T, dv], beta [B, H, T] -> [B, H, T, dv]. Inside a chunk
    ``S_j = S_0 + sum_{i<=j} u_i k_i^T`` with ``u = (I + A)^-1 (diag(b) V - diag(b) K S_0^T)``,
    ``A_ji = b_j k_j.k_i`` (i < j), so ``o_j = S_0 q_j + sum_{i<=j} (k_i.q_j) u_i``: two matmuls per
    chunk in the sequential loop, the triangular solve for all chunks at once (as in
    ``memadapter.fast_state._base.chunked_delta_rule``, which returns only the final state).
    Padding tokens (k = v = b = 0) are identity steps. :func:`delta_rule_outputs_reference` is the loop.
    ``carry_state=False`` restarts the state at every chunk (a bounded window, no sequential loop).
    """
    B, H, T, dk = k.shape
    dv = v.shape[-1]
    C = chunk_size
    pad = (-T) % C
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        beta = F.pad(beta, (0, pad))
    N = (T + pad) // C
    qc = q.reshape(B, H, N, C, dk)  # [B, H, N, C, dk]
    kc = k.reshape(B, H, N, C, dk)
    vc = v.reshape(B, H, N, C, dv)  # [B, H, N, C, dv]
    bc = beta.reshape(B, H, N, C)  # [B, H, N, C]
    strict = torch.ones(C, C, dtype=torch.bool, device=k.device).tril(-1)
    a_mat = (bc[..., :, None] * (kc @ kc.transpose(-1, -2))).masked_fill(~strict, 0.0)  # [B, H, N, C, C]
    rhs = torch.cat([bc[..., None] * kc, bc[..., None] * vc], dim=-1)  # [B, H, N, C, dk + dv]
    sol = torch.linalg.solve_triangular(a_mat, rhs, upper=False, unitriangular=True)
    w, u_free = sol.split([dk, dv], dim=-1)
    causal = torch.ones(C, C, dtype=torch.bool, device=k.device).tril()
    qk = (qc @ kc.transpose(-1, -2)).masked_fill(~causal, 0.0)  # [B, H, N, C, C], i <= j
    if not carry_state:  # S_0 = 0 in every chunk: u = u_free
        return (qk @ u_free).reshape(B, H, N * C, dv)[:, :, :T]
    s = q.new_zeros(B, H, dv, dk)
    outs = []
    for n in range(N):
        u = u_free[:, :, n] - w[:, :, n] @ s.transpose(-1, -2)  # [B, H, C, dv]
        outs.append(qc[:, :, n] @ s.transpose(-1, -2) + qk[:, :, n] @ u)
        s = s + u.transpose(-1, -2) @ kc[:, :, n]  # [B, H, dv, dk]
    return torch.cat(outs, dim=2)[:, :, :T]  # [B, H, T, dv]


def delta_rule_outputs_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                                 window: Optional[int] = None) -> torch.Tensor:
    """The same outputs one token at a time (the plain recurrence; for tests); ``window``: restart
    the state every ``window`` tokens."""
    B, H, T, dk = k.shape
    s = q.new_zeros(B, H, v.shape[-1], dk)
    outs = []
    for t in range(T):
        if window is not None and t % window == 0:
            s = torch.zeros_like(s)
        kt, vt, bt = k[:, :, t], v[:, :, t], beta[:, :, t, None]  # [B, H, dk], [B, H, dv], [B, H, 1]
        pred = (s @ kt[..., None])[..., 0]
        s = s + (bt * (vt - pred))[..., None] * kt[..., None, :]
        outs.append((s @ q[:, :, t, :, None])[..., 0])
    return torch.stack(outs, dim=2)


class DeltaNetMixer(nn.Module):
    """Multi-head DeltaNet token mixing: unit keys and queries, a learned write strength per head."""

    def __init__(self, d_model: int, n_heads: int, chunk_size: int, carry_state: bool = False) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.chunk_size = n_heads, d_model // n_heads, chunk_size
        self.carry_state = carry_state
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.beta = nn.Linear(d_model, n_heads)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, reference: bool = False) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, hd]
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        beta = torch.sigmoid(self.beta(x)).transpose(1, 2)  # [B, H, T]
        window = None if self.carry_state else self.chunk_size
        o = delta_rule_outputs_reference(q, k, v, beta, window) if reference else \
            delta_rule_outputs(q, k, v, beta, self.chunk_size, self.carry_state)
        return self.out(o.transpose(1, 2).reshape(B, T, D))  # [B, T, D]


class Block(nn.Module):
    """Pre-norm residual block: DeltaNet mixing then an MLP."""

    def __init__(self, cfg: NativeLMConfig) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(cfg.d_model), nn.RMSNorm(cfg.d_model)
        self.mix = DeltaNetMixer(cfg.d_model, cfg.n_heads, cfg.chunk_size, cfg.carry_state)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.mlp_hidden), nn.GELU(), nn.Linear(cfg.mlp_hidden, cfg.d_model))

    def forward(self, x: torch.Tensor, reference: bool = False) -> torch.Tensor:
        x = x + self.mix(self.norm1(x), reference)
        return x + self.mlp(self.norm2(x))


# --------------------------------------------------------------------------- sparse fallback
def sparse_fallback(query: torch.Tensor, summaries: torch.Tensor, values: torch.Tensor, top_k: int,
                    scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k read over past events: query [B, ds], summaries [B, T, ds], values [B, T, dv].

    Scores are ``scale * cos(query, summary)``; only the top-k events get softmax weight.
    Returns (readout [B, dv], indices [B, k]). :func:`sparse_fallback_reference` is the loop.
    """
    scores = scale * torch.einsum("bd,btd->bt", F.normalize(query, dim=-1), F.normalize(summaries, dim=-1))
    k = min(top_k, scores.shape[1])
    top, idx = scores.topk(k, dim=-1, sorted=True)  # [B, k]
    weights = torch.softmax(top, dim=-1)
    picked = values.gather(1, idx[..., None].expand(-1, -1, values.shape[-1]))  # [B, k, dv]
    return (weights[..., None] * picked).sum(1), idx


def sparse_fallback_reference(query: torch.Tensor, summaries: torch.Tensor, values: torch.Tensor, top_k: int,
                              scale: float) -> torch.Tensor:
    """Plain loops over rows and events, float64."""
    out = []
    for b in range(query.shape[0]):
        q = [float(x) for x in query[b]]
        qn = math.sqrt(sum(x * x for x in q))
        scored = []
        for t in range(summaries.shape[1]):
            s = [float(x) for x in summaries[b, t]]
            cos = sum(a * c for a, c in zip(q, s)) / (qn * math.sqrt(sum(x * x for x in s)))
            scored.append((scale * cos, t))
        top = sorted(scored, key=lambda st: -st[0])[:top_k]
        m = max(s for s, _ in top)
        ws = [math.exp(s - m) for s, _ in top]
        z = sum(ws)
        row = [sum(w / z * float(values[b, t, j]) for w, (_, t) in zip(ws, top)) for j in range(values.shape[2])]
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


# --------------------------------------------------------------------------- the model
@dataclass
class EventEncoding:
    """What the backbone and heads produce for a stream: events are positions [0, T), the query T."""

    hidden: torch.Tensor  # [B, T + 1, d]
    mem_keys: torch.Tensor  # [B, T, dk]
    mem_values: torch.Tensor  # [B, T, dv]
    p_write: torch.Tensor  # [B, T]
    write_logits: torch.Tensor  # [B, T]
    summaries: torch.Tensor  # [B, T, dk]
    query_key: torch.Tensor  # [B, dk]
    query_summary: torch.Tensor  # [B, dk]


@dataclass
class NativeOutput:
    """Answer logits [B, V] with the routing decision (gate [B] in [0, 1], 1 = memory branch).

    The hard path also fills ``writes`` [B] (state-changing SlotMemory actions per stream),
    ``write_result`` and ``memory``.
    """

    logits: torch.Tensor
    gate: torch.Tensor
    encoding: EventEncoding
    writes: Optional[torch.Tensor] = None
    write_result: Optional[WriteResult] = None
    memory: Optional[SlotMemory] = None


class NativeMemoryLM(nn.Module):
    """Causal event-token LM with fast state, soft/hard slot memory, sparse fallback and router.

    Example:
        >>> import torch
        >>> model = NativeMemoryLM(NativeLMConfig())
        >>> 2.5e6 < sum(p.numel() for p in model.parameters()) < 3.0e6
        True
        >>> m = torch.tensor([[WRITE, NONE, QUERY]]); k = torch.tensor([[3, 5, 3]]); v = torch.tensor([[7, 9, 256]])
        >>> out = model.forward_hard(m, k, v)
        >>> out.logits.shape, out.writes.shape
        (torch.Size([1, 256]), torch.Size([1]))
    """

    def __init__(self, config: Optional[NativeLMConfig] = None) -> None:
        super().__init__()
        cfg = config or NativeLMConfig()
        if not isinstance(cfg, NativeLMConfig):
            raise DTypeError(f"config: expected a NativeLMConfig, got {type(cfg).__name__}")
        cfg.validate()
        self.config = cfg
        d = cfg.d_model
        self.marker_emb = nn.Embedding(cfg.num_markers, d)
        self.key_emb = nn.Embedding(cfg.num_keys, d)
        self.value_emb = nn.Embedding(cfg.num_values + 1, d)  # + NO_VALUE for the question
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.RMSNorm(d)
        # Memory keys and sparse summaries read the event's key field: the same entity maps to the
        # same key wherever it occurs, which is what lets the slot memory match and overwrite.
        self.mem_key = nn.Linear(d, cfg.key_dim, bias=False)
        self.summary = nn.Linear(d, cfg.key_dim, bias=False)
        self.mem_value = nn.Linear(d, cfg.value_dim)
        self.write_head = nn.Sequential(nn.Linear(d, 64), nn.GELU(), nn.Linear(64, 1))
        self.fallback_scale = nn.Parameter(torch.tensor(10.0))
        # The answer is scored against the value embeddings (tied): one readout->embedding map serves
        # every value id, so it is learned from all answers instead of from the few of each class.
        self.answer_skip = nn.Linear(cfg.value_dim, d)
        self.answer = nn.Sequential(nn.Linear(cfg.value_dim + d, cfg.answer_hidden), nn.GELU(),
                                    nn.Linear(cfg.answer_hidden, d))
        self.answer_bias = nn.Parameter(torch.zeros(cfg.num_values))

    def slot_config(self) -> SoftSlotConfig:
        return SoftSlotConfig(match_threshold=self.config.match_threshold, write_threshold=self.config.write_threshold)

    def new_memory(self, batch_size: int) -> SlotMemory:
        """An empty hard memory with the thresholds the soft path is trained with."""
        c = self.config
        return SlotMemory(c.num_slots, c.key_dim, c.value_dim, batch_size=batch_size,
                          match_threshold=c.match_threshold, write_threshold=c.write_threshold,
                          device=self.marker_emb.weight.device)

    def _check_stream(self, markers, keys, values) -> None:
        c = self.config
        for name, x, hi in (("markers", markers, c.num_markers), ("keys", keys, c.num_keys),
                            ("values", values, c.num_values + 1)):
            if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.dtype == torch.bool:
                raise DTypeError(f"{name}: expected an integer tensor, got {getattr(x, 'dtype', type(x).__name__)}")
            if x.dim() != 2 or x.shape != markers.shape:
                raise ShapeError(f"{name}: expected shape [B, T + 1] like markers {tuple(markers.shape)}, "
                                 f"got {tuple(x.shape)}")
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= hi):
                raise ConfigError(f"{name}: ids must lie in [0, {hi}), got [{int(x.min())}, {int(x.max())}]")
        if markers.shape[1] < 2:
            raise ShapeError(f"markers: need at least one event and the question, got shape {tuple(markers.shape)}")
        if bool((markers[:, -1] != QUERY).any()) or bool((markers[:, :-1] == QUERY).any()):
            raise ConfigError("markers: the last position (and only it) must be the QUERY marker")

    def encode(self, markers: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               reference: bool = False) -> EventEncoding:
        """Run the backbone and heads over ``[B, T + 1]`` field ids (last position: the question)."""
        self._check_stream(markers, keys, values)
        key_field = self.key_emb(keys)  # [B, T + 1, d]
        x = self.marker_emb(markers) + key_field + self.value_emb(values)
        for block in self.blocks:
            x = block(x, reference)
        h = self.final_norm(x)
        ev = h[:, :-1]
        logits = self.write_head(ev)[..., 0]  # [B, T]
        mk, sm = self.mem_key(key_field), self.summary(key_field)
        return EventEncoding(hidden=h, mem_keys=mk[:, :-1], mem_values=self.mem_value(ev), p_write=torch.sigmoid(logits),
                             write_logits=logits, summaries=sm[:, :-1], query_key=mk[:, -1], query_summary=sm[:, -1])

    def _answer(self, enc: EventEncoding, mem_read: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        fallback, _ = sparse_fallback(enc.query_summary, enc.summaries, enc.mem_values,
                                      self.config.fallback_top_k, self.fallback_scale)
        routed = gate[:, None] * mem_read + (1 - gate[:, None]) * fallback  # [B, dv]
        u = self.answer_skip(routed) + self.answer(torch.cat([routed, enc.hidden[:, -1]], dim=-1))  # [B, d]
        scores = u @ self.value_emb.weight[: self.config.num_values].T  # [B, V]
        return scores / math.sqrt(self.config.d_model) + self.answer_bias

    def forward_soft(self, markers: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, *,
                     temperature: float) -> NativeOutput:
        """Training path: the soft slot relaxation at ``temperature``; the router gate is a sigmoid."""
        enc = self.encode(markers, keys, values)
        B, T, _ = enc.mem_keys.shape
        cfg = self.slot_config()
        state = SoftSlotState.empty(B, self.config.num_slots, self.config.key_dim, self.config.value_dim,
                                    dtype=enc.mem_values.dtype, device=enc.mem_values.device)
        for t in range(T):  # events are written in stream order: overwrite semantics depend on it
            state, _ = soft_write(state, enc.mem_keys[:, t], enc.mem_values[:, t], enc.p_write[:, t],
                                  config=cfg, temperature=temperature)
        read, _, state = soft_read(state, enc.query_key, top_k=self.config.read_top_k, config=cfg,
                                   temperature=temperature, update_usage=False)
        q = F.normalize(enc.query_key, dim=-1)
        sims = torch.einsum("bmd,bd->bm", state.keys, q) - (1 - state.occupied) * 4.0  # free slots never match
        gate = torch.sigmoid((sims.max(dim=-1).values - cfg.match_threshold) / temperature)
        return NativeOutput(logits=self._answer(enc, read[:, 0], gate), gate=gate, encoding=enc)

    @torch.no_grad()
    def forward_hard(self, markers: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> NativeOutput:
        """Evaluation path: every event goes to a 32-slot SlotMemory with the model's own p_write
        (no labels, no event types); the router takes the memory branch when a slot key matches."""
        enc = self.encode(markers, keys, values)
        mem = self.new_memory(enc.mem_keys.shape[0])
        result = mem.write(enc.mem_keys, enc.mem_values, enc.p_write.clamp(0.0, 1.0))
        best, _ = mem.match(enc.query_key)  # [B, 1]
        gate = (best[:, 0] >= self.config.match_threshold).to(enc.mem_values.dtype)
        read = mem.read(enc.query_key, top_k=self.config.read_top_k, update_usage=False).readout[:, 0]
        return NativeOutput(logits=self._answer(enc, read, gate), gate=gate, encoding=enc,
                            writes=result.num_writes, write_result=result, memory=mem)
