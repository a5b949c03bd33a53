"""Hostile input to the model's entry points: new_memory, ingest, generate, forward, select, encode_text.

One tiny model (llama, hidden 64, vocab 1000) and its memories are shared by the whole module;
every case is rejected before the backbone runs, so the module takes seconds.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hostile_helpers import expect_rejected, filled_memory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memadapter._validate import MAX_SIZES
from memadapter.errors import CapacityError, ConfigError, DTypeError, EmptyInputError, ShapeError
from tests.modeling.conftest import STREAM, VOCAB_SIZE, build, tiny_backbone, tiny_tokenizer

V = VOCAB_SIZE
Q = torch.tensor([[10, 11, 12, 20]])  # a question of 4 in-vocabulary ids, batch 1
ONES = torch.ones_like(Q)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return build(tiny_backbone("llama"), tok)


@pytest.fixture(scope="module")
def memory(model):
    mem = model.new_memory()
    model.ingest(mem, STREAM)
    return mem


@pytest.fixture(scope="module")
def memory2(model):
    mem = model.new_memory(batch_size=2)
    model.ingest(mem, [STREAM, "bob lives in rome"])
    return mem


def _ids(*rows):
    return torch.tensor(rows)


NEW_MEMORY = [
    ("batch_size 0", 0, CapacityError),
    ("batch_size -1", -1, CapacityError),
    ("batch_size float", 1.5, DTypeError),
    ("batch_size bool", True, DTypeError),
    ("batch_size str", "2", DTypeError),
    ("batch_size 1e6", 10**6, CapacityError),
]


@pytest.mark.parametrize("batch_size,error", [c[1:] for c in NEW_MEMORY], ids=[c[0] for c in NEW_MEMORY])
def test_new_memory_rejects(model, batch_size, error):
    expect_rejected(lambda: model.new_memory(batch_size), error, "batch_size", model)


@pytest.mark.parametrize("field,value,arg", [
    ("num_slots", 10**8, "num_slots"),  # a config edited after validation: the memory checks again
    ("key_dim", 10**7, "key_dim"),
    ("num_slots", MAX_SIZES["num_slots"], "num_slots"),  # within bounds, too big together: memory check
])
def test_new_memory_refuses_sizes_beyond_bounds_or_memory(model, field, value, arg):
    def call():
        sizes = {"key_dim": MAX_SIZES["key_dim"], "value_dim": MAX_SIZES["value_dim"]} if value == MAX_SIZES[field] else {}
        with mock.patch.multiple(model.config, **{field: value, **sizes}):
            model.new_memory(8)
    expect_rejected(call, CapacityError, arg, model)


def test_new_memory_is_checked_against_the_available_memory(model):
    with mock.patch("memadapter._validate.available_memory_bytes", return_value=10_000):
        expect_rejected(lambda: model.new_memory(64), CapacityError, "batch_size", model)


INGEST = [  # (case id, text_or_ids, extra keyword arguments, error, argument)
    ("int", 5, {}, DTypeError, "text_or_ids"),
    ("list of ints", [10, 11], {}, DTypeError, "text_or_ids"),
    ("dict", {"text": "alice"}, {}, DTypeError, "text_or_ids"),
    ("mixed list", ["alice", 3], {}, DTypeError, "text_or_ids"),
    ("float ids", torch.tensor([[10.0, 11.0]]), {}, DTypeError, "text_or_ids"),
    ("bool ids", torch.tensor([[True, False]]), {}, DTypeError, "text_or_ids"),
    ("complex ids", torch.tensor([[1 + 0j]]), {}, DTypeError, "text_or_ids"),
    ("id = vocab", _ids([10, V]), {}, CapacityError, "text_or_ids"),
    ("id >> vocab", _ids([10, 2**40]), {}, CapacityError, "text_or_ids"),
    ("negative id", _ids([10, -1]), {}, CapacityError, "text_or_ids"),
    ("1-D id out of vocab", torch.tensor([V + 5]), {}, CapacityError, "text_or_ids"),
    ("3-D ids", torch.ones(1, 2, 2, dtype=torch.long), {}, ShapeError, "text_or_ids"),
    ("empty ids", torch.zeros(1, 0, dtype=torch.long), {}, EmptyInputError, "text_or_ids"),
    ("empty 1-D ids", torch.zeros(0, dtype=torch.long), {}, EmptyInputError, "text_or_ids"),
    ("two rows for one", _ids([10], [11]), {}, ShapeError, "text_or_ids"),
    ("two texts for one", ["alice", "bob"], {}, ShapeError, "text_or_ids"),
    ("empty text", "", {}, EmptyInputError, "text_or_ids"),
    ("blank text", "   ", {}, EmptyInputError, "text_or_ids"),
    ("empty list", [], {}, ShapeError, "text_or_ids"),
    ("mask with text", "alice lives in rome", {"attention_mask": torch.ones(1, 4)}, ConfigError, "attention_mask"),
    ("mask shape", _ids([10, 11, 12]), {"attention_mask": torch.ones(1, 2)}, ShapeError, "attention_mask"),
    ("mask reshapeable", _ids([10, 11, 12, 13]), {"attention_mask": torch.ones(2, 2)}, ShapeError, "attention_mask"),
    ("mask list", _ids([10, 11]), {"attention_mask": [[1, 1]]}, DTypeError, "attention_mask"),
    ("mask value 2", _ids([10, 11]), {"attention_mask": torch.tensor([[1, 2]])}, CapacityError, "attention_mask"),
    ("mask negative", _ids([10, 11]), {"attention_mask": torch.tensor([[1, -1]])}, CapacityError, "attention_mask"),
    ("mask nan", _ids([10, 11]), {"attention_mask": torch.tensor([[1.0, float("nan")]])}, CapacityError,
     "attention_mask"),
    ("mask all zero", _ids([10, 11]), {"attention_mask": torch.zeros(1, 2)}, EmptyInputError, "text_or_ids"),
    ("progress str", "alice", {"progress": "yes"}, DTypeError, "progress"),
]


@pytest.mark.parametrize("data,kwargs,error,arg", [c[1:] for c in INGEST], ids=[c[0] for c in INGEST])
def test_ingest_rejects(model, memory, data, kwargs, error, arg):
    expect_rejected(lambda: model.ingest(memory, data, **kwargs), error, arg, memory, model)


@pytest.mark.parametrize("bad_memory,error", [
    (None, DTypeError),
    ("memory", DTypeError),
    (lambda m: m.slots, DTypeError),  # a SlotMemory is not a RequestMemory
    (lambda m: filled_memory(batch=1), ShapeError),  # built for other sizes (key_dim 16, index dim 16)
], ids=["None", "str", "SlotMemory", "other sizes"])
def test_ingest_rejects_the_wrong_memory(model, memory, bad_memory, error):
    bad = bad_memory(memory) if callable(bad_memory) else bad_memory
    watched = (memory, model) + ((bad,) if hasattr(bad, "snapshot") else ())
    expect_rejected(lambda: model.ingest(bad, "alice lives in rome"), error, "memory", *watched)


IDS = [  # (case id, input_ids, attention_mask, error, argument): shared by generate, forward, select
    ("ids list", [[10, 11]], None, DTypeError, "input_ids"),
    ("ids float", Q.float(), None, DTypeError, "input_ids"),
    ("ids bool", Q.bool(), None, DTypeError, "input_ids"),
    ("ids 1-D", Q[0], None, ShapeError, "input_ids"),
    ("ids 3-D", Q[None], None, ShapeError, "input_ids"),
    ("ids empty", torch.zeros(1, 0, dtype=torch.long), None, EmptyInputError, "input_ids"),
    ("id = vocab", _ids([10, V]), None, CapacityError, "input_ids"),
    ("negative id", _ids([10, -3]), None, CapacityError, "input_ids"),
    ("mask shape", Q, torch.ones(1, 3), ShapeError, "attention_mask"),
    ("mask reshapeable", Q, torch.ones(2, 2), ShapeError, "attention_mask"),
    ("mask list", Q, [[1, 1, 1, 1]], DTypeError, "attention_mask"),
    ("mask all zero", Q, torch.zeros_like(Q), EmptyInputError, "attention_mask"),
    ("mask value 3", Q, torch.tensor([[1, 1, 3, 1]]), CapacityError, "attention_mask"),
]


@pytest.mark.parametrize("ids,mask,error,arg", [c[1:] for c in IDS], ids=[c[0] for c in IDS])
def test_generate_rejects(model, memory, ids, mask, error, arg):
    expect_rejected(lambda: model.generate(ids, attention_mask=mask, memory=memory, max_new_tokens=2),
                    error, arg, memory, model)


@pytest.mark.parametrize("ids,mask,error,arg", [c[1:] for c in IDS[:9]], ids=[c[0] for c in IDS[:9]])
def test_forward_rejects(model, memory, ids, mask, error, arg):
    expect_rejected(lambda: model(ids, attention_mask=mask, memory=memory), error, arg, memory, model)


@pytest.mark.parametrize("ids,mask,error,arg", [c[1:] for c in IDS[:9]], ids=[c[0] for c in IDS[:9]])
def test_select_rejects(model, memory, ids, mask, error, arg):
    expect_rejected(lambda: model.select(memory, ids, mask), error, arg, memory, model)


def test_generate_without_memory_checks_the_ids_too(model):
    expect_rejected(lambda: model.generate(_ids([10, V + 1]), max_new_tokens=2), CapacityError, "input_ids", model)


def test_generate_checks_a_batch_of_rows_one_all_padding(model, memory2):
    ids, mask = _ids([0, 0, 10], [10, 11, 12]), torch.tensor([[0, 0, 0], [1, 1, 1]])
    err = expect_rejected(lambda: model.generate(ids, attention_mask=mask, memory=memory2, max_new_tokens=2),
                          EmptyInputError, "attention_mask", memory2, model)
    assert "row 0" in str(err)


@pytest.mark.parametrize("bad_memory,error", [
    ("memory", DTypeError),
    (lambda m, m2: m2, ShapeError),  # batch 2 for a question batch of 1
    (lambda m, m2: filled_memory(batch=1), ShapeError),  # another model's sizes
], ids=["str", "batch", "other sizes"])
@pytest.mark.parametrize("entry", ["generate", "forward", "select"])
def test_entry_points_reject_the_wrong_memory(model, memory, memory2, bad_memory, error, entry):
    bad = bad_memory(memory, memory2) if callable(bad_memory) else bad_memory
    call = {"generate": lambda: model.generate(Q, attention_mask=ONES, memory=bad, max_new_tokens=2),
            "forward": lambda: model(Q, attention_mask=ONES, memory=bad),
            "select": lambda: model.select(bad, Q, ONES)}[entry]
    watched = (memory, memory2, model) + ((bad,) if hasattr(bad, "snapshot") and bad is not memory2 else ())
    expect_rejected(call, error, "memory", *watched)


@pytest.mark.parametrize("labels,error", [
    (torch.ones(1, 3, dtype=torch.long), ShapeError),
    (Q.float(), DTypeError),
    (torch.full_like(Q, V), CapacityError),
    (torch.full_like(Q, -5), CapacityError),
    ([[1, 2, 3, 4]], DTypeError),
], ids=["shape", "float", "= vocab", "negative (not -100)", "list"])
def test_forward_rejects_bad_labels(model, memory, labels, error):
    expect_rejected(lambda: model(Q, attention_mask=ONES, labels=labels, memory=memory), error, "labels", memory, model)


ENCODE = [  # (case id, texts, kind, error, argument)
    ("texts str", "alice", "key", DTypeError, "texts"),
    ("texts empty list", [], "key", EmptyInputError, "texts"),
    ("texts int entry", ["alice", 3], "key", DTypeError, "texts"),
    ("texts empty text", ["alice", ""], "value", EmptyInputError, "texts"),
    ("texts None", None, "key", DTypeError, "texts"),
    ("kind query", ["alice"], "query", ConfigError, "kind"),
    ("kind None", ["alice"], None, ConfigError, "kind"),
]


@pytest.mark.parametrize("texts,kind,error,arg", [c[1:] for c in ENCODE], ids=[c[0] for c in ENCODE])
def test_encode_text_rejects(model, texts, kind, error, arg):
    expect_rejected(lambda: model.encode_text(texts, kind), error, arg, model)


def test_text_edits_through_the_model_encoder_reject_blank_text(model, memory):
    expect_rejected(lambda: memory.write("alice city", " "), EmptyInputError, "value_text", memory, model)
    expect_rejected(lambda: memory.forget("alice", by_key=True, threshold="high"), DTypeError, "threshold",
                    memory, model)


_SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(ids=st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=12).filter(lambda v: min(v) < 0 or max(v) >= V))
def test_out_of_vocabulary_ids_are_rejected_everywhere(model, memory, ids):
    row = torch.tensor([ids])
    expect_rejected(lambda: model.ingest(memory, row), CapacityError, "text_or_ids", memory, model)
    expect_rejected(lambda: model.generate(row, memory=memory, max_new_tokens=1), CapacityError, "input_ids",
                    memory, model)
    expect_rejected(lambda: model(row, memory=memory), CapacityError, "input_ids", memory, model)


@_SETTINGS
@given(length=st.integers(1, 8), at=st.integers(0, 7),
       value=st.sampled_from([2, -1, 5, 0.5, float("inf"), float("nan")]))
def test_masks_with_values_other_than_0_and_1_are_rejected(model, memory, length, at, value):
    ids = torch.full((1, length), 10)
    mask = torch.ones(1, length, dtype=torch.float32)
    mask[0, at % length] = value
    expect_rejected(lambda: model.ingest(memory, ids, attention_mask=mask), CapacityError, "attention_mask",
                    memory, model)
    expect_rejected(lambda: model.generate(ids, attention_mask=mask, memory=memory, max_new_tokens=1),
                    CapacityError, "attention_mask", memory, model)


@_SETTINGS
@given(rows=st.integers(1, 3), cols=st.integers(1, 6), mrows=st.integers(1, 3), mcols=st.integers(1, 6))
def test_masks_of_another_shape_are_never_reshaped(model, memory, rows, cols, mrows, mcols):
    if (rows, cols) == (mrows, mcols):
        return  # a matching mask is no hostile input
    ids, mask = torch.full((rows, cols), 10), torch.ones(mrows, mcols, dtype=torch.long)
    expect_rejected(lambda: model.generate(ids, attention_mask=mask, max_new_tokens=1), ShapeError, "attention_mask",
                    memory, model)
    if rows == 1:
        expect_rejected(lambda: model.ingest(memory, ids, attention_mask=mask), ShapeError, "attention_mask",
                        memory, model)
