"""Prompts for the backbone reading text itself: the chat prompt around (context,) a question.

The trained adapter answers the bare question (``question_ids`` in training); the backbone alone,
reading retrieved sentences or a baseline's context, answers its own chat prompt with a
short-answer instruction. Without it a chat model answers in sentences, and exact match would
measure its format, not what it read.
"""

from __future__ import annotations

from typing import Any, Optional

from memadapter.errors import ConfigError

__all__ = ["INSTRUCTION", "chat_ids", "context_ids"]

INSTRUCTION = "Answer with the answer only, in a few words."


def _content(question: str, context: Optional[str]) -> str:
    return (f"{context}\n\n" if context else "") + f"Question: {question.strip()}\n{INSTRUCTION}"


def chat_ids(tokenizer: Any, question: str, context: Optional[str] = None) -> list[int]:
    """The tokenizer's chat template around (context,) the question and the instruction; a
    ConfigError when the tokenizer has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("chat: the tokenizer has no chat template; evaluate with chat=False")
    text = tokenizer.apply_chat_template([{"role": "user", "content": _content(question, context)}],
                                         add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def context_ids(tokenizer: Any, question: str, context: str) -> list[int]:
    """:func:`chat_ids` when the tokenizer has a chat template, else the same content as plain text
    ending in "Answer:" (a base model)."""
    if getattr(tokenizer, "chat_template", None):
        return chat_ids(tokenizer, question, context)
    return list(tokenizer(_content(question, context) + "\nAnswer:", add_special_tokens=False)["input_ids"])
