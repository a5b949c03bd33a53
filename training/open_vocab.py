"""Programmatic vocabulary for open-text lifecycle streams: value formats, attribute types,
entity names with look-alikes, and named template families.

Breadth comes from composition, not hand lists: attribute types are qualifier x noun ("backup
phone number", "billing contact") plus made-up ones ("zorvel rating"); each noun fixes a value
FORMAT (a generator: codes, amounts with units, dates, money, e-mail-like strings, channels,
rooms, person / place / organisation names). Names and made-up words come from two disjoint
syllable inventories, so held-out splits get names training never saw.

Example:
    >>> import random
    >>> fmt = VALUE_FORMATS["code"]
    >>> bool(re.fullmatch(r"[A-Z]{1,2}-\\d{2,4}", fmt(random.Random(0), "train")))
    True
    >>> FAMILIES["copula"].new[0].format(key="Mei Tanaka", attr="locker code", value="D-21")
    "Mei Tanaka's locker code is D-21."
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

__all__ = ["VALUE_FORMATS", "OpenAttribute", "ATTRIBUTE_POOLS", "attribute_pool", "FAMILIES", "TemplateFamily",
           "FAMILY_SPLITS", "made_up_word", "person_name", "place_name", "org_name", "CHAT_USER", "CHAT_REVERT", "hard_negative"]

# ----------------------------------------------------------------------------- made-up words

# Two disjoint onset inventories: a word of the held-out space always starts with a held-out onset
# and no train word contains one, so held-out names can never occur in training.
_TRAIN_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "pr", "r", "s", "st", "t",
                 "tr", "v", "sh", "ch")
_HELD_ONSETS = ("qu", "x", "zh", "kv", "vl", "ts", "yr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "k", "m")


def made_up_word(rng: random.Random, space: str = "train") -> str:
    """A pronounceable made-up word; ``space`` "heldout" words start with an onset train words never use.

    Example: ``made_up_word(random.Random(1), "heldout")`` -> e.g. "Quoviden".
    """
    onsets = _TRAIN_ONSETS
    first = rng.choice(_HELD_ONSETS) if space == "heldout" else rng.choice(onsets)
    syll = [first + rng.choice(_VOWELS)]
    syll += [rng.choice(onsets) + rng.choice(_VOWELS) for _ in range(rng.choice((1, 1, 2)))]
    return ("".join(syll) + rng.choice(_CODAS)).capitalize()


# ----------------------------------------------------------------------------- names (train space only)

FIRST_NAMES = ("Mei", "Jean", "Alice", "Daniel", "Marco", "Julia", "Paul", "Erika", "Simon", "Louise", "Carla",
               "Nina", "Robert", "Anna", "Leon", "Victor", "Greta", "Hannah", "Omar", "Lucia", "Samuel", "Ines",
               "Pedro", "Sofia", "Tariq", "Elena", "Felix", "Maya", "Hugo", "Clara", "Ivan", "Rosa", "Amir",
               "Lena", "Diego", "Nora", "Arjun", "Eva", "Mateo", "Zara")
LAST_NAMES = ("Tanaka", "Moreau", "Schmidt", "Rossi", "Novak", "Silva", "Kowalski", "Haddad", "Larsen", "Okafor",
              "Dubois", "Fischer", "Costa", "Jensen", "Petrov", "Nakamura", "Garcia", "Lindqvist", "Mendes",
              "Brennan", "Weber", "Ferrari", "Kaur", "Andersen", "Sato", "Romero", "Keller", "Byrne", "Vidal")
PLACE_WORDS = ("North", "East", "Port", "Lake", "Green", "Stone", "Oak", "River", "Silver", "Red", "Bright", "Elm")
PLACE_HEADS = ("Elizabeth", "Harbour", "Falls", "Springs", "Bay", "Heights", "Ridge", "Point", "Valley", "Crossing")
ORG_WORDS = ("Northwind", "Bluepeak", "Ironwood", "Clearwater", "Redstone", "Brightwater", "Greenfield", "Summit",
             "Harbor", "Oakline", "Silverline", "Westbrook")
ORG_HEADS = ("Logistics", "Analytics", "Clinic", "Labs", "Partners", "Foods", "Energy", "Studios", "Systems",
             "Freight", "Dental", "Insurance")
PRODUCT_TYPES = ("kettle", "router", "drone", "scanner", "headset", "printer", "thermostat", "camera", "bike", "lamp")
PROJECT_HEADS = ("Project", "Initiative", "Programme")


def _word(rng: random.Random, space: str, pool: tuple[str, ...], p_real: float = 0.6) -> str:
    return rng.choice(pool) if space == "train" and rng.random() < p_real else made_up_word(rng, space)


def person_name(rng: random.Random, space: str = "train") -> str:
    """A multi-word person name, sometimes with a middle name or hyphen ("Jean-Luc Moreau")."""
    first, last = _word(rng, space, FIRST_NAMES), _word(rng, space, LAST_NAMES)
    r = rng.random()
    if r < 0.15:
        first = f"{first}-{_word(rng, space, FIRST_NAMES)}"
    elif r < 0.3:
        return f"{first} {_word(rng, space, FIRST_NAMES)} {last}"
    return f"{first} {last}"


def place_name(rng: random.Random, space: str = "train") -> str:
    """A two-word place ("Port Elizabeth", "Stone Falls")."""
    head = _word(rng, space, PLACE_HEADS, 0.8)
    return f"{_word(rng, space, PLACE_WORDS, 0.7)} {head}" if rng.random() < 0.6 else f"Port {head}"


def org_name(rng: random.Random, space: str = "train") -> str:
    """An organisation ("Northwind Logistics", "Brightwater Clinic")."""
    return f"{_word(rng, space, ORG_WORDS)} {rng.choice(ORG_HEADS)}"


# ----------------------------------------------------------------------------- value formats

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_UNITS = ("kg", "km", "m", "cm", "litres", "hours", "minutes", "GB", "kWh", "days")
_L = "ABCDEFGHJKLMNPRSTUVWXZ"


def _code(rng: random.Random, space: str) -> str:
    return f"{''.join(rng.choices(_L, k=rng.choice((1, 2))))}-{rng.randint(10, 9999)}"


def _alnum(rng: random.Random, space: str) -> str:
    return "".join(rng.choices(_L + "0123456789", k=rng.randint(5, 8)))


def _quantity(rng: random.Random, space: str) -> str:
    n = rng.randint(2, 950) if rng.random() < 0.6 else round(rng.uniform(0.5, 99), 1)
    return f"{n} {rng.choice(_UNITS)}"


def _date(rng: random.Random, space: str) -> str:
    y, m, d = rng.randint(2019, 2031), rng.randint(1, 12), rng.randint(1, 28)
    return f"{d} {_MONTHS[m - 1]} {y}" if rng.random() < 0.6 else f"{y}-{m:02d}-{d:02d}"


def _money(rng: random.Random, space: str) -> str:
    n = rng.randint(5, 99000)
    return f"${n:,}" if rng.random() < 0.5 else f"{n} {rng.choice(('euros', 'pounds', 'dollars', 'francs'))}"


def _email(rng: random.Random, space: str) -> str:
    user = made_up_word(rng, space).lower() + rng.choice(("", ".", "_")) + rng.choice(_L).lower()
    return f"{user}@{made_up_word(rng, space).lower()}.{rng.choice(('com', 'org', 'net', 'io'))}"


def _channel(rng: random.Random, space: str) -> str:
    return f"#{rng.choice(('ops', 'team', 'dev', 'help', 'sales'))}-{made_up_word(rng, space).lower()}"


def _room(rng: random.Random, space: str) -> str:
    return f"{rng.choice(('Room', 'Suite', 'Hall', 'Lab'))} {rng.randint(1, 12)}{rng.choice(_L)}"


def _phone(rng: random.Random, space: str) -> str:
    return f"+{rng.randint(1, 99)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}"


def _time(rng: random.Random, space: str) -> str:
    return f"{rng.randint(1, 12)}:{rng.choice(('00', '15', '30', '45'))} {rng.choice(('am', 'pm'))}"


VALUE_FORMATS: dict[str, Callable[[random.Random, str], str]] = {
    "code": _code, "alnum": _alnum, "quantity": _quantity, "date": _date, "money": _money, "email": _email,
    "channel": _channel, "room": _room, "phone": _phone, "time": _time, "person": person_name,
    "place": place_name, "org": org_name,
}

# ----------------------------------------------------------------------------- attribute types


@dataclass(frozen=True)
class OpenAttribute:
    """An attribute type: its phrase ("backup phone number") and value format ("phone")."""

    name: str
    fmt: str
    made_up: bool = False

    def value(self, rng: random.Random, space: str) -> str:
        """A fresh value of this attribute's format from name space ``space``."""
        return VALUE_FORMATS[self.fmt](rng, space)


