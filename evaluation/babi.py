"""BABILong-style qa1-qa5 (Kuratov et al., 2024): a small bAbI world simulator (Weston et al., 2015)
whose facts are scattered, in order, through essay text of the asked length.

The simulator is our own: people move between rooms, pick up, drop and hand over objects, and
rooms lie in compass directions of each other. Every question is answered from the simulated
state, never from a template table, so a story and its answer cannot disagree.

    qa1 single supporting fact   "Where is Mary?"                        (her last room)
    qa2 two supporting facts     "Where is the apple?"                   (its holder's room, or where dropped)
    qa3 three supporting facts   "Where was the apple before the garden?" (its room before that one)
    qa4 two argument relations   "What is north of the kitchen?"
    qa5 three argument relations "Who gave the milk to Bill?" / "What did Fred give to Bill?" / ...
"""

from __future__ import annotations

import random
from typing import Optional

from .ruler import RULER_DEPTHS, TaskContext
from .samples import Sample, context_budget

__all__ = ["PEOPLE", "ROOMS", "OBJECTS", "World", "story_qa1", "story_qa2", "story_qa3", "story_qa4", "story_qa5",
           "babi"]

PEOPLE = ("Mary", "John", "Daniel", "Sandra", "Fred", "Bill", "Julie", "Jeff")
ROOMS = ("bathroom", "hallway", "garden", "office", "bedroom", "kitchen")
OBJECTS = ("apple", "football", "milk", "book", "key")
MOVES = ("moved to", "went to", "travelled to", "journeyed to")
INSTRUCTION = ("The text below hides a short story among unrelated paragraphs. Answer the question from the "
               "story's facts only; when something changed, the latest fact holds. Answer with one word.")

Story = tuple[list[str], str, str]  # (facts in order, question, answer)


class World:
    """People's rooms, objects' holders and rooms, and every room an object has been in (in order)."""

    def __init__(self, rng: random.Random, people: int = 4):
        self.rng = rng
        self.people = list(rng.sample(PEOPLE, people))
        self.room: dict[str, str] = {}
        self.holder: dict[str, Optional[str]] = {o: None for o in OBJECTS}
        self.object_room: dict[str, Optional[str]] = {o: None for o in OBJECTS}
        self.history: dict[str, list[str]] = {o: [] for o in OBJECTS}
        self.facts: list[str] = []

    def _place(self, obj: str, room: str) -> None:
        self.object_room[obj] = room
        if not self.history[obj] or self.history[obj][-1] != room:
            self.history[obj].append(room)

    def move(self, person: str) -> None:
        room = self.rng.choice([r for r in ROOMS if r != self.room.get(person)])
        self.room[person] = room
        self.facts.append(f"{person} {self.rng.choice(MOVES)} the {room}.")
        for obj, who in self.holder.items():
            if who == person:
                self._place(obj, room)

    def take(self, person: str) -> bool:
        """``person`` picks up a free object lying in their room (or, first, anywhere unplaced)."""
        room = self.room.get(person)
        free = [o for o in OBJECTS if self.holder[o] is None and self.object_room[o] in (None, room)]
        if room is None or not free:
            return False
        obj = self.rng.choice(free)
        self.holder[obj] = person
        self._place(obj, room)
        self.facts.append(f"{person} picked up the {obj}.")
        return True

    def drop(self, person: str) -> bool:
        held = [o for o, who in self.holder.items() if who == person]
        if not held:
            return False
        obj = self.rng.choice(held)
        self.holder[obj] = None
        self.facts.append(f"{person} put down the {obj}.")
        return True

    def step(self, carry: bool) -> None:
        person = self.rng.choice(self.people)
        if person not in self.room or not carry:
            return self.move(person)
        action = self.rng.random()
        if action < 0.3 and self.take(person):
            return None
        if action < 0.45 and self.drop(person):
            return None
        return self.move(person)


