"""End to end on a real backbone: ingest a stream with an overwritten fact, generate with `text`
injection, and check the newer value is answered (issue 3, section 6). Runs in CI (~1 min with the
one-time GGUF conversion); skip locally with -m "not slow"."""

import pytest
import torch

from memadapter import MemAdapterForCausalLM

pytestmark = pytest.mark.slow

FILLER = [
    "The committee met on Tuesday to review the budget for the coming year.",
    "Rain fell steadily over the hills while the river rose slowly.",
    "The library extended its opening hours during the exam period.",
    "A new bakery opened near the station and sold out by noon.",
    "The orchestra rehearsed the second movement three times.",
    "Engineers inspected the bridge and found the bolts in good order.",
]


@pytest.fixture(scope="module")
def smollm2():
    real_models = pytest.importorskip("memadapter.modeling.real_models")
    try:
        path = real_models.find_smollm2_gguf()
    except Exception as err:  # package not installed: the message names the pip command
        pytest.skip(str(err))
    assert path.is_file()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield real_models.load_smollm2()
    torch.set_num_threads(threads)


def _ask(model, tokenizer, memory, question: str) -> str:
    msgs = [{"role": "user", "content": question}]
    ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, memory=memory, max_new_tokens=12, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.xfail(strict=False, reason="known regression (issue 24): an untrained adapter's pool now holds the "
                   "events its random tagger proposes, and the prior scorer injects one of them instead of the "
                   "retrieved chunk's text; before, the untrained route read whole chunks")
def test_overwritten_fact_is_answered_with_newer_value_through_text_injection(smollm2):
    base, tokenizer = smollm2
    model = MemAdapterForCausalLM.from_pretrained(base, tokenizer=tokenizer, injection="text",
                                                  chunk_tokens=48, top_k=2)
    memory = model.new_memory()
    stream = " ".join(["Alice lives in London."] + FILLER[:3] + FILLER[3:] + FILLER[:2])
    report = model.ingest(memory, stream)
    model.ingest(memory, "Update: Alice now lives in Paris.")
    assert report.chunks[0] >= 2  # the stream really was chunked, so retrieval had to choose
    answer = _ask(model, tokenizer, memory, "Where does Alice live now? Answer with the city.")
    assert "Paris" in answer and "London" not in answer, answer
    # The explainable trail: the answer's source chunk is the update, found by the sparse fallback.
    ids = tokenizer("Where does Alice live now?", return_tensors="pt")
    selection = model.select(memory, ids["input_ids"], ids["attention_mask"])
    assert selection.branch == ["fallback"]
    assert any("Paris" in text for text in selection.texts[0])


def test_without_memory_the_model_cannot_know(smollm2):
    base, tokenizer = smollm2
    model = MemAdapterForCausalLM.from_pretrained(base, tokenizer=tokenizer, injection="text")
    answer = _ask(model, tokenizer, None, "Where does Alice live now? Answer with the city.")
    assert "Paris" not in answer, answer
