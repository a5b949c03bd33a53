"""RULER tasks regenerated offline (Hsieh et al., 2024, "RULER: What's the real context size of
your long-context language models?"): needle in a haystack (single, multikey, multivalue,
multiquery), variable tracking, and QA over SQuAD v2 dev / HotpotQA dev documents.

Facts follow RULER's templates (needle "One of the special magic numbers for {key} is: {value}.",
7-digit values, adjective-noun keys, depths from 40 evenly spaced percentages, five-letter
variables in one chain of four hops, "Document {i}:" blocks for QA); the code is our own. Keys
come from our own word lists, not RULER's (which come from the wonderwords package).
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Optional

from .samples import RULER_DEPTHS, EssayHaystack, Sample, context_budget
from .text import count_tokens, fit_words, ruler_data_dir

__all__ = ["TaskContext", "NIAH_SHAPES", "niah", "variable_tracking", "qa", "random_key", "ADJECTIVES", "NOUNS"]

ADJECTIVES = tuple("""amber bitter brave calm clever crisp curious dusty eager early faint fancy fierce gentle
giant glossy golden grumpy hollow humble icy jolly lazy lively lucky mellow misty modern narrow noble
odd pale plain polite proud quiet rapid rough rusty shiny silent silly sleepy smooth snowy solid sour
spicy steady sticky sunny swift tame tender tidy tiny velvet vivid wary wild windy wooden""".split())
NOUNS = tuple("""anchor apron badger banjo barrel beacon blanket bottle bridge bucket cabin candle canyon
carpet castle cellar chimney compass cottage crayon dagger desert dolphin engine falcon feather fiddle
garden glacier hammer harbor helmet island jacket kettle ladder lantern meadow mirror needle orchard
otter paddle parcel pepper pillow pocket puzzle quarry ribbon saddle shovel spider tablet teapot
thimble tunnel violin wagon walnut window""".split())


def random_key(rng: random.Random) -> str:
    """An adjective-noun key like RULER's ("curious-lantern")."""
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def random_number(rng: random.Random, digits: int = 7) -> str:
    return str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))


@dataclass
class TaskContext:
    """What every generator shares: the backbone tokenizer and the essay haystack (cached fits)."""

    tokenizer: Any
    haystack: EssayHaystack
    qa_data: dict = field(default_factory=dict)

    @classmethod
    def create(cls, tokenizer: Any, words: Optional[list[str]] = None) -> "TaskContext":
        return cls(tokenizer, EssayHaystack(tokenizer, words))


# ----------------------------------------------------------------------------- needles

# name -> (keys written, values per key, keys asked, max new tokens); RULER's essay variants.
NIAH_SHAPES = {
    "niah_single": (1, 1, 1, 32),
    "niah_multikey": (4, 1, 1, 32),
    "niah_multivalue": (1, 4, 1, 96),
    "niah_multiquery": (4, 1, 4, 96),
}
NEEDLE = "One of the special magic numbers for {key} is: {value}."


def niah_prompt(keys_asked: list[str], plural: bool) -> tuple[str, str, str, str]:
    """(instruction, question, query, answer prefix) of RULER's niah template; the singular form
    when one value is asked ("A special magic number is hidden ...")."""
    query = ", ".join(keys_asked[:-1]) + ", and " + keys_asked[-1] if len(keys_asked) > 1 else keys_asked[0]
    if plural:
        instruction = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. "
                       "I will quiz you about the numbers afterwards.")
        question = f"What are all the special magic numbers for {query} mentioned in the provided text?"
        prefix = f" The special magic numbers for {query} mentioned in the provided text are"
    else:
        instruction = ("A special magic number is hidden within the following text. Make sure to memorize it. "
                       "I will quiz you about the number afterwards.")
        question = f"What is the special magic number for {query} mentioned in the provided text?"
        prefix = f" The special magic number for {query} mentioned in the provided text is"
    return instruction, question, question, prefix


def distinct_keys(rng: random.Random, n: int) -> list[str]:
    keys: list[str] = []
    while len(keys) < n:
        key = random_key(rng)
        if key not in keys:
            keys.append(key)
    return keys


def niah(name: str, index: int, length: int, rng: random.Random, ctx: TaskContext) -> Sample:
    """One RULER niah sample of shape ``NIAH_SHAPES[name]`` hidden in the essays."""
    n_keys, n_values, n_asked, max_new = NIAH_SHAPES[name]
    keys = distinct_keys(rng, n_keys)
    values = [[random_number(rng) for _ in range(n_values)] for _ in keys]
    needles = [NEEDLE.format(key=k, value=v) for k, vs in zip(keys, values) for v in vs]
    rng.shuffle(needles)
    asked = rng.sample(range(n_keys), n_asked)
    instruction, question, query, prefix = niah_prompt([keys[i] for i in asked], n_asked * n_values > 1)
    budget = context_budget(ctx.tokenizer, length, instruction, question, prefix, max_new)
    depths = rng.sample(RULER_DEPTHS, len(needles))
    return Sample(f"{name}/{length}/{index}", name, length, ctx.haystack.context(budget, needles, depths),
                  instruction, question, query, prefix, [v for i in asked for v in values[i]],
                  "string_match_all", max_new)


