"""The entities of a lifecycle stream: names drawn from the split's pools or made up
(:func:`synthetic_word`), their look-alikes (the same family, another surface) and the aliases a
stream may use for them without ambiguity. :mod:`.lifecycle_data` plans and renders the facts.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from memadapter.errors import CapacityError

from .lifecycle_vocab import FIRST_NAME_PAIRS, LAST_NAMES, PRODUCT_BRANDS, PRODUCT_TYPES, PROJECT_WORDS

if TYPE_CHECKING:
    from .lifecycle_data import SplitStyle

__all__ = ["Entity", "synthetic_word", "synthetic_entity", "new_entity", "lookalike", "assign_aliases", "surface"]


@dataclass
class Entity:
    kind: str
    name: str  # canonical surface form
    family: tuple  # what look-alikes share; two main entities never share a family
    alias_candidates: tuple[str, ...]
    aliases: tuple[str, ...] = ()  # filled once every entity of the stream is known


_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "pr", "r", "s", "st",
           "t", "tr", "v", "z", "sh", "ch")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "k", "m", "th")
# Made-up names must never collide with a held-out name, or training would see a test entity.
_HELDOUT_WORDS = frozenset(w.lower() for pool in (LAST_NAMES["heldout"], PROJECT_WORDS["heldout"], PRODUCT_BRANDS["heldout"])
                           for w in pool) | frozenset(f.lower() for pair in FIRST_NAME_PAIRS["heldout"] for f in pair)


def synthetic_word(rng: random.Random) -> str:
    """A pronounceable made-up name of 2-3 syllables ("Drevik", "Mousala"), never a held-out name.

    Training on names drawn from a few dozen fixed words lets the heads learn those words; made-up
    names make them learn what a name looks like, which is what unseen names at test time need.
    """
    while True:
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.choice((2, 2, 3))))
        word = (word + rng.choice(_CODAS)).capitalize()
        if word.lower() not in _HELDOUT_WORDS:
            return word


def synthetic_entity(rng: random.Random, kind: str) -> Entity:
    if kind == "person":
        first = synthetic_word(rng)
        variant = first + "a" if first[-1] not in "aeiou" else first[:-1] + ("a" if first[-1] == "o" else "o")
        pair = (first, variant)  # look-alike first names, always two different ones
        last = synthetic_word(rng)
        first = pair[rng.randrange(2)]
        return Entity(kind, f"{first} {last}", ("person", pair, last), (first,))
    if kind == "project":
        word = synthetic_word(rng)
        return Entity(kind, f"Project {word}", ("project", word), (f"the {word} project",))
    brand, ptype = synthetic_word(rng), rng.choice(PRODUCT_TYPES)
    return Entity(kind, f"the {brand} {ptype}", ("product", brand, ptype), ())


def new_entity(rng: random.Random, kind: str, style: SplitStyle, used: set) -> Entity:
    pools = style.entities
    for _ in range(200):
        if style.synthetic_names > 0 and rng.random() < style.synthetic_names:
            ent = synthetic_entity(rng, kind)
        elif kind == "person":
            pair = rng.choice(FIRST_NAME_PAIRS[pools])
            last, first = rng.choice(LAST_NAMES[pools]), pair[rng.randrange(2)]
            ent = Entity(kind, f"{first} {last}", ("person", pair, last), (first,))
        elif kind == "project":
            word = rng.choice(PROJECT_WORDS[pools])
            ent = Entity(kind, f"Project {word}", ("project", word), (f"the {word} project",))
        else:
            brand = rng.choice(PRODUCT_BRANDS[pools])
            ptype = rng.choice(PRODUCT_TYPES)
            ent = Entity(kind, f"the {brand} {ptype}", ("product", brand, ptype), ())
        if ent.family not in used:
            used.add(ent.family)
            return ent
    raise CapacityError(f"num_entities: the {pools} name pools ran out of distinct {kind} names")


def lookalike(rng: random.Random, ent: Entity) -> Entity:
    """Same family, different surface: "Alice Moreau" -> "Alicia Moreau", "Project Falcon" -> "Project Falcon II"."""
    if ent.kind == "person":
        _, pair, last = ent.family
        first = next(f for f in pair if f != ent.name.split(" ")[0])
        return Entity("person", f"{first} {last}", ent.family, (first,))
    if ent.kind == "project":
        word, suffix = ent.family[1], rng.choice(("II", "Mini", "Next"))
        return Entity("project", f"Project {word} {suffix}", ent.family, (f"the {word} {suffix} project",))
    brand, ptype = ent.family[1], ent.family[2]
    return Entity("product", f"the {brand} Mini {ptype}", ent.family, ())


def assign_aliases(entities: list[Entity]) -> None:
    """An alias is kept only if no other entity's surface contains it as whole words (no ambiguity)."""
    for ent in entities:
        others = [s.lower() for o in entities if o is not ent for s in (o.name, *o.alias_candidates)]
        keep = [a for a in ent.alias_candidates
                if not any(re.search(rf"\b{re.escape(a.lower())}\b", s) for s in others)]
        ent.aliases = (ent.name, *keep)


def surface(rng: random.Random, ent: Entity, p_alias: float) -> str:
    return rng.choice(ent.aliases[1:]) if len(ent.aliases) > 1 and rng.random() < p_alias else ent.name