def story_qa1(rng: random.Random, steps: int = 10) -> Story:
    world = World(rng)
    for _ in range(steps):
        world.step(carry=False)
    person = rng.choice(sorted(world.room))
    return world.facts, f"Where is {person}?", world.room[person]


def _carried_world(rng: random.Random, steps: int, need_rooms: int) -> tuple[World, str]:
    """A story where some object has been in at least ``need_rooms`` rooms, its last room only once
    (so "before the garden" names one moment); re-drawn until so."""
    while True:
        world = World(rng)
        for _ in range(steps):
            world.step(carry=True)
        known = [o for o in OBJECTS if len(world.history[o]) >= need_rooms
                 and world.history[o][-1] not in world.history[o][:-1]]
        if known:
            return world, rng.choice(known)


def story_qa2(rng: random.Random, steps: int = 14) -> Story:
    world, obj = _carried_world(rng, steps, 2)
    return world.facts, f"Where is the {obj}?", world.object_room[obj]


def story_qa3(rng: random.Random, steps: int = 18) -> Story:
    world, obj = _carried_world(rng, steps, 3)
    before, last = world.history[obj][-2], world.history[obj][-1]
    return world.facts, f"Where was the {obj} before the {last}?", before


OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}


def story_qa4(rng: random.Random) -> Story:
    """Two relations around a middle room; the question asks one of them either way round."""
    a, mid, b = rng.sample(ROOMS, 3)
    d1 = rng.choice(sorted(OPPOSITE))
    d2 = rng.choice([d for d in sorted(OPPOSITE) if d != d1])  # the same direction twice would be ambiguous
    facts = [f"The {a} is {d1} of the {mid}.", f"The {b} is {d2} of the {mid}."]
    rng.shuffle(facts)
    room, direction = (a, d1) if rng.random() < 0.5 else (b, d2)
    if rng.random() < 0.5:
        return facts, f"What is {direction} of the {mid}?", room
    return facts, f"What is the {mid} {OPPOSITE[direction]} of?", room


def story_qa5(rng: random.Random, gives: int = 6) -> Story:
    """People hand objects to each other; the question is about one hand-over, asked about the
    giver, the object or the receiver, and only where that hand-over is the only one that fits."""
    people = rng.sample(PEOPLE, 4)
    events = []
    for _ in range(gives):
        giver, receiver = rng.sample(people, 2)
        events.append((giver, rng.choice(OBJECTS), receiver))
    facts = [f"{g} gave the {o} to {r}." for g, o, r in events]
    g, o, r = rng.choice(events)
    asks = [(f"Who gave the {o} to {r}?", g, lambda e: (e[1], e[2]) == (o, r), 0),
            (f"What did {g} give to {r}?", o, lambda e: (e[0], e[2]) == (g, r), 1),
            (f"Who did {g} give the {o} to?", r, lambda e: (e[0], e[1]) == (g, o), 2)]
    rng.shuffle(asks)
    for question, answer, fits, slot in asks:
        if len({e[slot] for e in events if fits(e)}) == 1:
            return facts, question, answer
    return story_qa5(rng, gives)  # every reading ambiguous: draw another story


STORIES = {"qa1": story_qa1, "qa2": story_qa2, "qa3": story_qa3, "qa4": story_qa4, "qa5": story_qa5}


def babi(name: str, index: int, length: int, rng: random.Random, ctx: TaskContext) -> Sample:
    """``babilong_qaN``: one story's facts at sorted random depths through the essays."""
    facts, question, answer = STORIES[name.split("_", 1)[1]](rng)
    budget = context_budget(ctx.tokenizer, length, INSTRUCTION, f"Question: {question}", " Answer:", 16)
    depths = sorted(rng.choice(RULER_DEPTHS) for _ in facts)
    return Sample(f"{name}/{length}/{index}", name, length, ctx.haystack.context(budget, facts, depths), INSTRUCTION,
                  f"Question: {question}", question, " Answer:", [answer], "string_match_part", 16)
