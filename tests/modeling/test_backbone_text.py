"""Text through the frozen backbone (modeling/backbone_text.py): padded id rows, the read layer's
hidden states, and encode_text's key / value vectors."""

import torch
from conftest import PAD_ID, build, tiny_backbone


def test_right_pad_keeps_each_row_at_its_start(tokenizer):
    model = build(tiny_backbone("llama"), tokenizer)
    ids, mask = model._right_pad([[5, 6, 7], [8]])
    assert ids.tolist() == [[5, 6, 7], [8, PAD_ID, PAD_ID]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_encode_text_gives_unit_keys_and_values_that_ignore_padding(tokenizer):
    model = build(tiny_backbone("llama"), tokenizer)
    keys = model.encode_text(["alice lives in paris", "bob"], "key")
    assert keys.shape == (2, model.config.key_dim)
    torch.testing.assert_close(keys.norm(dim=-1), torch.ones(2), rtol=0, atol=1e-5)
    values = model.encode_text(["alice lives in paris", "bob"], "value")
    alone = model.encode_text(["bob"], "value")  # the short row was padded beside the long one
    assert values.shape == (2, model.config.value_dim)
    torch.testing.assert_close(values[1:], alone, rtol=0, atol=1e-5)


def test_decode_without_a_tokenizer_writes_ids_as_words(tokenizer):
    model = build(tiny_backbone("llama"), tokenizer)
    model.tokenizer = None
    assert model._decode([12, 7]) == "12 7"
