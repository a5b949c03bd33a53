"""The seven target properties of the paper's section 2.5, checked on SlotMemory with hypothesis.

Keys are built from orthonormal directions so that "independent" and "paraphrase" mean something
exact: independent keys have cosine 0, paraphrases are within a drawn noise of their entity.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings, strategies as st

from memadapter.slots import AUX_CONFLICT, EventType, SlotMemory, WriteAction

D = 16
SETTINGS = settings(max_examples=25, deadline=None)


def basis(seed: int) -> torch.Tensor:
    """[D, D] random orthonormal rows."""
    return torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(seed)))[0]


def perturb(x: torch.Tensor, scale: float, g: torch.Generator) -> torch.Tensor:
    """x plus noise of norm `scale` in a random direction (x is unit norm)."""
    noise = torch.randn(x.shape, generator=g)
    return x + scale * noise / noise.norm(dim=-1, keepdim=True)


def write1(mem: SlotMemory, k: torch.Tensor, v: torch.Tensor, **kw) -> tuple[WriteAction, int]:
    res = mem.write(k.view(1, 1, -1), v.view(1, 1, -1), **kw)
    return WriteAction(int(res.action[0, 0])), int(res.slot[0, 0])


@SETTINGS
@given(seed=st.integers(0, 10_000), entities=st.integers(2, 6), noise=st.floats(0.0, 0.3),
       paraphrases=st.integers(1, 4))
def test_key_consistency(seed: int, entities: int, noise: float, paraphrases: int) -> None:
    """Paraphrased (perturbed) keys land in their entity's slot; independent keys do not."""
    P, g = basis(seed), torch.Generator().manual_seed(seed)
    mem = SlotMemory(8, D, D)
    slot_of = {e: write1(mem, P[e], P[8 + e])[1] for e in range(entities)}
    assert len(set(slot_of.values())) == entities
    for _ in range(paraphrases):
        for e in range(entities):
            para = perturb(P[e], noise, g)
            assert int(mem.match(para[None])[1][0, 0]) == slot_of[e]
            assert write1(mem, para, P[8 + e]) == (WriteAction.REINFORCED, slot_of[e])
    action, slot = write1(mem, P[entities], P[15])  # an independent key
    assert action == WriteAction.ALLOCATED and slot not in slot_of.values()


@SETTINGS
@given(seed=st.integers(0, 10_000), versions=st.lists(st.integers(0, 5), min_size=2, max_size=8),
       explicit=st.lists(st.booleans(), min_size=8, max_size=8))
def test_version_monotonicity(seed: int, versions: list, explicit: list) -> None:
    """A newer, incompatible value supersedes the old one (no averaging); version never decreases."""
    P = basis(seed)
    mem = SlotMemory(4, D, D)
    write1(mem, P[0], P[8 + versions[0]])
    for i, vi in enumerate(versions[1:]):
        before = int(mem.version[0, 0])
        old_value = mem.values[0, 0].clone()
        event = torch.tensor([[EventType.UPDATE if explicit[i] else -1]])
        action, slot = write1(mem, perturb(P[0], 0.1, torch.Generator().manual_seed(i)), P[8 + vi], event=event)
        assert slot == 0 and int(mem.version[0, 0]) >= before
        if action == WriteAction.OVERWRITTEN:
            assert int(mem.version[0, 0]) == before + 1
            assert torch.equal(mem.values[0, 0], P[8 + vi])  # the newer value, not a mix
        else:  # only a repeat of the current value may reinforce instead
            assert action == WriteAction.REINFORCED and torch.allclose(old_value, P[8 + vi])
        read = mem.read(P[0][None], top_k=1)
        assert torch.allclose(read.values[0, 0, 0], mem.values[0, 0])


@SETTINGS
@given(seed=st.integers(0, 10_000), n_protected=st.integers(1, 4), n_distractors=st.integers(1, 40))
def test_distractor_stability(seed: int, n_protected: int, n_distractors: int) -> None:
    """Irrelevant additions (look-alikes with other values, new high-salience keys) never corrupt or
    evict protected slots."""
    P, g = basis(seed), torch.Generator().manual_seed(seed)
    mem = SlotMemory(4, D, D)
    for e in range(n_protected):
        write1(mem, P[e], P[8 + e], protect=torch.tensor([[True]]))
    keep = mem.snapshot()
    for _ in range(n_distractors):
        e = int(torch.randint(0, 8, (1,), generator=g))
        key = perturb(P[e], 0.2, g) if e < n_protected else P[e] + 0.5 * P[(e + 1) % 8]
        value = perturb(P[8 + (e + 3) % 8], 0.3, g)
        write1(mem, key, value, importance=torch.tensor([[1.0]]))
    for name in ("keys", "values", "version", "confidence", "occupied", "protected"):
        assert torch.equal(getattr(mem, name)[0, :n_protected], keep[name][0, :n_protected]), name
    assert int(mem.occupied.sum()) <= 4


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n_writes=st.integers(0, 48), top_k=st.integers(1, 6),
       n_queries=st.integers(1, 3))
def test_bounded_activation(seed: int, n_writes: int, top_k: int, n_queries: int) -> None:
    """The active read set never exceeds top_k, however many writes happened (up to 8x capacity)."""
    g = torch.Generator().manual_seed(seed)
    mem = SlotMemory(6, D, D, batch_size=2)
    if n_writes:
        mem.write(torch.randn(2, n_writes, D, generator=g), torch.randn(2, n_writes, D, generator=g))
    res = mem.read(torch.randn(2, n_queries, D, generator=g), top_k=top_k)
    active = res.valid.sum(dim=-1)  # [B, Q]
    assert res.indices.shape[-1] == top_k and bool((active <= top_k).all())
    assert bool((active == min(top_k, n_writes, 6)).all())  # and it is exactly K once K slots exist
    assert bool((res.weights[~res.valid] == 0).all())
    if n_writes:
        assert torch.allclose(res.weights.sum(-1), torch.ones(2, n_queries))
    assert int(mem.occupied.sum(dim=1).max()) <= 6


