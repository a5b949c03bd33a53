"""Stress scenarios: lazily generated long streams, stacked seeds."""

import pytest
import torch

from memadapter.errors import ConfigError
from memadapter.tasks.controlled import generate
from memadapter.tasks.stress import SCENARIOS, scenario_batch
from memadapter.tasks.vocab import Codebook

CB = Codebook(dim=32, num_keys=128, num_values=128, num_filler=256)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_batches_stack_seed_batches(name):
    batch = scenario_batch(name, 8192, [0, 1], 2, CB)
    assert batch.batch_size == 4 and batch.length == 8192
    task, params = SCENARIOS[name]
    second = generate(task, 2, 8192, 1, CB, **params)
    assert torch.equal(batch.chunk(4096, 4608)[2:], second.chunk(4096, 4608))
    assert torch.equal(batch.answers[2:], second.answers)


def test_events_spread_over_a_long_stream_are_found_lazily():
    batch = scenario_batch("versioning", 1 << 20, [0], 1, CB)
    part = batch.parts[0]
    last = int(part.event_pos.max())
    assert last > (1 << 19)  # events reach the second half of the stream
    window = batch.chunk(last - 10, last + 1)
    assert int(window[0, -1]) == int(part.event_tok[0, part.event_pos[0].argmax()])


def test_unknown_scenario_and_empty_seeds_raise():
    with pytest.raises(ConfigError, match="name"):
        scenario_batch("nope", 4096, [0], 1, CB)
    with pytest.raises(ConfigError, match="seeds"):
        scenario_batch("needle", 4096, [], 1, CB)
