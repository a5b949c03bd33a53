"""The read path (modeling/reader.py) on tiny backbones: routing, the grounded fallback, lexical
agreement, and the lifecycle rules that pick what a question reads."""

import pytest
import torch
from conftest import STREAM, build, ingest, tiny_backbone

from memadapter.errors import ConfigError
from memadapter.modeling import MemAdapterConfig, MemAdapterForCausalLM
from memadapter.modeling.selection import GroundedEvent


def test_router_branches_memory_then_chunk_fallback(tokenizer):
    bb = tiny_backbone("llama")
    model = build(bb, tokenizer, "text", router_match_threshold=-1.0)  # any occupied slot matches
    mem = model.new_memory()
    mem.write("alice city", "paris")
    enc = tokenizer(["where does alice lives"], return_tensors="pt")
    sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
    assert sel.branch == ["memory"] and sel.texts[0] == ["alice city: paris"]
    # Ingested slots (confidence = p_write ~ 0.88) below the confidence bar: the row falls back to chunks.
    strict = build(bb, tokenizer, "text", router_match_threshold=-1.0, router_confidence_threshold=0.95)
    mem2 = ingest(strict, [STREAM])
    assert mem2.table()
    sel2 = strict.select(mem2, enc["input_ids"], enc["attention_mask"])
    assert sel2.branch == ["fallback"] and all(t in {mem2.indexes[0].text(i) for i in range(len(mem2.indexes[0]))} for t in sel2.texts[0])
    with pytest.raises(ConfigError, match="config_overrides"):
        MemAdapterForCausalLM.from_pretrained(bb, adapter="x/y", num_slots=3)


def test_ground_fallback_injects_the_best_matching_event_of_the_retrieved_chunks(tokenizer):
    """No slot matches (threshold 2): the retrieved chunks are re-read, and the proposed event whose
    key best matches the question is injected as one entry, with its value tokens."""
    bb = tiny_backbone("llama")
    model = build(bb, tokenizer, "prefix", router_match_threshold=2.0, ground_fallback=True, value_tokens=4)
    mem = ingest(model, [STREAM])
    enc = tokenizer(["where does alice live"], return_tensors="pt")
    sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
    assert sel.branch == ["fallback"] and len(sel.texts[0]) == 1 and int(sel.valid.sum()) == 1
    key_text, value_text = sel.texts[0][0].split(": ", 1)
    chunks = " ".join(mem.indexes[0].text(i) for i in range(len(mem.indexes[0])))
    assert key_text.strip() in chunks and value_text.strip() in chunks
    want = tokenizer(" " + value_text.strip(), add_special_tokens=False)["input_ids"][:4]
    assert [i for i in sel.value_ids[0, 0].tolist() if i >= 0] == want
    # Without it the same row injects whole retrieved chunks, with no value tokens to copy.
    plain = build(bb, tokenizer, "prefix", router_match_threshold=2.0, value_tokens=4)
    sel2 = plain.select(ingest(plain, [STREAM]), enc["input_ids"], enc["attention_mask"])
    assert all(t in chunks for t in sel2.texts[0]) and bool((sel2.value_ids == -1).all())


def test_lexical_weight_lets_the_words_of_the_question_pick_the_slot(tokenizer):
    """Untrained keys cannot tell two facts apart; the question's words against the slots' key
    texts can. A large lexical weight makes the selection follow the named entity."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_match_threshold=-1.0,
                  router_confidence_threshold=0.0, top_k=1, lexical_weight=10.0)
    mem = model.new_memory()
    mem.write("bob city", "rome")
    mem.write("alice city", "paris")
    for question, want in (("where does alice live", "alice city: paris"), ("what city is bob in", "bob city: rome")):
        enc = tokenizer([question], return_tensors="pt")
        assert model.select(mem, enc["input_ids"], enc["attention_mask"]).texts[0] == [want]
    with pytest.raises(ConfigError, match="lexical_weight"):
        MemAdapterForCausalLM.from_pretrained(tiny_backbone("llama"), tokenizer=tokenizer, read={"lexical_weight": -1.0})


def test_fallback_chunks_widens_the_fallback_search_not_the_slot_count(tokenizer):
    """fallback_chunks sets how many chunks the fallback retrieves (top_k when None); without
    grounding each retrieved chunk's summary is injected, so the row shows the count."""
    for n_chunks, want in ((None, 1), (3, 3)):
        model = build(tiny_backbone("llama"), tokenizer, "prefix", router_match_threshold=2.0, top_k=1,
                      fallback_chunks=n_chunks)  # no slot can reach 2.0: every question falls back
        mem = ingest(model, [STREAM])
        enc = tokenizer(["where does alice live"], return_tensors="pt")
        sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
        assert sel.branch == ["fallback"] and len(sel.texts[0]) == want
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="fallback_chunks"):
            MemAdapterConfig(read={"fallback_chunks": bad})


