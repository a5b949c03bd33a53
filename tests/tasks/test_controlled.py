"""Task generators: seeded determinism, consistent labels, lazy chunking, typed errors."""

import pytest
import torch

from memadapter.errors import ConfigError, DTypeError
from memadapter.tasks.controlled import TASKS, generate
from memadapter.tasks.vocab import ASIDE, Codebook

CB = Codebook(dim=32, num_keys=128, num_values=128, num_filler=256, seed=3)


def _answer_from_tokens(tokens: list[int], key: int, at: int) -> int:
    """Re-derive a label by reading the stream: the value after the key's latest non-aside mention."""
    answer = None
    for i in range(at - 1):
        if tokens[i] == key and (i == 0 or tokens[i - 1] != ASIDE):
            answer = tokens[i + 1]
    return answer


@pytest.mark.parametrize("task", sorted(TASKS))
def test_deterministic_under_seed_and_seed_changes_stream(task):
    a, b = generate(task, 3, 512, 7, CB), generate(task, 3, 512, 7, CB)
    assert torch.equal(a.materialize(), b.materialize())
    assert torch.equal(a.answers, b.answers) and torch.equal(a.queries, b.queries)
    c = generate(task, 3, 512, 8, CB)
    assert not torch.equal(a.materialize(), c.materialize())


@pytest.mark.parametrize("task", sorted(TASKS))
def test_labels_agree_with_the_stream(task):
    batch = generate(task, 6, 1024, 1, CB)
    tokens = batch.materialize().tolist()
    for b in range(batch.batch_size):
        for j, at in enumerate(batch.query_at):
            key, ans = int(batch.queries[b, j]), int(batch.answers[b, j])
            assert CB.value_base <= ans < CB.filler_base
            assert _answer_from_tokens(tokens[b], key, at) == ans


def test_versioning_answer_is_the_latest_of_several_versions():
    batch = generate("temporal_versioning", 4, 1024, 0, CB)
    tokens = batch.materialize()
    for b in range(4):
        key = int(batch.queries[b, 0])
        mentions = (tokens[b, :-1] == key).nonzero().flatten()
        assert len(mentions) == TASKS["temporal_versioning"]["versions"]
        assert int(tokens[b, mentions[-1] + 1]) == int(batch.answers[b, 0])
        assert int(tokens[b, mentions[0] + 1]) != int(batch.answers[b, 0])


def test_events_never_overlap_and_filler_is_filler():
    batch = generate("distractor_pollution", 4, 2048, 0, CB)
    for row in batch.event_pos:
        pos = row[row >= 0]
        assert pos.unique().numel() == pos.numel()
    x = batch.materialize()
    n_events = int((batch.event_pos >= 0).sum())
    assert int((x < CB.filler_base).sum()) == n_events


@pytest.mark.parametrize("size", [1, 7, 512, 1000])
def test_chunks_concatenate_to_the_stream_whatever_the_size(size):
    batch = generate("overwrite_facts", 2, 1024, 0, CB)
    assert torch.equal(torch.cat(list(batch.chunks(0, 1024, size)), dim=1), batch.materialize())


def test_uniform_recall_has_no_markers():
    batch = generate("uniform_recall", 4, 512, 0, CB)
    assert not bool(CB.is_marker(batch.materialize()).any())


def test_streaming_queries_are_asked_mid_stream():
    batch = generate("streaming_qa", 2, 1024, 0, CB)
    assert batch.query_at == [256, 512, 768, 1024] and batch.answers.shape == (2, 4)


def test_bad_inputs_raise_typed_errors():
    with pytest.raises(ConfigError, match="task"):
        generate("nope", 2, 512, 0, CB)
    with pytest.raises(ConfigError, match="params"):
        generate("associative_recall", 2, 512, 0, CB, bogus=1)
    with pytest.raises(ConfigError, match="length"):
        generate("associative_recall", 2, 32, 0, CB, facts=16)
    with pytest.raises(DTypeError, match="batch_size"):
        generate("associative_recall", 2.0, 512, 0, CB)
    with pytest.raises(ConfigError, match="start/end"):
        generate("associative_recall", 2, 512, 0, CB).chunk(10, 600)
    with pytest.raises(ConfigError, match="lookalike_cos"):
        Codebook(lookalike_cos=1.0)


def test_codebook_lookalikes_sit_below_the_match_threshold():
    keys = CB.embed(torch.arange(CB.key_base, CB.lookalike_base))
    looks = CB.embed(torch.arange(CB.lookalike_base, CB.value_base))
    assert torch.allclose((keys * looks).sum(-1), torch.full((CB.num_keys,), 0.7), atol=1e-5)
    assert torch.allclose(CB.embeddings.norm(dim=-1), torch.ones(CB.size), atol=1e-5)
