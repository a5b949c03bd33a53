"""The ``memadapter`` command: every command has a --help with an example, a command's module is
imported only when it runs, and a user error is one line on stderr with exit status 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from memadapter import cli

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("memadapter.modeling", "memadapter.training", "memadapter.evaluation", "memadapter.demo.run", "torch")


def _modules_after(code: str) -> list[str]:
    """Heavy modules a fresh interpreter holds after ``code`` (this process imported them long ago)."""
    probe = f"import sys\n{code}\nprint(sorted(m for m in sys.modules if m.startswith({HEAVY!r})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return eval(out.stdout.strip().splitlines()[-1])


def test_the_top_level_help_and_cheap_commands_import_nothing_heavy():
    assert _modules_after("from memadapter.cli import build_parser; build_parser('')") == []
    # (card lives in memadapter.modeling, beside the hub code it reads adapters with: its parser loads it)
    for command in ("demo", "ask"):
        assert _modules_after(f"from memadapter.cli import build_parser; build_parser({command!r})") == [], command


@pytest.mark.parametrize("command", sorted(cli._COMMANDS))
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"memadapter {command}" in out.split("example:", 1)[1]


def test_bench_help_lists_the_benches_with_an_example(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in cli._BENCHES) and "example:" in out


def _user_error(argv, capsys, match):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err and match in lines[0], captured.err
    assert lines[0].startswith(f"memadapter {argv[0]}: error: ")


def test_ask_a_missing_file_is_one_line_before_any_model_loads(tmp_path, capsys):
    _user_error(["ask", str(tmp_path / "nope.txt"), "Where?"], capsys, "nope.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    _user_error(["ask", str(tmp_path / "empty.txt"), "Where?"], capsys, "is empty")
    (tmp_path / "notes.txt").write_text("Nadia lives in Porto.")
    _user_error(["ask", str(tmp_path / "notes.txt"), "   "], capsys, "question")
    _user_error(["ask", str(tmp_path / "notes.txt"), "Where?", "--threads", "0"], capsys, "--threads")


def test_demo_argument_errors_are_one_line(tmp_path, capsys):
    _user_error(["demo", "--ask", "Where?"], capsys, "--ask")
    _user_error(["demo", "--text", str(tmp_path / "nope.txt")], capsys, "--text")
    _user_error(["demo", "--text", str(tmp_path / "nope.txt"), "--ask", "Where?"], capsys, "nope.txt")


def test_card_renders_the_bundled_adapter_and_names_a_bad_folder(tmp_path, capsys):
    from memadapter.modeling.real_models import bundled_adapter_path

    results = tmp_path / "results.json"
    results.write_text('{"overwrite": {"accuracy": 0.9}}')
    out = tmp_path / "README.md"
    assert cli.main(["card", str(bundled_adapter_path()), "--results", str(results), "--out", str(out)]) == 0
    card = out.read_text()
    assert card.startswith("---\nlibrary_name: memadapter") and "0.9" in card and "1677660" in card.replace(",", "")  # heads 1,231,629 + pointer 445,140 + reader 891
    assert capsys.readouterr().err.strip() == f"wrote {out}"
    _user_error(["card", str(tmp_path / "nope")], capsys, "nope")
    results.write_text("[1, 2]")
    _user_error(["card", str(bundled_adapter_path()), "--results", str(results)], capsys, "--results")


def test_train_wraps_the_training_entry_point(tmp_path, capsys):
    _user_error(["train", "--config", str(tmp_path / "nope.json")], capsys, "nope.json")
    (tmp_path / "bad.json").write_text('{"model": ')
    _user_error(["train", "--config", str(tmp_path / "bad.json")], capsys, "not valid JSON")
    (tmp_path / "bad.yaml").write_text("model: [1,\n")
    _user_error(["train", "--config", str(tmp_path / "bad.yaml")], capsys, "not valid YAML")
    args = cli.build_parser("train").parse_args(["train", "--config", "c.json", "--max_steps", "3"])
    from memadapter.training import train

    assert args._run is train.run and (args.config, args.max_steps, args.output_dir) == ("c.json", 3, None)


def test_an_unexpected_error_still_has_its_traceback(monkeypatch):
    import memadapter.modeling.card_command as card

    monkeypatch.setattr(card, "run", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["card", "x"])