def test_lexical_text_sentence_tells_apart_two_facts_of_one_entity(tokenizer):
    """Two slots with the same key text ("bob"): their key texts tie, their sentences (re-read from
    the chunks they came from) carry the relation words that the question shares with one of them."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_match_threshold=-1.0,
                  router_confidence_threshold=0.0, top_k=1, lexical_weight=10.0, lexical_text="sentence")
    mem = model.new_memory()
    for i, text in enumerate(("bob lives in rome", "the color of bob is red")):
        n = len(text.split())
        mem.indexes[0].add(torch.randn(1, model.config.hidden_size), [text], torch.tensor([[10 * i, 10 * i + n]]))
    keys = torch.nn.functional.normalize(torch.tensor([[[1.0] + [0.0] * 15, [0.0, 1.0] + [0.0] * 14]]), dim=-1)
    mem.slots.write(keys, torch.randn(1, 2, 16), chunk_id=torch.tensor([[0, 1]]),
                    span=torch.tensor([[[0, 4], [13, 16]]]), key_text=[["bob", "bob"]], value_text=[["rome", "red"]])
    assert [r["value_text"] for r in mem.table()] == ["rome", "red"]
    assert model._slot_lexical_texts(mem, 0)[:2] == ["bob lives in rome", "the color of bob is red"]
    for question, want in (("the color of bob", "bob: red"), ("bob lives where", "bob: rome")):
        enc = tokenizer([question], return_tensors="pt")
        assert model.select(mem, enc["input_ids"], enc["attention_mask"]).texts[0] == [want], question
    model.config.read.lexical_text = "key"
    assert model._slot_lexical_texts(mem, 0)[:2] == ["bob", "bob"]
    with pytest.raises(ConfigError, match="lexical_text"):
        MemAdapterConfig(read={"lexical_text": "chunk"})


def test_lexical_content_words_leaves_now_out_of_the_lexical_agreement(tokenizer):
    """The question's "now" names the other attribute's update sentence; its content words do not."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_match_threshold=-1.0,
                  router_confidence_threshold=0.0, top_k=1, lexical_weight=10.0, lexical_text="sentence")
    mem = model.new_memory()
    texts = ("the color of bob is now red", "the city of bob is rome in the old version")
    for i, text in enumerate(texts):
        mem.indexes[0].add(torch.randn(1, model.config.hidden_size), [text], torch.tensor([[20 * i, 20 * i + len(text.split())]]))
    keys = torch.eye(16)[None, :2]  # two facts; lexical_weight 10 lets the words decide
    mem.slots.write(keys, torch.randn(1, 2, 16), chunk_id=torch.tensor([[0, 1]]), span=torch.tensor([[[3, 7], [23, 27]]]),
                    key_text=[["bob", "bob"]], value_text=[["red", "rome"]])
    assert [r["value_text"] for r in mem.table()] == ["red", "rome"]
    enc = tokenizer(["what city is bob in now"], return_tensors="pt")
    picks = []
    for on in (False, True):
        model.config.read.lexical_content_words = on
        picks.append(model.select(mem, enc["input_ids"], enc["attention_mask"]).texts[0])
    assert picks == [["bob: red"], ["bob: rome"]]


