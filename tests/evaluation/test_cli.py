import pytest

from memadapter.cli import build_parser
from memadapter.errors import ConfigError
from memadapter.evaluation.cli import markdown_table, parse_lengths, parse_methods


def test_lengths_take_k_suffixes_and_refuse_bad_items():
    assert parse_lengths("4K,8k,32768") == [4096, 8192, 32768]
    for bad in ("4M", "0", "4K,4096", ""):
        with pytest.raises(ConfigError, match="lengths"):
            parse_lengths(bad)


def test_methods_are_checked_by_name():
    assert parse_methods("bm25, dense") == ["bm25", "dense"]
    with pytest.raises(ConfigError, match="methods"):
        parse_methods("bm25,kvpress")


def test_memadapter_eval_is_a_subcommand():
    args = build_parser("eval").parse_args(["eval", "--tasks", "vt", "--lengths", "4K", "--num-samples", "2"])
    assert (args.tasks, args.lengths, args.num_samples, args.threads) == ("vt", "4K", 2, 1)


def test_table_marks_skipped_rows():
    row = {"task": "t", "length": 8, "method": "m", "correct": 0, "total": 0, "accuracy": None, "ci_low": None,
           "ci_high": None, "stale": None, "mean_latency_s": None}
    assert "| t | 8 | m | 0/0 | skipped | - | - |" in markdown_table([row])
