"""Batches lifecycle streams for teacher-forced adapter training.

A feature is one stream, token-labelled as ``labels.token_labels`` returns it
(``input_ids``, ``tag_ids``, ``event_spans``, ``event_types``, ``write_labels``) together with the
generator's ``events`` metadata and ``questions``. A feature that still holds raw ``text`` is
labelled here through ``labels.token_labels``. Span, event-type, version and write labels
are training targets only; nothing at inference reads them.

The batch (B streams, N events at most, Q questions over all streams, right padding)::

    input_ids, attention_mask, tag_ids, event_type_ids      [B, T]   (targets -100 at padding)
    confidence_targets                                       [B, T]   float, NaN where ignored
    key_spans, value_spans                                   [B, N, 2] token spans, end exclusive
    event_mask [B, N] bool, event_types [B, N], write_labels [B, N] float
    event_groups [B, N]: which fact (entity, attribute) of its stream each event is about, -1 unknown
    qa_input_ids, qa_attention_mask, qa_question_mask, qa_labels   [Q, L]  question + answer tokens;
        labels only on the answer (and EOS), the question mask marks what the query head may read
    question_stream [Q], answer_event [Q] (-1: no gold event), question_kind [Q] (index into kinds)
    negative_kind [Q, N]: 0 other, 1 same entity other attribute, 2 same attribute older version,
        3 look-alike entity (see memadapter.training.losses.NEGATIVE_KINDS)

Example:
    >>> collate = MemAdapterCollator(tokenizer)                        # doctest: +SKIP
    >>> batch = collate([token_labelled_stream_1, token_labelled_stream_2])  # doctest: +SKIP
    >>> batch["input_ids"].shape, batch["qa_input_ids"].shape          # doctest: +SKIP
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from memadapter.errors import ConfigError, EmptyInputError, ShapeError
from memadapter.heads import EVENT_TYPES, decode_spans

from .losses import IGNORE_INDEX, NEG_LOOKALIKE, NEG_NONE, NEG_OLDER_VERSION, NEG_SAME_ENTITY

DEFAULT_QUESTION_KINDS: tuple[str, ...] = (
    "overwrite", "version", "distractor", "uniform", "retraction", "no_write", "alias", "other",
)
# Names the data generator may use for an event type; ints pass through unchanged.
_EVENT_ALIASES = {
    "new": 0, "new_fact": 0, "fact": 0, "write": 0,
    "update": 1, "newer_version": 1, "version": 1, "overwrite": 1, "rename": 1,
    "retract": 2, "retraction": 2, "delete": 2,
    "irrelevant": 3, "distractor": 3, "noise": 3, "filler": 3,
}
LOOKALIKE_RATIO = 0.6  # difflib ratio from which two different entity names count as look-alikes


def event_type_id(value: Any) -> int:
    """An event type as the generator writes it (int or name) -> index into ``EVENT_TYPES``."""
    if isinstance(value, bool):
        raise ConfigError(f"event_types: expected an int or a name, got {value!r}")
    if isinstance(value, int) and 0 <= value < len(EVENT_TYPES):
        return value
    if isinstance(value, str) and value.lower() in _EVENT_ALIASES:
        return _EVENT_ALIASES[value.lower()]
    raise ConfigError(f"event_types: unknown event type {value!r}; expected 0..{len(EVENT_TYPES) - 1} or one of "
                      f"{sorted(_EVENT_ALIASES)}")


def _norm(name: Any) -> str:
    return " ".join(str(name or "").lower().split())


_STOPWORDS = frozenset({"the", "a", "an", "of", "project", "mr", "ms", "dr"})


def looks_alike(a: Any, b: Any) -> bool:
    """Different entity names that share a content word or are close in spelling ("Alice Ng" / "Alicia Ng")."""
    a, b = _norm(a), _norm(b)
    if not a or not b or a == b:
        return False
    wa, wb = set(a.split()) - _STOPWORDS, set(b.split()) - _STOPWORDS
    return bool(wa & wb) or difflib.SequenceMatcher(None, " ".join(sorted(wa)), " ".join(sorted(wb))).ratio() >= LOOKALIKE_RATIO


def negative_kinds(events: Sequence[dict], answer_event: int) -> list[int]:
    """Hard-negative kind of every event of a stream for a question whose answer is ``answer_event``."""
    if not 0 <= answer_event < len(events):
        return [NEG_NONE] * len(events)
    gold = events[answer_event]
    ent, attr = _norm(gold.get("entity")), _norm(gold.get("attribute"))
    gold_version = gold.get("version")
    kinds = []
    for j, ev in enumerate(events):
        e_ent, e_attr = _norm(ev.get("entity")), _norm(ev.get("attribute"))
        kind = NEG_NONE
        if j == answer_event or not ent:
            pass
        elif e_ent == ent and e_attr != attr:
            kind = NEG_SAME_ENTITY
        elif e_ent == ent and e_attr == attr and _older(ev.get("version"), gold_version, j, answer_event):
            kind = NEG_OLDER_VERSION
        elif looks_alike(e_ent, ent) and ev.get("role", "lookalike") == "lookalike":
            # The generator marks its look-alike distractors (role); without roles, names decide.
            kind = NEG_LOOKALIKE
        kinds.append(kind)
    return kinds


def fact_groups(events: Sequence[dict]) -> list[int]:
    """Which fact (entity, attribute) each event of a stream is about: ids 0.. in order of first
    appearance, -1 when the generator gave no entity or attribute (a training target only)."""
    ids: dict[tuple[str, str], int] = {}
    out = []
    for ev in events:
        key = (_norm(ev.get("entity")), _norm(ev.get("attribute")))
        out.append(ids.setdefault(key, len(ids)) if all(key) else -1)
    return out


def _older(version: Any, gold_version: Any, j: int, gold: int) -> bool:
    # Versions when the generator gives them, stream order otherwise.
    if isinstance(version, (int, float)) and isinstance(gold_version, (int, float)):
        return version < gold_version
    return j < gold


def split_event_span(tags: Sequence[int], start: int, end: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Key and value token spans inside an event span, from the BIO tags (absolute positions).

    No key tag: the whole event is the key. No value tag: the value pools over the key span,
    as GroundingHead does for retractions.
    """
    spans = decode_spans([int(t) for t in tags[start:end]])
    key = next(((start + s, start + e) for k, s, e in spans if k == "key"), (start, end))
    value = next(((start + s, start + e) for k, s, e in spans if k == "value" and s + start >= key[0]), key)
    return key, value