def test_a_retrieved_event_that_names_the_question_better_replaces_the_slot(tokenizer, monkeypatch):
    """The lookalike rule of select: a grounded event from the retrieved chunks replaces the selected
    slot only when its key text covers strictly more of the question's words (the grounding is
    fixed here; what it proposes on real text is the trained head's job)."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_match_threshold=-1.0,
                  router_confidence_threshold=0.0, top_k=1, lexical_weight=0.2, ground_fallback=True)
    mem = ingest(model, [STREAM])
    mem.slots.reset()
    mem.write("bob city", "rome")  # words the tiny tokenizer knows; think "the Lumen printer"

    def event(key: str):
        return lambda *args: [GroundedEvent(key, "paris", torch.zeros(16), torch.zeros(16), "new", 1.0, 0)]

    cases = (("old bob", "where does old bob live", "old bob: paris"),  # "the Lumen Mini printer"
             ("old bob", "where does bob live", "bob city: rome"),
             ("bob", "where does old bob live", "bob city: rome"))  # same words: the slot's lifecycle wins
    for key, question, want in cases:
        monkeypatch.setattr(model, "_ground_chunks", event(key))
        enc = tokenizer([question], return_tensors="pt")
        assert model.select(mem, enc["input_ids"], enc["attention_mask"]).texts[0] == [want], (key, question)


def test_named_events_any_lets_a_lower_scored_event_that_names_the_question_replace_the_slot(tokenizer, monkeypatch):
    """The best grounded event carries the slot's own name (an older fact of it); another event names
    the look-alike the question asks about. "best" keeps the slot, "any" takes the named event."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_match_threshold=-1.0,
                  router_confidence_threshold=0.0, top_k=1, lexical_weight=0.2, ground_fallback=True)
    mem = ingest(model, [STREAM])
    mem.slots.reset()
    mem.write("bob city", "rome")
    events = [GroundedEvent("bob", "paris", torch.zeros(16), torch.zeros(16), "new", 2.0, 0),
              GroundedEvent("old bob", "berlin", torch.zeros(16), torch.zeros(16), "new", 1.0, 0)]
    monkeypatch.setattr(model, "_ground_chunks", lambda *args: events)
    enc = tokenizer(["where does old bob live"], return_tensors="pt")
    for mode, want in (("best", "bob city: rome"), ("any", "old bob: berlin")):
        model.config.read.named_events = mode
        assert model.select(mem, enc["input_ids"], enc["attention_mask"]).texts[0] == [want], mode
    with pytest.raises(ConfigError, match="named_events"):
        MemAdapterConfig(read={"named_events": "all"})


def test_version_margin_reads_the_newest_of_two_versions_of_a_fact(tokenizer):
    """Two slots hold versions of one fact (an update that missed the old slot at write time):
    the keys rank the older one first by a hair; with version_margin the later write is read."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_match_threshold=-1.0,
                  router_confidence_threshold=0.0, top_k=1, slot_match_threshold=0.999)  # two slots, not one
    mem = model.new_memory()
    enc = tokenizer(["where does alice live"], return_tensors="pt")
    with torch.no_grad():
        q = model.query_head(model._hidden(enc["input_ids"], enc["attention_mask"]), enc["attention_mask"].bool())
    q = torch.nn.functional.normalize(q.float().cpu(), dim=-1)[0]
    other = torch.nn.functional.normalize(torch.randn(16), dim=0)
    other = torch.nn.functional.normalize(other - (other @ q) * q, dim=0)  # orthogonal to the query
    old, new = q, torch.nn.functional.normalize(q + 0.2 * other, dim=0)  # cosines 1.0 and ~0.98
    for key, value in ((old, "paris"), (new, "berlin"), (-q, "rome")):
        mem.slots.write(key[None, None], torch.randn(1, 1, 16), key_text=[["alice"]], value_text=[[value]])
    select = lambda: model.select(mem, enc["input_ids"], enc["attention_mask"]).texts[0]
    assert select() == ["alice: paris"]
    model.config.read.version_margin = 0.1
    assert select() == ["alice: berlin"]
    model.config.read.version_margin = 0.001  # the newer version is not a near tie at this margin
    assert select() == ["alice: paris"]
    model.config.read.version_margin, model.config.read.version_key_cosine = 0.1, 0.99  # nor a version at this cosine
    assert select() == ["alice: paris"]
    for bad in (-0.1, float("nan"), "0.1", True):
        with pytest.raises(ConfigError, match="version_margin"):
            MemAdapterConfig(read={"version_margin": bad})
    with pytest.raises(ConfigError, match="version_key_cosine"):
        MemAdapterConfig(read={"version_key_cosine": 1.5})


def test_a_later_grounded_update_of_the_slots_fact_replaces_the_slot(tokenizer, monkeypatch):
    """An update the write path missed: the retrieved chunks hold a later update of the slot's fact.
    With version_margin it replaces the slot when it comes after the slot's event, scores within
    the margin of the slot's key match and has the slot's key; otherwise the slot stays."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_match_threshold=-1.0,
                  router_confidence_threshold=0.0, top_k=1, lexical_weight=0.2, ground_fallback=True)
    mem = ingest(model, [STREAM])
    mem.slots.reset()
    key = model.encode_text(["alice city"], "key")  # [1, dk], unit
    mem.slots.write(key[:, None], torch.randn(1, 1, 16), chunk_id=torch.tensor([[0]]), span=torch.tensor([[[10, 14]]]),
                    key_text=[["alice"]], value_text=[["paris"]])
    enc = tokenizer(["where does alice live"], return_tensors="pt")
    other = torch.nn.functional.normalize(torch.randn(key.shape[1]), dim=0)

    def events(position: int, score: float, kind: str = "update", event_key=key[0]):
        return lambda *args: [GroundedEvent("alice", "berlin", torch.zeros(16), event_key, kind, score, position)]

    cases = ((None, events(40, 5.0), "alice: paris"),  # off: same words, the slot's lifecycle wins
             (0.1, events(40, 5.0), "alice: berlin"),  # later, scores above the slot
             (0.1, events(40, -5.0), "alice: paris"),  # later, but far below the slot's match
             (0.1, events(5, 5.0), "alice: paris"),  # before the slot's event: an older version
             (0.1, events(40, 5.0, "new"), "alice: paris"),  # not said to replace anything
             (0.1, events(40, 5.0, event_key=other), "alice: paris"))  # another fact's key
    for margin, grounded, want in cases:
        model.config.read.version_margin = margin
        monkeypatch.setattr(model, "_ground_chunks", grounded)
        assert model.select(mem, enc["input_ids"], enc["attention_mask"]).texts[0] == [want], (margin, want)


