"""Two lifecycle variants of RULER's single needle, our own (not in RULER).

* ``niah_rewritten``: the key's number is written, then written again later with a new value.
  The gold answer is the newest value; an answer holding the old one counts as stale.
* ``niah_lookalike``: a second needle whose key differs from the asked key by one word
  ("quiet-lantern" vs "quiet-ladder"), with its own number. An answer holding the look-alike's
  number counts as stale (it read the wrong, similar fact).
"""

from __future__ import annotations

import random

from .ruler import ADJECTIVES, NEEDLE, NOUNS, RULER_DEPTHS, TaskContext, niah_prompt, random_key, random_number
from .samples import Sample, context_budget

__all__ = ["REWRITE", "niah_rewritten", "niah_lookalike", "lookalike_key"]

REWRITE = "Update: the special magic number for {key} has changed. It is now: {value}."
_NOTE = " If a number was updated later in the text, give only the newest one."


def lookalike_key(key: str, rng: random.Random) -> str:
    """``key`` with one of its two words replaced by another word of the same list."""
    adjective, noun = key.split("-")
    if rng.random() < 0.5:
        return f"{rng.choice([a for a in ADJECTIVES if a != adjective])}-{noun}"
    return f"{adjective}-{rng.choice([n for n in NOUNS if n != noun])}"


def niah_rewritten(index: int, length: int, rng: random.Random, ctx: TaskContext) -> Sample:
    key = random_key(rng)
    old, new = random_number(rng), random_number(rng)
    while new == old:
        new = random_number(rng)
    instruction, question, query, prefix = niah_prompt([key], plural=False)
    instruction += _NOTE
    # Two distinct depths: sorted, the first needle (the old value) always comes first.
    depths = rng.sample(RULER_DEPTHS[:-1], 2)
    needles = [NEEDLE.format(key=key, value=old), REWRITE.format(key=key, value=new)]
    budget = context_budget(ctx.tokenizer, length, instruction, question, prefix, 32)
    return Sample(f"niah_rewritten/{length}/{index}", "niah_rewritten", length,
                  ctx.haystack.context(budget, needles, depths), instruction, question, query, prefix, [new],
                  "string_match_all", 32, stale_values=[old])


def niah_lookalike(index: int, length: int, rng: random.Random, ctx: TaskContext) -> Sample:
    key = random_key(rng)
    other = lookalike_key(key, rng)
    value, decoy = random_number(rng), random_number(rng)
    while decoy == value:
        decoy = random_number(rng)
    needles = [NEEDLE.format(key=key, value=value), NEEDLE.format(key=other, value=decoy)]
    rng.shuffle(needles)
    instruction, question, query, prefix = niah_prompt([key], plural=False)
    budget = context_budget(ctx.tokenizer, length, instruction, question, prefix, 32)
    depths = rng.sample(RULER_DEPTHS, 2)
    return Sample(f"niah_lookalike/{length}/{index}", "niah_lookalike", length,
                  ctx.haystack.context(budget, needles, depths), instruction, question, query, prefix, [value],
                  "string_match_all", 32, stale_values=[decoy])
