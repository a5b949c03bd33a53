"""save_pretrained is atomic: a process killed at any step of a save leaves a folder that loads as
the previous adapter (identical logits) or as the complete new one, never a mix.

The test saves adapter A, then for every step k of saving adapter B over it forks a child process
that saves B and dies (``os._exit``, no cleanup) at step k. Three paths are killed this way: the
folder exchange (renameat2), the two-rename fallback, and a save into a folder that does not exist
yet. Every folder is then loaded and its logits compared with A's and B's.
"""

import os
from pathlib import Path
from unittest import mock

import pytest
import torch
from conftest import STREAM, build, tiny_backbone

from memadapter.modeling import MemAdapterForCausalLM, atomic_folder, hub

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills forked child processes (POSIX)")

KILLED = 17
SCENARIOS = ("exchange", "two_renames", "fresh")


def _save_b(b, folder, scenario, kill_at=None):
    """The steps (boundary names) of saving ``b`` into ``folder``; with ``kill_at``, die at that step."""
    steps = []

    def boundary(step):
        if len(steps) == kill_at:
            os._exit(KILLED)
        steps.append(step)

    exchange = (lambda x, y: False) if scenario == "two_renames" else atomic_folder._exchange
    with mock.patch.object(atomic_folder, "boundary", boundary), mock.patch.object(atomic_folder, "_exchange", exchange):
        b.save_pretrained(folder)
    return steps


def _killed_at(b, folder, scenario, k):
    """Exit code of a child process that saves ``b`` into ``folder`` and is killed at step ``k``."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            _save_b(b, folder, scenario, kill_at=k)
        finally:
            os._exit(3)  # step k was never reached, or the save raised
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.fixture(scope="module")
def killed_saves(tmp_path_factory, tokenizer):
    """Adapters A and B saved as ref_a / ref_b, and one folder per (path, step) where a save of B
    over A (or into nothing, "fresh") was killed at that step."""
    root = tmp_path_factory.mktemp("killed")
    backbone = tiny_backbone("llama")
    a, b = build(backbone, tokenizer, seed=0), build(backbone, tokenizer, seed=1)
    a.save_pretrained(root / "ref_a")
    b.save_pretrained(root / "ref_b")
    results = []
    for scenario in SCENARIOS:
        probe = root / f"{scenario}-probe"
        if scenario != "fresh":
            a.save_pretrained(probe)
        for k, step in enumerate(_save_b(b, probe, scenario)):
            folder = root / f"{scenario}-{k}"
            if scenario != "fresh":
                a.save_pretrained(folder)
            results.append({"scenario": scenario, "k": k, "step": step, "folder": str(folder),
                            "code": _killed_at(b, folder, scenario, k)})
    return root, results


def _logits(folder, tokenizer):
    model = MemAdapterForCausalLM.from_pretrained(tiny_backbone("llama"), adapter=folder, tokenizer=tokenizer)
    memory = model.new_memory()
    model.ingest(memory, STREAM)
    enc = tokenizer(["where does alice live"], return_tensors="pt")
    return model(**enc, memory=memory).logits


def _adapter_bytes(folder):
    return {n: (Path(folder) / n).read_bytes() for n in (hub.ADAPTER_CONFIG_NAME, hub.ADAPTER_WEIGHTS_NAME)}


def test_every_step_was_killed_on_every_path(killed_saves):
    _, results = killed_saves
    steps = {s: [r["step"] for r in results if r["scenario"] == s] for s in SCENARIOS}
    assert all(r["code"] == KILLED for r in results), [r for r in results if r["code"] != KILLED]
    for scenario, names in steps.items():
        assert {"weights written", "config written", "card written", "old copy removed"} <= set(names), scenario
    assert "old folder moved aside" in steps["two_renames"] and "new folder moved in" in steps["two_renames"]
    assert "folder renamed" in steps["fresh"]
    if atomic_folder._renameat2() is not None:
        assert "folders exchanged" in steps["exchange"]


def test_a_killed_save_leaves_the_old_adapter_or_the_complete_new_one(killed_saves, tokenizer):
    root, results = killed_saves
    want_a, want_b = _logits(root / "ref_a", tokenizer), _logits(root / "ref_b", tokenizer)
    assert not torch.equal(want_a, want_b), "A and B must differ, or the test could not tell them apart"
    files_a, files_b = _adapter_bytes(root / "ref_a"), _adapter_bytes(root / "ref_b")
    seen = set()
    for r in results:
        folder = Path(r["folder"])
        if r["scenario"] == "fresh" and not folder.exists():
            seen.add((r["scenario"], "nothing"))
            continue
        got = _logits(folder, tokenizer)  # loading also puts back a folder moved aside (two renames)
        which = "A" if torch.equal(got, want_a) else "B" if torch.equal(got, want_b) else None
        assert which is not None, f"{r}: loads neither A nor B"
        assert _adapter_bytes(folder) == (files_a if which == "A" else files_b), f"{r}: files of both adapters"
        assert r["scenario"] != "fresh" or which == "B"
        seen.add((r["scenario"], which))
    # both outcomes occur: a kill before the swap keeps A, one after it leaves B
    assert {("exchange", "A"), ("exchange", "B"), ("two_renames", "A"), ("two_renames", "B")} <= seen
    assert {("fresh", "nothing"), ("fresh", "B")} <= seen


def test_the_next_save_after_a_kill_succeeds_and_clears_what_the_kill_left(killed_saves, tokenizer):
    root, results = killed_saves
    files_b = _adapter_bytes(root / "ref_b")
    model = MemAdapterForCausalLM.from_pretrained(tiny_backbone("llama"), adapter=root / "ref_b", tokenizer=tokenizer)
    for r in results:
        folder = Path(r["folder"])
        model.save_pretrained(folder)
        assert _adapter_bytes(folder) == files_b
        leftovers = [p.name for p in root.iterdir() if p.name.startswith(f".{folder.name}.")]
        assert leftovers == [], f"{r}: {leftovers}"
        assert sorted(p.name for p in folder.iterdir()) == sorted(hub.ADAPTER_FILE_NAMES)
