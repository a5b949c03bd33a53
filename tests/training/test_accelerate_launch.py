"""``accelerate launch --multi_gpu --num_processes 2 -m memadapter.training.train --config tiny.json``
(the config sets ``use_cpu``, so DDP runs on the CPU over gloo): both ranks train on their own share
of the data and end with identical adapters, the final folder holds only adapter files, and the
adapter loads. (``--cpu --num_processes 2`` starts only one process in accelerate 1.15 without an
MPI setup; see memadapter.training.train.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from memadapter.modeling.modeling_memadapter import MemAdapterForCausalLM
from memadapter.training.train import build_backbone, load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "training" / "configs" / "tiny.json"


def test_two_process_cpu_launch(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEMADAPTER_TRAIN_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "memadapter.training.train", "--config", str(CONFIG), "--output_dir", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    steps = load_config(CONFIG)["training"]["max_steps"]
    assert all(r["global_step"] == steps for r in ranks)
    assert all(r["train_loss"] == r["train_loss"] and r["train_loss"] > 0 for r in ranks)  # finite, not NaN
    assert ranks[0]["adapter_checksum"] == ranks[1]["adapter_checksum"]  # gradients were all-reduced

    files = set(os.listdir(out))
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin", "training_args.bin"}
    state = json.loads((out / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "loss" in h]
    assert logged and "writes_per_stream" in logged[0] and "active_set_size" in logged[0]

    cfg = load_config(CONFIG)
    backbone = build_backbone(cfg["model"], seed=cfg["seed"])
    model = MemAdapterForCausalLM.from_pretrained(backbone, adapter=str(out))
    from safetensors.torch import load_file

    saved = load_file(str(out / "adapter_model.safetensors"))
    for k, v in model.adapter_state_dict().items():
        assert torch.equal(v, saved[k]), k