def test_a_withdrawn_slot_is_selected_as_no_longer_known(tokenizer):
    """A tombstone answers its question: its text says the fact was withdrawn, and it has no value
    tokens to copy (the trained adapter learned "unknown" from retraction events without them)."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", retract_tombstones=True, value_tokens=4,
                  router_match_threshold=-1.0, router_confidence_threshold=0.0)
    mem = model.new_memory()
    mem.write("Alice city", "Paris")
    key = model.encode_text(["Alice city"], "key")
    mem.slots.write(key, model.encode_text(["gone"], "value"), event=torch.tensor([[2]]), key_text=[["Alice"]])
    assert mem.table()[0]["retracted"] and mem.table()[0]["value_text"] is None
    enc = tokenizer(["Where does Alice live?"], return_tensors="pt")
    sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
    assert sel.branch == ["memory"] and sel.texts[0] == ["Alice city: no longer known"]
    assert bool((sel.value_ids == -1).all())
    # withdrawn_text: the withdrawn slot copies that text's tokens instead of nothing.
    model.config.read.withdrawn_text = "unknown"
    sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
    want = model.value_token_ids("unknown")
    assert want and sel.value_ids[0, 0, : len(want)].tolist() == want
    assert sel.texts[0] == ["Alice city: no longer known"]
    for bad in ("", "  ", 3):
        with pytest.raises(ConfigError, match="withdrawn_text"):
            MemAdapterConfig(read={"withdrawn_text": bad})


def _query_key(model, enc) -> torch.Tensor:
    """The unit query key the model computes for ``enc`` [dk]: slot keys are placed against it."""
    with torch.no_grad():
        q = model.query_head(model._hidden(enc["input_ids"], enc["attention_mask"]), enc["attention_mask"].bool())
    return torch.nn.functional.normalize(q.float().cpu(), dim=-1)[0]


def test_read_rule_joint_lets_slots_and_grounded_events_compete_and_reads_the_latest_version(tokenizer, monkeypatch):
    """read_rule="joint": one pool, one score. A slot at stream position 40 scores 1.0 (its key is
    the query's); grounded events come with their own scores, positions and keys."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_match_threshold=2.0,  # the router never says memory
                  router_confidence_threshold=0.0, top_k=1, ground_fallback=True, read_rule="joint",
                  version_margin=0.2)
    mem = ingest(model, [STREAM])
    mem.slots.reset()
    enc = tokenizer(["where does alice live"], return_tensors="pt")
    q = _query_key(model, enc)
    other = torch.nn.functional.normalize(torch.randn(q.shape[0]), dim=0)
    other = torch.nn.functional.normalize(other - (other @ q) * q, dim=0)  # another fact's key
    mem.slots.write(q[None, None], torch.randn(1, 1, 16), chunk_id=torch.tensor([[0]]), span=torch.tensor([[[40, 44]]]),
                    key_text=[["alice"]], value_text=[["paris"]])

    def grounded(key_text: str, score: float, position: int, kind: str = "update", key=q):
        return lambda *args: [GroundedEvent(key_text, "berlin", torch.zeros(16), key, kind, score, position)]

    cases = ((grounded("alice", 1.1, 10), "alice: paris"),  # an older version scores higher: the slot is newer
             (grounded("alice", 0.9, 60), "alice: berlin"),  # a later update within the margin
             (grounded("alice", 0.7, 60), "alice: paris"),  # ... not within it
             (grounded("alice", 0.9, 60, "new"), "alice: paris"),  # not said to replace anything
             (grounded("alice", 1.5, 10, key=other), "alice: berlin"),  # another fact that matches better
             (grounded("old", 1.5, 60, key=other), "alice: paris"))  # names none of the question's words
    for events, want in cases:
        monkeypatch.setattr(model, "_ground_chunks", events)
        sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
        assert sel.texts[0] == [want] and sel.branch[0] == ("memory" if want == "alice: paris" else "fallback")
    # the route rule never brings the slot in: the router sends the row to the fallback
    model.config.read.read_rule = "route"
    monkeypatch.setattr(model, "_ground_chunks", grounded("alice", 1.1, 10))
    assert model.select(mem, enc["input_ids"], enc["attention_mask"]).texts[0] == ["alice: berlin"]
    with pytest.raises(ConfigError, match="read_rule"):
        MemAdapterConfig(read={"read_rule": "both"})
    with pytest.raises(ConfigError, match="ground_fallback"):
        MemAdapterConfig(read={"read_rule": "joint"})
    with pytest.raises(ConfigError, match="name_fragments"):
        MemAdapterConfig(read={"name_fragments": 1})