# ----------------------------------------------------------------------------- variable tracking

def variable_tracking(index: int, length: int, rng: random.Random, ctx: TaskContext, hops: int = 4) -> Sample:
    """RULER vt (one chain, four hops): ``VAR A = 12345``, ``VAR B = VAR A`` ... in order through
    the essays; every variable in the chain holds the value."""
    names: list[str] = []
    while len(names) < hops + 1:
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if name not in names:
            names.append(name)
    value = str(rng.randint(10000, 99999))
    chain = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i + 1]} = VAR {names[i]}." for i in range(hops)]
    instruction = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n"
    question = f"Question: Find all variables that are assigned the value {value} in the text above."
    # RULER's answer prefix, its "assgined" typo included, so the prompt is the one the paper scores.
    prefix = (f" Answer: According to the chain(s) of variable assignment in the text above, {hops + 1} variables "
              f"are assgined the value {value}, they are: ")
    budget = context_budget(ctx.tokenizer, length, instruction, question, prefix, 30)
    depths = rng.sample(RULER_DEPTHS, len(chain))
    return Sample(f"vt/{length}/{index}", "vt", length, ctx.haystack.context(budget, chain, depths), instruction,
                  question, f"Find all variables that are assigned the value {value}", prefix, names,
                  "string_match_all", 30)


# ----------------------------------------------------------------------------- QA

@lru_cache(maxsize=None)
def read_squad() -> tuple[list[dict], list[str]]:
    """Answerable SQuAD v2 dev questions; each has its own paragraph and its article's others."""
    with open(ruler_data_dir() / "squad.json", encoding="utf-8") as fh:
        data = json.load(fh)["data"]
    docs = sorted({p["context"] for d in data for p in d["paragraphs"]})
    at = {c: i for i, c in enumerate(docs)}
    qas = []
    for d in data:
        article = [at[p["context"]] for p in d["paragraphs"]]
        for p in d["paragraphs"]:
            for q in p["qas"]:
                if not q["is_impossible"]:
                    qas.append({"query": q["question"], "answers": [a["text"] for a in q["answers"]],
                                "gold": [at[p["context"]]], "near": [i for i in article if i != at[p["context"]]]})
    return qas, docs


@lru_cache(maxsize=None)
def read_hotpotqa() -> tuple[list[dict], list[str]]:
    """HotpotQA dev (distractor setting): each question's ten paragraphs, "title\\ntext" each."""
    with open(ruler_data_dir() / "hotpotqa.json", encoding="utf-8") as fh:
        data = json.load(fh)
    as_doc = lambda t, p: f"{t}\n{''.join(p)}"  # noqa: E731
    docs = sorted({as_doc(t, p) for d in data for t, p in d["context"]})
    at = {c: i for i, c in enumerate(docs)}
    qas = [{"query": d["question"], "answers": [d["answer"]], "gold": [at[as_doc(t, p)] for t, p in d["context"]],
            "near": []} for d in data]
    return qas, docs


QA_READERS: dict[str, Callable[[], tuple[list[dict], list[str]]]] = {"qa_1": read_squad, "qa_2": read_hotpotqa}
QA_INSTRUCTION = "Answer the question based on the given documents. Only give me the answer and do not output any other words."


def _documents(qa_item: dict, docs: list[str], n: int, rng: random.Random) -> list[str]:
    """The question's own documents, then its article's others, then random ones, ``n`` in all, shuffled."""
    chosen = list(qa_item["gold"])
    near = [i for i in qa_item["near"] if i not in chosen]
    rng_near = random.Random(rng.random())
    chosen += rng_near.sample(near, min(len(near), max(0, n - len(chosen))))
    taken = set(chosen)
    while len(chosen) < min(n, len(docs)):
        i = rng_near.randrange(len(docs))
        if i not in taken:
            chosen.append(i)
            taken.add(i)
    picked = [docs[i] for i in chosen]
    rng_near.shuffle(picked)
    return picked


def qa(name: str, index: int, length: int, rng: random.Random, ctx: TaskContext) -> Sample:
    """RULER qa_1 / qa_2: one question among as many "Document i:" blocks as fit (its gold ones kept)."""
    qas, docs = QA_READERS[name]()
    item = qas[rng.randrange(len(qas))]
    instruction = f"{QA_INSTRUCTION}\n\nThe following are given documents.\n"
    question = f"\n{QA_INSTRUCTION}\n\nQuestion: {item['query']}"
    budget = context_budget(ctx.tokenizer, length, instruction, question, " Answer:", 32)
    seed = rng.random()

    def text(n: int) -> str:
        picked = _documents(item, docs, n, random.Random(seed))
        return "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(picked))

    # Documents average ~150 tokens; the search bound only has to exceed what fits.
    n = fit_words(range(max(len(item["gold"]), budget // 20)), budget, lambda k: count_tokens(ctx.tokenizer, text(k)))
    n = max(n, len(item["gold"]))  # a gold document is never dropped (a tiny length may then overflow)
    return Sample(f"{name}/{length}/{index}", name, length, text(n), instruction, question, item["query"],
                  " Answer:", list(item["answers"]), "string_match_part", 32)
