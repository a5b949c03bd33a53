"""Fixtures of the evaluation tests: a word tokenizer, a task context over a small haystack, a tiny LM."""

from __future__ import annotations

import pytest
import torch

from eval_helpers import HAYSTACK_WORDS, word_tokenizer
from memadapter.evaluation.ruler import TaskContext


@pytest.fixture(scope="session")
def tok():
    return word_tokenizer()


@pytest.fixture(scope="session")
def ctx(tok):
    return TaskContext.create(tok, HAYSTACK_WORDS.split())


@pytest.fixture(scope="session")
def tiny_lm():
    from memadapter.modeling.tiny import tiny_backbone

    torch.set_num_threads(1)
    return tiny_backbone("llama", 0, sharpen_head=8.0)
