"""The backbone's own prompts (modeling/prompts.py): chat template when the tokenizer has one,
plain text otherwise, both carrying the context, the question and the short-answer instruction."""

import pytest
from conftest import tiny_tokenizer

from memadapter.errors import ConfigError
from memadapter.modeling.prompts import INSTRUCTION, chat_ids, context_ids


class _Chat:
    """A stand-in tokenizer with a chat template that marks the user turn."""

    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and not tokenize
        return "<user>" + messages[0]["content"] + "<assistant>"

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def _text(ids):
    return "".join(chr(i) for i in ids)


def test_chat_ids_wrap_context_question_and_instruction():
    text = _text(chat_ids(_Chat(), "  Who won?  ", "Ann won."))
    assert text == f"<user>Ann won.\n\nQuestion: Who won?\n{INSTRUCTION}<assistant>"
    assert _text(context_ids(_Chat(), "Who won?", "Ann won.")) == text
    assert "\n\n" not in _text(chat_ids(_Chat(), "Who won?"))


def test_without_a_chat_template_context_ids_is_plain_text_and_chat_ids_refuses():
    tok = tiny_tokenizer()
    ids = context_ids(tok, "where does alice live", "alice lives in paris")
    assert ids == tok("alice lives in paris\n\nQuestion: where does alice live\n" + INSTRUCTION + "\nAnswer:",
                      add_special_tokens=False)["input_ids"]
    with pytest.raises(ConfigError, match="chat template"):
        chat_ids(tok, "where does alice live")