# noun -> format; nouns are held out whole, so an unseen attribute type is a new head noun.
_NOUNS: dict[str, str] = {
    "phone number": "phone", "hotline": "phone", "fax line": "phone", "pager number": "phone",
    "contact": "person", "manager": "person", "mentor": "person", "doctor": "person", "landlord": "person",
    "sponsor": "person", "reviewer": "person", "deputy": "person", "coach": "person", "auditor": "person",
    "city": "place", "office town": "place", "hometown": "place", "base": "place", "depot": "place",
    "warehouse site": "place", "branch location": "place",
    "employer": "org", "supplier": "org", "bank": "org", "insurer": "org", "vendor": "org", "courier": "org",
    "clinic": "org", "law firm": "org",
    "locker code": "code", "gate code": "code", "badge code": "code", "ticket code": "code", "desk code": "code",
    "voucher code": "code", "route code": "code", "batch code": "code",
    "account id": "alnum", "licence key": "alnum", "member id": "alnum", "serial number": "alnum",
    "tracking number": "alnum", "booking reference": "alnum",
    "weight limit": "quantity", "daily allowance": "quantity", "range": "quantity", "storage quota": "quantity",
    "commute": "quantity", "shift length": "quantity",
    "deadline": "date", "start date": "date", "renewal date": "date", "review date": "date", "launch date": "date",
    "expiry date": "date",
    "budget": "money", "salary": "money", "deposit": "money", "monthly fee": "money", "credit limit": "money",
    "rent": "money",
    "email address": "email", "login": "email", "mailbox": "email",
    "channel": "channel", "chat room": "channel", "alert channel": "channel", "status channel": "channel",
    "meeting room": "room", "desk location": "room", "classroom": "room", "workshop": "room", "lab space": "room",
    "pickup time": "time", "check-in time": "time", "standup time": "time", "curfew": "time",
}
_QUALIFIERS = ("backup", "primary", "billing", "emergency", "temporary", "home", "work", "weekend", "night",
               "spare", "shared", "personal", "team", "default", "regional", "preferred")
