"""A tokenizer and a small haystack for the evaluation tests (no network, no essays
needed): RULER's own noise sentences stand in for the essays."""

from __future__ import annotations


NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
HAYSTACK_WORDS = (NOISE + " ") * 60


def word_tokenizer(text: str = HAYSTACK_WORDS):
    """A whitespace word-level tokenizer over ``text``'s words (ids < 1000), EOS id 3."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3}
    for w in text.split():
        vocab.setdefault(w, len(vocab))
    assert len(vocab) < 1000
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
                                   eos_token="<eos>")