@SETTINGS
@given(seed=st.integers(0, 10_000), similarity=st.floats(0.0, 0.7), value_overlap=st.floats(0.0, 0.3))
def test_conflict_separability(seed: int, similarity: float, value_overlap: float) -> None:
    """Same key + contradicting value is a conflict (overwrite); a different but semantically similar
    key is a separate fact (new slot), even when its value resembles the first one."""
    P = basis(seed)
    mem = SlotMemory(4, D, D)
    write1(mem, P[0], P[8])
    # different key with cosine `similarity` to the first one (below the 0.8 match threshold)
    near = similarity * P[0] + (1 - similarity**2) ** 0.5 * P[1]
    action, slot = write1(mem, near, P[8] + 0.05 * P[9])
    assert action == WriteAction.ALLOCATED and slot == 1
    contradiction = value_overlap * P[8] + P[10]  # cos with P[8] <= 0.29 < value_threshold
    action, slot = write1(mem, P[0], contradiction)
    assert (action, slot) == (WriteAction.OVERWRITTEN, 0)
    assert int(mem.version[0, 0]) == 2 and int(mem.version[0, 1]) == 1
    assert float(mem.aux[0, 0, AUX_CONFLICT]) > 0.5 and float(mem.aux[0, 1, AUX_CONFLICT]) == 0.0
    assert torch.allclose(mem.values[0, 1], P[8] + 0.05 * P[9])  # the similar key's fact is untouched


@SETTINGS
@given(seed=st.integers(0, 10_000), stored=st.integers(1, 6), noise=st.floats(0.0, 0.2))
def test_calibrated_abstention(seed: int, stored: int, noise: float) -> None:
    """Stored keys (and their paraphrases) match above the threshold; unseen keys and ambiguous blends
    of two stored keys stay below it, so the caller falls back to sparse retrieval."""
    P, g = basis(seed), torch.Generator().manual_seed(seed)
    mem = SlotMemory(8, D, D)
    for e in range(stored):
        write1(mem, P[e], P[8 + e])
    thr = mem.match_threshold
    seen = perturb(P[:stored], noise, g)
    assert bool((mem.match(seen[None])[0] >= thr).all())
    unseen = P[stored:stored + 4] + 0.3 * P[8:12]  # outside the span of stored keys
    assert bool((mem.match(unseen[None])[0] < thr).all())
    if stored >= 2:
        blend = (P[0] + P[1])[None]  # cosine 0.71 with both: uncertain, must abstain
        assert float(mem.match(blend)[0][0, 0]) < thr
    empty = SlotMemory(8, D, D)
    assert float(empty.match(P[:1])[0][0, 0]) < thr  # nothing stored: always fall back


@SETTINGS
@given(seed=st.integers(0, 10_000), repeats=st.integers(3, 15), noise=st.floats(0.0, 0.1),
       alpha=st.sampled_from([None, 0.2, 0.5, 1.0]))
def test_piecewise_stability(seed: int, repeats: int, noise: float, alpha) -> None:
    """Repeated evidence: the slot keeps its assignment and its value converges (exact running mean,
    or ||v_t - mu|| = ||v_T - mu|| (1 - alpha)^t); no evidence: nothing moves; an explicit newer
    version: one bounded jump, then a new stable segment."""
    P, g = basis(seed), torch.Generator().manual_seed(seed)
    mem = SlotMemory(4, D, D, alpha=alpha)
    mu, mu_new = P[8], P[9]
    start = perturb(mu, 0.2, g)
    write1(mem, P[0], start)
    observations = [start]
    for _ in range(repeats):
        x = mu if alpha is not None else perturb(mu, noise, g)
        observations.append(x)
        assert write1(mem, P[0], x) == (WriteAction.REINFORCED, 0)
    if alpha is None:  # alpha_t = 1/(hits+1): sum alpha = inf, the value is the exact mean
        assert torch.allclose(mem.values[0, 0], torch.stack(observations).mean(0), atol=1e-5)
    else:
        expect = float((start - mu).norm()) * (1 - alpha) ** repeats
        assert abs(float((mem.values[0, 0] - mu).norm()) - expect) < 1e-5
    quiet = mem.snapshot()
    mem.read(P[3][None], top_k=1, update_usage=False)
    write1(mem, P[5], P[12], p_write=torch.tensor([[0.1]]))  # no relevant evidence
    for name in ("keys", "values", "version", "confidence", "occupied"):
        assert torch.equal(getattr(mem, name), quiet[name]), name
    before = mem.values[0, 0].clone()
    assert write1(mem, P[0], mu_new, event=torch.tensor([[EventType.UPDATE]])) == (WriteAction.OVERWRITTEN, 0)
    jump = float((mem.values[0, 0] - before).norm())
    assert jump <= float((mu_new - mu).norm()) + 0.2 + 1e-5  # bounded by the version gap plus noise
    steps = []
    for _ in range(4):  # new segment: same slot, shrinking (or zero) moves
        prev = mem.values[0, 0].clone()
        assert write1(mem, P[0], perturb(mu_new, noise, g)) == (WriteAction.REINFORCED, 0)
        steps.append(float((mem.values[0, 0] - prev).norm()))
    assert int(mem.version[0, 0]) == 2 and max(steps) <= 2 * noise + 1e-6  # alpha_t * |x - v|
