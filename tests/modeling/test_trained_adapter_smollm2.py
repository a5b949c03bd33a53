"""The SmolLM2 adapter trained here (modeling/adapters/smollm2-135m-prefix, shipped as package data) loads onto the offline base,
ingests a held-out lifecycle stream and generates; slow (real model)."""


import pytest
import torch

from memadapter import MemAdapterForCausalLM
from memadapter.modeling.configuration_settings import ReadConfig
from memadapter.modeling.real_models import bundled_adapter_path

pytestmark = pytest.mark.slow
ADAPTER = bundled_adapter_path()


def test_committed_adapter_loads_ingests_and_generates():
    real_models = pytest.importorskip("memadapter.modeling.real_models")
    try:
        real_models.find_smollm2_gguf()
    except Exception as err:  # package not installed: the message names the pip command
        pytest.skip(str(err))
    from memadapter.training.lifecycle_data import generate_stream
    import random

    torch.set_num_threads(1)
    real_models.load_smollm2()  # fills the cache on first use
    model = MemAdapterForCausalLM.from_pretrained(str(real_models.default_cache_dir()), adapter=str(ADAPTER)).eval()
    cfg, read, ingest = model.config, model.config.read, model.config.ingest
    assert cfg.injection == "prefix" and cfg.read_layer == 8 and cfg.value_tokens == 16
    assert ingest.retract_tombstones and ingest.snap_spans
    assert ingest.chunk_boundary == "sentence"
    # its read rules were retired; the live settings are kept, the answer pointer reads 4 sentences with
    # word-bounded spans (v8), the words a correction replaced join the pool (v27), and the learned reader
    # was fitted on the adapter's own pools (fit_reader,
    # epoch chosen on validation halves)
    assert read == ReadConfig(router_confidence_threshold=0.5, fallback_chunks=5, name_chunks=3, withdrawn_text="unknown",
                              answer_sentences=4, word_spans=True, restated_runs=0.5)
    assert cfg.answer_layers == [8, 16, 30] and model.answer_pointer is not None
    state = model.adapter_state_dict()
    assert sum(v.numel() for k, v in state.items()
               if not k.startswith(("read_scorer.", "answer_pointer."))) == 1_231_629  # the trained heads
    assert model.read_scorer.mlp[-1].weight.any()  # a fitted scorer, not the prior (whose MLP output starts at zero)
    stream = generate_stream(random.Random(0), split="test_unseen_entities")
    memory = model.new_memory()
    report = model.ingest(memory, stream["text"])
    assert report.writes[0] >= 1 and any(r["value_text"] for r in memory.table())
    index = memory.indexes[0]  # chunks end after a sentence end (a hard cut only where none is near)
    ends = [index.text(i).rstrip(" ")[-1:] in (".", "!", "?", "\n") for i in range(len(index) - 1)]
    assert sum(ends) >= 0.9 * len(ends) and all(index.span(i)[1] - index.span(i)[0] <= 512 for i in range(len(index)))
    ids = torch.tensor([model.tokenizer(stream["questions"][0]["question"], add_special_tokens=False)["input_ids"]])
    out = model.generate(ids, torch.ones_like(ids), memory=memory, max_new_tokens=8, do_sample=False)
    assert out.shape[0] == 1 and ids.shape[1] < out.shape[1] <= ids.shape[1] + 8
    assert torch.equal(out[:, : ids.shape[1]], ids)  # prompt first, then the new tokens
    # The value tokens of the selected entry are what the prefix carries: a short answer copied
    # from the stream (or "unknown"), never a sentence.
    answer = model.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert answer and (answer == "unknown" or answer in stream["text"]), answer