def test_read_rule_joint_without_slots_or_events_injects_chunk_summaries(tokenizer, monkeypatch):
    model = build(tiny_backbone("llama"), tokenizer, "prefix", top_k=1, ground_fallback=True, read_rule="joint")
    mem = ingest(model, [STREAM])
    mem.slots.reset()
    monkeypatch.setattr(model, "_ground_chunks", lambda *args: [])
    enc = tokenizer(["where does alice live"], return_tensors="pt")
    sel = model.select(mem, enc["input_ids"], enc["attention_mask"])
    assert sel.branch == ["fallback"] and sel.texts[0][0] in {mem.indexes[0].text(i) for i in range(len(mem.indexes[0]))}


def test_slot_update_name_weight_reaches_the_slot_memory(tokenizer):
    model = build(tiny_backbone("llama"), tokenizer, "prefix", slot_update_name_weight=0.2)
    assert model.new_memory().slots.update_name_weight == 0.2
    for bad in (-0.1, float("inf")):
        with pytest.raises(ConfigError, match="slot_update_name_weight"):
            MemAdapterConfig(ingest={"slot_update_name_weight": bad})


def test_withdrawn_margin_lets_a_later_withdrawal_replace_a_better_scored_fact(tokenizer, monkeypatch):
    """read_rule="joint": a grounded event of a fact scores 1.5; a later tombstone of the same fact
    (same key) scores 0.71, outside the version margin. With withdrawn_margin it is read."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_confidence_threshold=0.0, top_k=1,
                  ground_fallback=True, read_rule="joint", version_margin=0.2, retract_tombstones=True)
    mem = ingest(model, [STREAM])
    mem.slots.reset()
    enc = tokenizer(["where does alice live"], return_tensors="pt")
    q = _query_key(model, enc)
    other = torch.nn.functional.normalize(torch.randn(q.shape[0]), dim=0)
    fact = torch.nn.functional.normalize(q + torch.nn.functional.normalize(other - (other @ q) * q, dim=0), dim=0)
    mem.slots.write(fact[None, None], torch.randn(1, 1, 16), event=torch.tensor([[2]]), chunk_id=torch.tensor([[0]]),
                    span=torch.tensor([[[80, 84]]]), key_text=[["alice"]])
    assert mem.table()[0]["retracted"]
    for position, margin, want in ((10, None, "alice: berlin"), (10, 1.0, "alice: no longer known"),
                                   (10, 0.5, "alice: berlin"), (90, 1.0, "alice: berlin")):  # 90: after the withdrawal
        model.config.read.withdrawn_margin = margin
        monkeypatch.setattr(model, "_ground_chunks", lambda *args: [
            GroundedEvent("alice", "berlin", torch.zeros(16), fact, "new", 1.5, position)])
        assert model.select(mem, enc["input_ids"], enc["attention_mask"]).texts[0] == [want], (position, margin)
    for bad in (-0.1, float("nan")):
        with pytest.raises(ConfigError, match="withdrawn_margin"):
            MemAdapterConfig(read={"withdrawn_margin": bad})


def test_withdrawn_cover_reads_a_later_withdrawal_whose_sentence_names_the_asked_fact(tokenizer, monkeypatch):
    """read_rule="joint": a grounded event "alice lives in berlin" (score 1.5) and, later in the
    stream, a tombstone slot that scores 0.71. With withdrawn_cover the tombstone is read when its
    sentence names every question word the event's names, and more of them or a key that agrees."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_confidence_threshold=0.0, top_k=1,
                  ground_fallback=True, read_rule="joint", version_margin=0.2, retract_tombstones=True)
    mem = ingest(model, [STREAM])
    mem.slots.reset()
    enc = tokenizer(["where does alice live"], return_tensors="pt")  # the tiny tokenizer reads "where does alice"
    q = _query_key(model, enc)
    other = torch.nn.functional.normalize(torch.randn(q.shape[0]), dim=0)
    other = torch.nn.functional.normalize(other - (other @ q) * q, dim=0)
    fact, elsewhere = [torch.nn.functional.normalize(q + sign * other, dim=0) for sign in (1, -1)]  # cosine 0
    monkeypatch.setattr(model, "_ground_chunks", lambda *args: [
        GroundedEvent("alice", "berlin", torch.zeros(16), fact, "new", 1.5, 10, "alice lives in berlin")])
    for key, sentence, cover, want in ((fact, "forget the city alice lives in", None, "berlin"),
                                       (elsewhere, "forget the city alice lives in", 0.7, "berlin"),
                                       (fact, "forget the city alice lives in", 0.7, "no longer known"),
                                       (elsewhere, "where alice lives is unknown now", 0.7, "no longer known"),
                                       (fact, "please forget bob", -1.0, "berlin")):
        mem.slots.reset()
        mem.slots.write(key[None, None], torch.randn(1, 1, 16), event=torch.tensor([[2]]), chunk_id=torch.tensor([[0]]),
                        span=torch.tensor([[[80, 84]]]), key_text=[["alice"]])
        monkeypatch.setattr(model, "_slot_sentences", lambda memory, b, s=sentence: [s] + [None] * (memory.slots.num_slots - 1))
        model.config.read.withdrawn_cover = cover
        got = model.select(mem, enc["input_ids"], enc["attention_mask"]).texts[0]
        assert got == [f"alice: {want}"], (sentence, cover)
    for bad in (1.5, float("nan")):
        with pytest.raises(ConfigError, match="withdrawn_cover"):
            MemAdapterConfig(read={"withdrawn_cover": bad})