_MADE_UP_SUFFIXES = {"rating": "quantity", "id": "alnum", "index": "code", "tier": "code", "tag": "alnum",
                     "liaison": "person", "hub": "place", "quota": "quantity", "due date": "date"}
# Held-out nouns per held-out half (chosen once; every format keeps train nouns).
HELDOUT_NOUNS = {
    "val": ("hotline", "sponsor", "depot", "insurer", "route code", "booking reference", "range", "review date",
            "deposit", "mailbox", "status channel", "workshop", "curfew"),
    "test": ("pager number", "auditor", "branch location", "law firm", "batch code", "serial number",
             "shift length", "expiry date", "rent", "login", "alert channel", "lab space", "check-in time"),
}


def _compose(nouns: list[str], rng: random.Random, space: str, n_made_up: int) -> tuple[OpenAttribute, ...]:
    out = [OpenAttribute(n, _NOUNS[n]) for n in nouns]
    out += [OpenAttribute(f"{q} {n}", _NOUNS[n]) for n in nouns for q in rng.sample(_QUALIFIERS, 5)]
    names = {a.name for a in out}
    while n_made_up:
        suffix = rng.choice(sorted(_MADE_UP_SUFFIXES))
        a = OpenAttribute(f"{made_up_word(rng, space).lower()} {suffix}", _MADE_UP_SUFFIXES[suffix], True)
        if a.name not in names:
            names.add(a.name)
            out.append(a)
            n_made_up -= 1
    return tuple(out)


def _build_pools() -> dict[str, tuple[OpenAttribute, ...]]:
    held = {n for ns in HELDOUT_NOUNS.values() for n in ns}
    rng = random.Random("memadapter-open-vocab")
    pools = {"train": _compose([n for n in _NOUNS if n not in held], rng, "train", 60)}
    # Held-out made-up attributes come from the held-out word space: never a train attribute word.
    for half in ("val", "test"):
        pools[half] = _compose(list(HELDOUT_NOUNS[half]), rng, "heldout", 15)
    return pools


ATTRIBUTE_POOLS: dict[str, tuple[OpenAttribute, ...]] = _build_pools()


def attribute_pool(which: str) -> tuple[OpenAttribute, ...]:
    """Attribute types of ``which`` ("train", "val" or "test" held-out half)."""
    return ATTRIBUTE_POOLS[which]


# ----------------------------------------------------------------------------- template families


@dataclass(frozen=True)
class TemplateFamily:
    """A named sentence family. Fields: ``{key}`` (entity), ``{attr}`` (attribute phrase), ``{value}``.

    ``update`` templates carry explicit change words; ``retract`` withdraw a fact; ``noise`` name the
    entity with a wrong value without stating it (rumours); ``questions`` ask for the value.
    """

    name: str
    new: tuple[str, ...]
    update: tuple[str, ...]
    retract: tuple[str, ...]
    noise: tuple[str, ...]
    questions: tuple[str, ...]


