"""The read sweep varies read-time settings only: every variant reads the same ingested memory."""
import pytest

from memadapter.training.generation_eval import SETTABLE


def test_variants_take_read_time_settings_and_refuse_ingest_time_ones(load_script):
    sweep = load_script("generation_read_sweep")
    assert sweep.READ_TIME <= set(SETTABLE)
    assert sweep.variants(["base:{}", 'on:{"withdrawn_cover": 0.5}']) == {"base": {}, "on": {"withdrawn_cover": 0.5}}
    for ingest_time in ("slot_match_threshold", "retract_tombstones", "snap_spans", "pair_in_sentence"):
        with pytest.raises(SystemExit, match=ingest_time):
            sweep.variants([f'x:{{"{ingest_time}": 1}}'])