@pytest.mark.parametrize("setting, question, rival, cases", [
    ("restore_by_sentence", "where does alice live",  # the tiny tokenizer reads "where does alice"
     ("where does alice", "rome", "where alice works"),
     (("where alice lives: berlin", False, "rome"), ("where alice lives: berlin", True, "berlin"),
      ("alice: berlin", True, "rome"))),
    ("restore_by_attribute", "what city is alice bob",
     ("alice bob", "red", "alice bob color red"),
     (("alice city berlin", False, "red"), ("alice city berlin", True, "berlin"), ("alice is berlin", True, "red"),
      ("bob city berlin", True, "berlin"), ("carol city berlin", True, "red"))),
])
def test_a_restore_rule_lets_an_event_with_a_cut_key_compete(tokenizer, monkeypatch, setting, question, rival, cases):
    """read_rule="joint", no slots: an event keyed "alice" (score 1.0) names fewer question words
    than the rival (0.5) and drops out, unless the rule puts it back by its sentence:
    restore_by_sentence when it names as many of the question's words, restore_by_attribute when it
    names the asked attribute ("city"), which the rival's does not, beside a word of the entity."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_confidence_threshold=0.0, top_k=1,
                  ground_fallback=True, read_rule="joint")
    mem = ingest(model, [STREAM])
    mem.slots.reset()
    enc = tokenizer([question], return_tensors="pt")
    for sentence, restore, want in cases:
        monkeypatch.setattr(model, "_ground_chunks", lambda *args, s=sentence: [
            GroundedEvent("alice", "berlin", torch.zeros(16), torch.zeros(16), "new", 1.0, 10, s),
            GroundedEvent(rival[0], rival[1], torch.zeros(16), torch.zeros(16), "new", 0.5, 20, rival[2])])
        setattr(model.config.read, setting, restore)
        assert model.select(mem, enc["input_ids"], enc["attention_mask"]).texts[0][0].endswith(want), (sentence, restore)
    with pytest.raises(ConfigError, match=setting):
        MemAdapterConfig(**{setting: 1})


def test_version_events_any_lets_a_correction_typed_new_be_the_latest_version(tokenizer, monkeypatch):
    """read_rule="joint", no slots: two events of one fact (the same key) within version_margin;
    the later one, typed "new", is read as the newer version only with version_events="any"."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_confidence_threshold=0.0, top_k=1,
                  ground_fallback=True, read_rule="joint", version_margin=0.1)
    mem = ingest(model, [STREAM])
    mem.slots.reset()
    enc = tokenizer(["where does alice live"], return_tensors="pt")
    key = torch.nn.functional.normalize(torch.ones(16), dim=0)
    for later_type, setting, want in (("new", "update", "paris"), ("new", "any", "berlin"), ("update", "update", "berlin"),
                                      ("irrelevant", "any", "paris")):
        monkeypatch.setattr(model, "_ground_chunks", lambda *args, t=later_type: [
            GroundedEvent("alice", "paris", torch.zeros(16), key, "new", 1.0, 10, "alice lives in paris"),
            GroundedEvent("alice", "berlin", torch.zeros(16), key, t, 0.95, 30, "alice moved to berlin")])
        model.config.read.version_events = setting
        got = model.select(mem, enc["input_ids"], enc["attention_mask"]).texts[0][0]
        assert got.endswith(want), (later_type, setting, got)
    with pytest.raises(ConfigError, match="version_events"):
        MemAdapterConfig(read={"version_events": "all"})