def _fam(name: str, new, update, retract, noise, questions) -> TemplateFamily:
    return TemplateFamily(name, tuple(new), tuple(update), tuple(retract), tuple(noise), tuple(questions))


FAMILIES: dict[str, TemplateFamily] = {f.name: f for f in (
    _fam("copula", ["{key}'s {attr} is {value}.", "{key}'s {attr} is set to {value}.",
                    "{key}'s {attr} is listed as {value}."],
         ["{key}'s {attr} is now {value}.", "{key}'s {attr} changed to {value}.",
          "{key}'s {attr} has been replaced by {value}."],
         ["{key}'s {attr} is no longer valid.", "Please disregard {key}'s {attr}.",
          "{key}'s {attr} has been cancelled and not replaced."],
         ["Someone guessed that {key}'s {attr} was {value}, but it was never confirmed."],
         ["What is {key}'s {attr}?", "What is {key}'s current {attr}?", "Tell me {key}'s {attr}."]),
    _fam("possessive", ["The {attr} of {key} is {value}.", "For {key}, the {attr} is {value}."],
         ["The {attr} of {key} was changed to {value}.", "The {attr} of {key} is now {value}."],
         ["We withdrew the {attr} of {key}.", "The {attr} of {key} was revoked."],
         ["It was wrongly said that the {attr} of {key} is {value}."],
         ["What is the {attr} of {key}?", "Which {attr} does {key} have?"]),
    _fam("value_first", ["{value} is {key}'s {attr}.", "{value} serves as {key}'s {attr}."],
         ["{value} is now {key}'s {attr}.", "{value} has replaced the old {attr} of {key}."],
         ["Nothing is on file any more as {key}'s {attr}.", "{key} no longer has any {attr} on record."],
         ["{value} was only a rumoured {attr} for {key}."],
         ["Which value is {key}'s {attr}?", "What serves as {key}'s {attr}?"]),
    _fam("passive", ["{value} was assigned as {key}'s {attr}.", "{value} was registered as the {attr} of {key}."],
         ["{value} was newly assigned as {key}'s {attr}.", "{value} has been designated {key}'s new {attr}."],
         ["{key}'s {attr} was withdrawn by the office.", "{key}'s {attr} has been annulled."],
         ["{value} was once proposed as {key}'s {attr}, but the idea was dropped."],
         ["What was assigned as {key}'s {attr}?", "What is registered as {key}'s {attr}?"]),
    _fam("key_value", ["{key} - {attr}: {value}", "{key} / {attr}: {value}."],
         ["{key} - {attr} (changed): {value}", "{key} / new {attr}: {value}."],
         ["{key} - {attr}: withdrawn", "{key} / {attr}: void, no value."],
         ["{key} - {attr} (unverified rumour): {value}"],
         ["{key} - {attr}?", "Look up {key} / {attr}."]),
    _fam("dialogue", ["The clerk asked for {key}'s {attr}, and the manager answered: {value}.",
                      "\"What's {key}'s {attr}?\" \"It is {value},\" the assistant replied."],
         ["\"Has {key}'s {attr} changed?\" \"Yes, it is {value} now,\" said the coordinator.",
          "The desk called back: {key}'s {attr} moved to {value}."],
         ["\"Is {key}'s {attr} still on file?\" \"No, it was cancelled,\" said the clerk."],
         ["\"Could {key}'s {attr} be {value}?\" someone wondered, but nobody knew."],
         ["What did they say {key}'s {attr} is?", "According to the conversation, what is {key}'s {attr}?"]),
    _fam("chat", ["{my} {attr} is {value}.", "for the record, {my} {attr} is {value}.",
                  "{I} use {value} as my {attr}."],
         ["{my} {attr} changed to {value}.", "{I} switched my {attr} to {value}.", "{my} new {attr} is {value}."],
         ["forget what I said about {my} {attr}, I no longer have one.", "please delete {my} {attr}, it is not valid."],
         ["{my} friend thinks my {attr} should be {value}, but it isn't."],
         ["What is {my} {attr} now?", "Remind me, what's {my} {attr}?", "Do you remember {my} {attr}?"]),
    _fam("relative", ["{key}, whose {attr} is {value}, joined the list this week.",
                      "We contacted {key}, whose {attr} is {value}."],
         ["{key}, whose {attr} is now {value}, confirmed the change.",
          "{key}, whose {attr} was switched to {value}, sent a note."],
         ["{key}, whose {attr} is no longer recorded, asked for a new one."],
         ["{key}, whose {attr} some believe is {value}, never confirmed it."],
         ["What {attr} does {key} have, the one stated in the records?", "What is the {attr} that {key} has?"]),
    _fam("table_row", ["| {key} | {attr} | {value} |", "row: {key} ; {attr} ; {value}"],
         ["| {key} | {attr} | {value} (updated) |", "row: {key} ; {attr} ; {value} ; revised"],
         ["| {key} | {attr} | deleted |", "row: {key} ; {attr} ; removed"],
         ["| {key} | {attr} | {value}? (rumour) |"],
         ["In the table, what is the {attr} in {key}'s row?", "Which {attr} does the table give for {key}?"]),
    _fam("after_value", ["{key} has {value} as the {attr}.", "{key} goes by {value} for the {attr}."],
         ["{key} has switched over to {value} as the {attr}.", "{key} now goes by {value} for the {attr}."],
         ["{key} has dropped the {attr} entirely.", "{key} keeps no {attr} on record any more."],
         ["{key} may have {value} as the {attr}, according to gossip."],
         ["{key} has what as the {attr}?", "What does {key} go by for the {attr}?"]),
    _fam("memo", ["Per the registry, {key} holds {value} as {attr}.", "Memo: the {attr} held by {key} reads {value}."],
         ["Per the registry, {key} now holds {value} as {attr}.",
          "Memo: the {attr} held by {key} was amended to {value}."],
         ["Per the registry, the {attr} of {key} has been struck off.",
          "Memo: the {attr} held by {key} is rescinded."],
         ["Memo (unconfirmed): the {attr} held by {key} might read {value}."],
         ["Per the registry, what {attr} does {key} hold?", "What does the memo give as {key}'s {attr}?"]),
)}
# Held-out families are split into two disjoint halves; chat stays in train (only the user uses it).
FAMILY_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("copula", "possessive", "value_first", "passive", "key_value", "dialogue", "chat"),
    "val": ("relative", "table_row"), "test": ("after_value", "memo"),
}
CHAT_USER = "the user"
# "Scratch that, I kept the old one": an update whose value is the version before the last.
CHAT_REVERT = ("actually, scratch that, {I} kept the old {attr}, it stays {value}.",
               "scratch that, {my} {attr} is back to {value}.")