@dataclass
class MemAdapterCollator:
    """Collates token-labelled lifecycle streams and their questions into one training batch.

    Example:
        >>> collate = MemAdapterCollator(tokenizer, max_length=256)   # doctest: +SKIP
        >>> batch = collate(features)                                 # doctest: +SKIP
    """

    tokenizer: Any
    max_length: Optional[int] = None
    max_question_length: int = 64
    questions_per_stream: Optional[int] = None
    question_kinds: Sequence[str] = field(default_factory=lambda: DEFAULT_QUESTION_KINDS)

    def __post_init__(self) -> None:
        for name in ("max_length", "questions_per_stream"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ConfigError(f"{name}: must be an int > 0 or None, got {v!r}")
        if isinstance(self.max_question_length, bool) or not isinstance(self.max_question_length, int) \
                or self.max_question_length < 2:
            raise ConfigError(f"max_question_length: must be an int >= 2, got {self.max_question_length!r}")
        self.question_kinds = tuple(self.question_kinds)
        if not self.question_kinds:
            raise ConfigError("question_kinds: needs at least one kind")

    # ------------------------------------------------------------------ public
    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise EmptyInputError("features: the collator needs at least one stream")
        streams = [self._stream(f, i) for i, f in enumerate(features)]
        batch = self._pad_streams(streams)
        batch.update(self._questions(streams, batch["event_mask"].shape[1]))
        return batch

    def kind_name(self, index: int) -> str:
        return self.question_kinds[index]

    # ------------------------------------------------------------------ one stream
    def _labelled(self, feature: dict, i: int) -> dict:
        if "input_ids" in feature:
            return feature
        if "text" not in feature:
            raise ConfigError(f"features[{i}]: needs token labels (input_ids, tag_ids, ...) or raw 'text'")
        from .labels import token_labels  # the data side owns char -> token labelling

        return {**feature, **token_labels(feature, self.tokenizer)}

    def _stream(self, feature: dict, i: int) -> dict:
        f = self._labelled(feature, i)
        ids, tags = list(f["input_ids"]), list(f["tag_ids"])
        if len(ids) != len(tags) or not ids:
            raise ShapeError(f"features[{i}]: input_ids ({len(ids)}) and tag_ids ({len(tags)}) must be equal and non-empty")
        spans, types, writes = list(f["event_spans"]), list(f["event_types"]), list(f["write_labels"])
        if not len(spans) == len(types) == len(writes):
            raise ShapeError(f"features[{i}]: event_spans/event_types/write_labels lengths differ "
                             f"({len(spans)}, {len(types)}, {len(writes)})")
        # event_index: which generator event each labelled one is (labels drop events cut by truncation).
        index = list(f.get("event_index") or range(len(spans)))
        all_meta = list(f.get("events") or [])
        if all_meta and (len(index) != len(spans) or max(index, default=-1) >= len(all_meta)):
            raise ShapeError(f"features[{i}]: {len(all_meta)} events do not cover event_index {index}")
        T = min(len(ids), self.max_length or len(ids))
        events, remap = [], {}
        for n, (s, e) in enumerate(spans):
            key, value = self._event_spans(f, n, tags, int(s), int(e))
            if not (0 <= s < e <= T and key[1] <= T and value[1] <= T):
                continue  # cut off by truncation: the event and questions about it go
            remap[index[n]] = len(events)
            events.append(dict(key=key, value=value, type=event_type_id(types[n]), write=float(writes[n]),
                               meta=all_meta[index[n]] if all_meta else {}))
        questions = [self._question(q, remap) for q in list(f.get("questions") or [])]
        if self.questions_per_stream is not None:
            questions = questions[: self.questions_per_stream]
        per_token = {name: list(f[name])[:T] for name in ("event_targets", "confidence_targets") if name in f}
        return dict(ids=ids[:T], tags=tags[:T], events=events, questions=questions, **per_token)

    @staticmethod
    def _event_spans(f: dict, n: int, tags: list, s: int, e: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Key / value token spans: as labelled when given (value [-1, -1]: none), else from the tags."""
        if "key_spans" not in f:
            return split_event_span(tags, s, e)
        key = (int(f["key_spans"][n][0]), int(f["key_spans"][n][1]))
        v = f["value_spans"][n]
        return key, ((int(v[0]), int(v[1])) if int(v[0]) >= 0 else key)

    def _question(self, q: dict, remap: dict[int, int]) -> dict:
        gold = q.get("answer_event")
        gold = remap.get(int(gold), -1) if gold is not None and int(gold) >= 0 else -1
        kind = str(q.get("kind", "other"))
        kind_id = self.question_kinds.index(kind) if kind in self.question_kinds else len(self.question_kinds) - 1
        return dict(question=str(q["question"]), answer=str(q["answer"]), gold=gold, kind=kind_id)

    # ------------------------------------------------------------------ padding
    def _pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return 0 if pad is None else int(pad)

    def _pad_streams(self, streams: list[dict]) -> dict[str, torch.Tensor]:
        B, T = len(streams), max(len(s["ids"]) for s in streams)
        N = max(1, max(len(s["events"]) for s in streams))
        out = dict(
            input_ids=torch.full((B, T), self._pad_id(), dtype=torch.long),
            attention_mask=torch.zeros(B, T, dtype=torch.long),
            tag_ids=torch.full((B, T), IGNORE_INDEX, dtype=torch.long),
            event_type_ids=torch.full((B, T), IGNORE_INDEX, dtype=torch.long),
            confidence_targets=torch.full((B, T), float("nan")),
            key_spans=torch.zeros(B, N, 2, dtype=torch.long),
            value_spans=torch.zeros(B, N, 2, dtype=torch.long),
            event_mask=torch.zeros(B, N, dtype=torch.bool),
            event_types=torch.full((B, N), IGNORE_INDEX, dtype=torch.long),
            write_labels=torch.zeros(B, N),
            event_groups=torch.full((B, N), -1, dtype=torch.long),
        )
        for b, s in enumerate(streams):
            n_tok = len(s["ids"])
            if "event_targets" in s:
                out["event_type_ids"][b, :n_tok] = torch.tensor(s["event_targets"])
            out["input_ids"][b, :n_tok] = torch.tensor(s["ids"])
            out["attention_mask"][b, :n_tok] = 1
            out["tag_ids"][b, :n_tok] = torch.tensor(s["tags"])
            if "confidence_targets" in s:
                out["confidence_targets"][b, :n_tok] = torch.tensor(s["confidence_targets"], dtype=torch.float)
            for n, ev in enumerate(s["events"]):
                if "event_targets" not in s:  # the range GroundingHead pools: key start .. value end
                    out["event_type_ids"][b, ev["key"][0]:max(ev["key"][1], ev["value"][1])] = ev["type"]
                out["key_spans"][b, n] = torch.tensor(ev["key"])
                out["value_spans"][b, n] = torch.tensor(ev["value"])
                out["event_mask"][b, n] = True
                out["event_types"][b, n] = ev["type"]
                out["write_labels"][b, n] = ev["write"]
            out["event_groups"][b, : len(s["events"])] = torch.tensor(fact_groups([ev["meta"] for ev in s["events"]]))
        return out

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _qa_row(self, q: dict) -> tuple[list[int], int]:
        """Question then answer (+ EOS) token ids, and how many leading tokens are the question."""
        answer = self._encode(" " + q["answer"].strip())
        eos = getattr(self.tokenizer, "eos_token_id", None)
        answer = answer + ([int(eos)] if eos is not None else [])
        if len(answer) >= self.max_question_length:
            raise ShapeError(f"max_question_length: answer {q['answer']!r} needs {len(answer)} tokens, "
                             f"more than the limit {self.max_question_length}")
        question = self._encode(q["question"].strip())
        if not question:
            raise EmptyInputError(f"questions: question {q['question']!r} has no tokens")
        question = question[-(self.max_question_length - len(answer)):]  # keep the end, next to the answer
        return question + answer, len(question)

    def _questions(self, streams: list[dict], N: int) -> dict[str, torch.Tensor]:
        rows, q_lens, stream_of, golds, kinds, negs = [], [], [], [], [], []
        for b, s in enumerate(streams):
            meta = [ev["meta"] for ev in s["events"]]
            for q in s["questions"]:
                row, n_q = self._qa_row(q)
                rows.append(row)
                q_lens.append(n_q)
                stream_of.append(b)
                golds.append(q["gold"])
                kinds.append(q["kind"])
                negs.append(negative_kinds(meta, q["gold"]) + [NEG_NONE] * (N - len(meta)))
        Q, L = len(rows), max([len(r) for r in rows], default=1)
        out = dict(
            qa_input_ids=torch.full((Q, L), self._pad_id(), dtype=torch.long),
            qa_attention_mask=torch.zeros(Q, L, dtype=torch.long),
            qa_question_mask=torch.zeros(Q, L, dtype=torch.bool),
            qa_labels=torch.full((Q, L), IGNORE_INDEX, dtype=torch.long),
            question_stream=torch.tensor(stream_of, dtype=torch.long),
            answer_event=torch.tensor(golds, dtype=torch.long),
            question_kind=torch.tensor(kinds, dtype=torch.long),
            negative_kind=torch.tensor(negs, dtype=torch.long).reshape(Q, N),
        )
        for i, (row, n_q) in enumerate(zip(rows, q_lens)):
            out["qa_input_ids"][i, : len(row)] = torch.tensor(row)
            out["qa_attention_mask"][i, : len(row)] = 1
            out["qa_question_mask"][i, :n_q] = True
            out["qa_labels"][i, n_q: len(row)] = torch.tensor(row[n_q:])
        return out