def test_name_chunks_adds_the_chunks_that_hold_the_question_names(tokenizer):
    """The hybrid search ranks filler that shares the question's common words first; name_chunks
    adds up to that many chunks holding its names ("Nina"), best by BM25 over the names alone."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", fallback_chunks=2)
    mem = model.new_memory()
    texts = ["the company did work for a company", "work at a company is work", "Nina is employed by Stonebridge Media",
             "a quiet essay", "Nina Keller and Nina again", "Ninas left"]
    hidden = model.config.hidden_size
    mem.indexes[0].add(torch.nn.functional.normalize(torch.randn(len(texts), hidden), dim=-1), texts)
    query = torch.zeros(hidden)  # the dense half says nothing: the words decide
    question = "Which company does Nina work for?"
    assert model._retrieved_chunks(mem, 0, query, question) == [0, 1]
    model.config.read.name_chunks = 1
    assert model._retrieved_chunks(mem, 0, query, question) == [0, 1, 4]
    assert model._retrieved_chunks(mem, 0, query, "which company does nina work for") == [0, 1]  # no name: no more
    model.config.read.name_chunks = 9
    assert model._retrieved_chunks(mem, 0, query, question) == [0, 1, 4, 2]  # only chunks that hold a name
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="name_chunks"):
            MemAdapterConfig(read={"name_chunks": bad})


def test_answer_type_margin_reads_the_rival_fact_whose_value_the_backbone_finds_the_likelier_answer(tokenizer, monkeypatch):
    """read_rule="joint", no slots: two grounded events of other facts (key cosine 0), "berlin"
    scoring 1.5 and "555-0101" 1.45. Within answer_type_margin the one with the higher answer PMI
    is read; a version of the pick (the same key) is no rival."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_confidence_threshold=0.0, top_k=1,
                  ground_fallback=True, read_rule="joint")
    mem = ingest(model, [STREAM])
    mem.slots.reset()
    enc = tokenizer(["where does alice live"], return_tensors="pt")
    q = _query_key(model, enc)
    other = torch.nn.functional.normalize(torch.randn(q.shape[0]), dim=0)
    other = torch.nn.functional.normalize(other - (other @ q) * q, dim=0)
    city, phone = [torch.nn.functional.normalize(q + sign * other, dim=0) for sign in (1, -1)]  # cosine 0
    for phone_key, margin, pmi, want in ((phone, None, [0.0, 5.0], "berlin"), (phone, 0.1, [0.0, 5.0], "555-0101"),
                                         (phone, 0.01, [0.0, 5.0], "berlin"), (phone, 0.1, [5.0, 0.0], "berlin"),
                                         (phone, 0.1, [1.0, 1.0], "berlin"), (city, 0.1, [0.0, 5.0], "berlin")):
        monkeypatch.setattr(model, "_ground_chunks", lambda *args, k=phone_key: [
            GroundedEvent("alice", "berlin", torch.zeros(16), city, "new", 1.5, 10, "alice lives in berlin"),
            GroundedEvent("alice", "555-0101", torch.zeros(16), k, "new", 1.45, 5, "call alice on 555-0101")])
        monkeypatch.setattr(model, "_answer_pmi", lambda question, values, p=pmi: p[: len(values)])
        model.config.read.answer_type_margin = margin
        assert model.select(mem, enc["input_ids"], enc["attention_mask"]).texts[0] == [f"alice: {want}"], (margin, pmi)
    for bad in (-0.1, float("nan")):
        with pytest.raises(ConfigError, match="answer_type_margin"):
            MemAdapterConfig(read={"answer_type_margin": bad})


