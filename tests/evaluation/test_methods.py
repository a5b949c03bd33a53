"""Each method on a tiny random backbone: what it puts before the question, and when it skips."""

import torch

from eval_helpers import word_tokenizer
from memadapter.evaluation.methods import (LM, BM25Retrieval, DenseRetrieval, FullContext, MemAdapterMethod,
                                           TailWindow, chunk_text)
from memadapter.evaluation.samples import Sample

TEXT = ("The grass is green. The sky is blue. The red fox sleeps in the barn. The sun is yellow. "
        "Here we go. There and back again. The river runs past the mill.")


def sample(context=TEXT, query="where does the fox sleep"):
    return Sample("t/64/0", "t", 64, context, "Read this.", f"Question: {query}?", query, " Answer:", ["barn."],
                  "string_match_part", 3)


class Recorder(LM):
    """An LM that records the user text it was asked, instead of generating."""

    def answer(self, s, context):
        self.seen = context
        return "ok"


def test_full_context_skips_what_the_window_cannot_hold(tiny_lm):
    tok = word_tokenizer(TEXT + " Read this. Question: where does the fox sleep? Answer:")
    lm = LM(tiny_lm, tok)
    assert lm.window == 256
    assert FullContext(lm).answer(sample()).text is not None
    skipped = FullContext(lm).answer(sample(context=" ".join([TEXT] * 12)))
    assert skipped.text is None and "window 256" in skipped.note


def test_tail_keeps_the_last_tokens(tiny_lm):
    tok = word_tokenizer(TEXT)
    lm = Recorder(tiny_lm, tok)
    TailWindow(lm, tail_tokens=5).answer(sample())
    assert lm.seen.split() == TEXT.split()[-5:]


def test_chunks_are_sentence_aligned_and_bounded():
    tok = word_tokenizer(TEXT)
    chunks = chunk_text(tok, TEXT, 9)
    assert " ".join(chunks) == TEXT and all(c.endswith(".") for c in chunks)
    assert all(len(c.split()) <= 9 for c in chunks) and len(chunks) > 2


def test_bm25_puts_the_chunk_with_the_query_words_first(tiny_lm):
    lm = Recorder(tiny_lm, word_tokenizer(TEXT))
    method = BM25Retrieval(lm, top_k=1, chunk_tokens=9)
    chunks = chunk_text(lm.tokenizer, TEXT, 9)
    assert "fox" in chunks[method.rank(chunks, "where does the fox sleep")[0]]
    answer = method.answer(sample())
    assert "fox" in lm.seen and answer.active == [next(i for i, c in enumerate(chunks) if "fox" in c)]


def test_dense_ranks_every_chunk_once_in_document_order_output(tiny_lm):
    lm = Recorder(tiny_lm, word_tokenizer(TEXT))
    method = DenseRetrieval(lm, top_k=2, chunk_tokens=9)
    chunks = chunk_text(lm.tokenizer, TEXT, 9)
    assert sorted(method.rank(chunks, "fox")) == list(range(len(chunks)))
    answer = method.answer(sample())
    assert answer.active == sorted(answer.active) and len(answer.active) == 2
    identical = method.rank([chunks[0], chunks[1]], chunks[1])
    assert identical[0] == 1  # a chunk is closest to itself


def test_memadapter_ingests_once_for_both_injections(tiny_lm, monkeypatch):
    from memadapter.modeling import MemAdapterForCausalLM

    tok = word_tokenizer(TEXT + " where does fox sleep Read this. Question: ? Answer:")
    torch.manual_seed(0)
    model = MemAdapterForCausalLM.from_pretrained(tiny_lm, tokenizer=tok, key_dim=16, value_dim=16, num_slots=8,
                                                  top_k=2, chunk_tokens=8, read_layer=1)
    lm = LM(tiny_lm, tok)
    calls = []
    real_ingest = model.ingest
    monkeypatch.setattr(model, "ingest", lambda *a, **k: calls.append(1) or real_ingest(*a, **k))
    prefix, text = MemAdapterMethod(lm, model, "prefix"), MemAdapterMethod(lm, model, "text")
    a, b = prefix.answer(sample()), text.answer(sample())
    assert calls == [1] and isinstance(a.text, str) and isinstance(b.text, str)
    assert a.active[-1].startswith("branch:") and prefix.ingest_s > 0 and text.ingest_s == prefix.ingest_s