# Chat templates name the user as "{my}" / "{I}" (the key span). Chat-specific paraphrases for a few attributes (the chat family's generic ones cover the rest).
CHAT_SPECIAL = {"city": ("{I} moved to {value}.", "Where do {I} live now?"),
                "phone number": ("{my} new number is {value}.", "What is {my} phone number now?")}

# Explicit write markers and implicit ones (a later date); the chat family writes user turns.
SIGNAL_PREFIXES: dict[str, tuple[str, ...]] = {
    "new": ("Note:", "Record:", "On {date},", "[{timestamp}]", "Logged {date}:"),
    "update": ("Update:", "Correction:", "As of {date},", "Since {date},", "Revision {version}:", "Changed:",
               "[{timestamp}]"),
    "retract": ("Correction:", "Update:", "Notice:", "As of {date},"),
}
CHAT_PREFIXES: dict[str, tuple[str, ...]] = {
    "new": ("User:",), "update": ("User: actually,", "User: update,", "User: oh, and"),
    "retract": ("User: actually, scratch that,", "User:"),
}

# Hard negatives (plain filler, tag O): they read like updates or retractions of nothing we track.
_HN_SUBJECTS = ("the old ferry timetable", "the museum's opening schedule", "the village bakery's recipe",
                "the harbour crane", "the school's uniform policy", "the county's speed limit", "the bridge toll",
                "the library's late-fee rule", "the orchestra's touring plan", "the festival's route")
_HN_PREDICATES = ("was replaced last spring.", "is no longer in force.", "changed to a winter format.",
                  "has since been withdrawn.", "was cancelled and never reinstated.", "is now run differently.",
                  "was updated after the storm.", "no longer applies to visitors.")


def hard_negative(rng: random.Random) -> str:
    """A sentence that reads like an update or retraction but names no tracked entity or value."""
    s = f"{rng.choice(_HN_SUBJECTS)} {rng.choice(_HN_PREDICATES)}"
    s = s[0].upper() + s[1:]
    return f"{rng.choice(('Update:', 'Note:', 'As of this year,'))} {s[0].lower() + s[1:]}" \
        if rng.random() < 0.3 else s

