"""The bAbI simulator against a plain reader that re-derives each answer from the fact sentences."""

import random
import re

import pytest

from memadapter.evaluation.babi import OPPOSITE, STORIES


def read_world(facts):
    """Replay the facts: (person -> room, object -> room, object -> rooms visited, gives)."""
    room, holder, obj_room, history, gives = {}, {}, {}, {}, []
    for f in facts:
        if m := re.fullmatch(r"(\w+) (?:moved|went|travelled|journeyed) to the (\w+)\.", f):
            room[m[1]] = m[2]
            for o, h in holder.items():
                if h == m[1]:
                    obj_room[o] = m[2]
                    if history[o][-1] != m[2]:
                        history[o].append(m[2])
        elif m := re.fullmatch(r"(\w+) picked up the (\w+)\.", f):
            holder[m[2]] = m[1]
            obj_room[m[2]] = room[m[1]]
            history.setdefault(m[2], [])
            if not history[m[2]] or history[m[2]][-1] != room[m[1]]:
                history[m[2]].append(room[m[1]])
        elif m := re.fullmatch(r"(\w+) put down the (\w+)\.", f):
            holder[m[2]] = None
        elif m := re.fullmatch(r"(\w+) gave the (\w+) to (\w+)\.", f):
            gives.append((m[1], m[2], m[3]))
    return room, obj_room, history, gives


def expected(task, facts, question):
    room, obj_room, history, gives = read_world(facts)
    if task == "qa1":
        return room[re.fullmatch(r"Where is (\w+)\?", question)[1]]
    if task == "qa2":
        return obj_room[re.fullmatch(r"Where is the (\w+)\?", question)[1]]
    if task == "qa3":
        obj, last = re.fullmatch(r"Where was the (\w+) before the (\w+)\?", question).groups()
        rooms = history[obj]
        assert rooms.count(last) == 1 and rooms[-1] == last
        return rooms[-2]
    if task == "qa4":
        north_of = [re.fullmatch(r"The (\w+) is (\w+) of the (\w+)\.", f).groups() for f in facts]
        if m := re.fullmatch(r"What is (\w+) of the (\w+)\?", question):
            return {a for a, d, b in north_of if (d, b) == (m[1], m[2])}
        m = re.fullmatch(r"What is the (\w+) (\w+) of\?", question)  # the mid room lies <m[2]> of the answer
        return {a for a, d, b in north_of if b == m[1] and OPPOSITE[d] == m[2]}
    if m := re.fullmatch(r"Who gave the (\w+) to (\w+)\?", question):
        return {g for g, o, r in gives if (o, r) == (m[1], m[2])}
    if m := re.fullmatch(r"What did (\w+) give to (\w+)\?", question):
        return {o for g, o, r in gives if (g, r) == (m[1], m[2])}
    m = re.fullmatch(r"Who did (\w+) give the (\w+) to\?", question)
    return {r for g, o, r in gives if (g, o) == (m[1], m[2])}


@pytest.mark.parametrize("task", sorted(STORIES))
def test_every_answer_follows_from_the_facts(task):
    for seed in range(40):
        facts, question, answer = STORIES[task](random.Random(seed))
        want = expected(task, facts, question)
        assert (want == {answer}) if isinstance(want, set) else (want == answer), (facts, question, answer)