@torch.no_grad()
def test_answer_pmi_is_the_plain_loop_over_values_and_prompts(tokenizer):
    """The batched, right-padded PMI equals one unpadded backbone pass per (value, prompt)."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix")
    question, values = "where does alice live", ["berlin", "rome paris", "alice"]
    got = model._answer_pmi(question, values)

    def logp(prompt: list[int], value: str) -> float:
        ids = prompt + tokenizer(" " + value, add_special_tokens=False)["input_ids"]
        with model.disable_adapter():
            lp = torch.log_softmax(model.backbone(input_ids=torch.tensor([ids])).logits.float()[0], -1)
        return sum(float(lp[t - 1, ids[t]]) for t in range(len(prompt), len(ids)))

    asked, blank = model._answer_prompt(question), model._answer_prompt("What is it?")
    want = [logp(asked, v) - logp(blank, v) for v in values]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-4, rtol=1e-4)
    assert len(set(round(x, 4) for x in got)) == 3


def test_inserted_names_drops_the_look_alike_whose_key_puts_a_name_inside_the_asked_one(tokenizer, monkeypatch):
    """read_rule="joint", no slots: "alice Mini bob" (1.0) and "alice bob" (0.5) name the same
    question words; with inserted_names the first, a look-alike, drops out and "alice bob" is read."""
    model = build(tiny_backbone("llama"), tokenizer, "prefix", router_confidence_threshold=0.0, top_k=1,
                  ground_fallback=True, read_rule="joint", restore_by_sentence=True)
    mem = ingest(model, [STREAM])
    mem.slots.reset()
    enc = tokenizer(["what city is alice bob"], return_tensors="pt")
    monkeypatch.setattr(model, "_ground_chunks", lambda *args: [
        GroundedEvent("alice Mini bob", "paris", torch.zeros(16), torch.zeros(16), "new", 1.0, 10, "alice Mini bob city paris"),
        GroundedEvent("alice bob", "rome", torch.zeros(16), torch.zeros(16), "new", 0.5, 20, "alice bob city rome")])
    for setting, want in ((False, "alice Mini bob: paris"), (True, "alice bob: rome")):
        model.config.read.inserted_names = setting
        assert model.select(mem, enc["input_ids"], enc["attention_mask"]).texts[0] == [want], setting
    with pytest.raises(ConfigError, match="inserted_names"):
        MemAdapterConfig(read={"inserted_names": "on"})
