"""The read sweep varies read-time settings only: every variant reads the same ingested memory."""
import pytest

from experiments import generation_read_sweep as sweep
from memadapter.training.generation_eval import SETTABLE


def test_variants_take_read_time_settings_and_refuse_ingest_time_ones():
    assert sweep.READ_TIME <= set(SETTABLE)
    assert sweep.variants(["base:{}", 'on:{"name_chunks": 3}']) == {"base": {}, "on": {"name_chunks": 3}}
    for ingest_time in ("slot_match_threshold", "retract_tombstones", "snap_spans", "chunk_boundary",
                        "lexical_weight"):  # and a retired read rule: no setting at all
        with pytest.raises(SystemExit, match=ingest_time):
            sweep.variants([f'x:{{"{ingest_time}": 1}}'])


def test_read_weights_take_a_refit_reader_and_refuse_other_weights(tmp_path):
    import torch

    from memadapter.modeling.configuration_memadapter import MemAdapterConfig
    from memadapter.modeling.modeling_memadapter import MemAdapterForCausalLM
    from memadapter.modeling.tiny import tiny_backbone

    torch.manual_seed(0)
    model = MemAdapterForCausalLM(MemAdapterConfig(read_layer=1, key_dim=16, value_dim=16, num_slots=8),
                                  backbone=tiny_backbone("llama"))
    grounding = next(model.grounding.parameters())
    own = {k: v.clone() for k, v in model.adapter_state_dict().items() if k.startswith(sweep.READ_MODULES)}
    with torch.no_grad():
        model.query_head.proj.weight.add_(1.0)
        model.read_scorer.linear.bias.add_(2.0)
        model.injector.scale.add_(3.0)
        model.save_pretrained(str(tmp_path / "refit"))  # differs in the weights read after the ingest only
        grounding.add_(1.0)
        model.save_pretrained(str(tmp_path / "other"))  # and in a weight the ingest reads
        grounding.sub_(1.0)
        model.query_head.proj.weight.sub_(1.0)
        model.read_scorer.linear.bias.sub_(2.0)
        model.injector.scale.sub_(3.0)
    heads, settings = sweep.read_weights([f"fit:{tmp_path / 'refit'}", f"n3:{tmp_path / 'refit'}:" '{"name_chunks": 3}'],
                                         model)
    assert settings == {"fit": {}, "n3": {"name_chunks": 3}}
    torch.testing.assert_close(heads["fit"]["query_head.proj.weight"], model.query_head.proj.weight + 1.0)
    sweep.load_read_weights(model, {**own, **heads["fit"]})  # the variant reads with them ...
    assert float(model.read_scorer.linear.bias.detach()) == 2.0
    torch.testing.assert_close(model.injector.scale, own["injector.scale"] + 3.0)
    sweep.load_read_weights(model, own)  # ... and the next one with the adapter's own
    assert torch.equal(model.injector.scale, own["injector.scale"])
    assert float(model.read_scorer.linear.bias.detach()) == 0.0 and torch.equal(model.query_head.proj.weight, own["query_head.proj.weight"])
    with pytest.raises(SystemExit, match="grounding"):
        sweep.read_weights([f"bad:{tmp_path / 'other'}"], model)


def test_picked_value_is_the_first_selected_entry_value_and_unknown_for_a_withdrawal():
    from types import SimpleNamespace

    import torch

    from memadapter.modeling.selection import SelectedRow, stack_selection

    restored = []
    memory = SimpleNamespace(restore=restored.append)
    ctx = SimpleNamespace(memory=memory, snapshot="post-ingest")

    def tok(text, add_special_tokens):
        return {"input_ids": [len(w) for w in text.split()]}

    for texts, want in ((["Mia Roth: Porto", "Mia: Lyon"], "Porto"), (["Mia: no longer known"], "unknown"), ([], "")):
        rows = [SelectedRow(torch.zeros(len(texts), 4), texts, [[] for _ in texts], "memory")]
        model = SimpleNamespace(select=lambda m, ids, mask, r=rows: stack_selection(r, 4, 0))
        assert sweep.picked_value(model, ctx, tok, " Where is Mia? ") == want
    assert restored == ["post-ingest"] * 3  # every question reads the post-ingest memory
