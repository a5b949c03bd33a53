"""Phase 13 of the paper (sections 2.4, 4.3): the frozen-hidden-state bridge, with and without oracle keys.

A frozen backbone reads controlled event sentences; a small adapter (writer + key/query retriever +
pointer readout) predicts which event answers the query. Two protocols:

* ``oracle`` (the paper's): event/query vectors = [mean-pooled full sentence, mean-pooled canonical
  string ``entity N`` built from the generator's integer key id]; the query's key comes from
  ``key_ids[target]``; same-key replacement and memory-vs-sparse arbitration use exact integer key
  equality (one-hot slot keys, threshold 0.5). Uses metadata exactly where section 2.4 says.
* ``learned``: inference reads the event and query TEXTS only. Keys come from a learned multi-head
  attention pool over the sentence's own token hidden states (shared by events and queries);
  same-key replacement and branch arbitration use key cosine against thresholds calibrated with
  ``Router.calibrate`` on a validation split (unseen names, unseen templates); evaluation uses a
  test split with other unseen names and other unseen templates. Key ids / write labels / target
  are training targets only. Optionally (``--lexical``, ``phase13_read.Thresholds``) the read also
  weighs the question's words found in each event sentence, reads the latest written version of
  a fact, and calibrates the write threshold on the validation split too.

Modules: ``phase13_data`` (samples), ``phase13_backbones`` (backbones, hidden-state cache),
``phase13_model`` (features, adapter), ``phase13_read`` (the hybrid read, calibration); this one
trains, evaluates and runs the CLI.

Rows per protocol: ``full_hidden`` (unconstrained pointer over all events from full-sentence
vectors), ``sparse_top16`` (cosine top-16 over full-sentence projections, best one answers),
``memory`` (slot memory alone), ``tail64`` (hybrid on the last 64 events only), ``hybrid``
(authoritative slot when the key matches, else the sparse fallback: top-16 events by key
similarity, re-ranked with the learned readout). Only the lite-write variant
(write labels supervise the writer) is implemented.

CLI: ``python -m experiments.phase13 --families llama,qwen2 --protocol oracle --seeds 3
--samples 60 --json out.json``.

Example:
    >>> import random
    >>> s = make_sample("versioning", 16, random.Random(0), split="train")
    >>> len(s.events), s.write_labels[s.target], s.key_ids[s.target] == s.query_key_id
    (16, 1, True)
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from memadapter.bench.stats import wilson_interval, write_rows_json
from memadapter.bm25 import background_idf
from memadapter.errors import ConfigError
from memadapter.heads import WriteController

# The controlled samples live in their own module; these names are part of this module's API too.
from .phase13_data import (  # noqa: F401
    ATTRIBUTES, EVAL_SETTINGS, KINDS, MAX_KEYS, SETTINGS, SPLITS, VALUES, WRITE_KINDS, Sample, make_sample,
    Wording, make_samples, vocabulary,
)

from .phase13_backbones import (  # noqa: F401
    PAPER_FAMILIES, HiddenCache, backbone_fingerprint, default_read_layer, load_backbone, tiny_backbone,
    word_tokenizer,
)

# The adapter and the read live in their own modules; their names are part of this module's API too.
from .phase13_model import (  # noqa: F401
    PROTOCOLS, TEMP, Feats, KeyPool, Phase13Adapter, Targets, featurize, multi_head_pool, multi_head_pool_reference,
)
from .phase13_read import (  # noqa: F401
    NUM_SLOTS, ORACLE_THRESHOLDS, ROWS, TAIL, TOP_SPARSE, Texts, Thresholds, calibrate, memory_keys, predict,
    sparse_top,
)



# ----------------------------------------------------------------------------- training


def multi_positive_nce(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """-log(sum over positives of softmax(logits)), mean over rows with a positive. logits/positive [R, N]."""
    keep = positive.any(-1)
    pos = logits.masked_fill(~positive, -math.inf).logsumexp(-1)
    return (logits.logsumexp(-1) - pos)[keep].mean()


def key_key_loss(keys: torch.Tensor, key_ids: torch.Tensor, max_events: int = 64) -> torch.Tensor:
    """Supervised contrastive loss among a sample's events: same key id = positive (versions and
    rumours of one key), look-alikes and the entity's other attributes are the hard negatives."""
    B, N, _ = keys.shape
    take = torch.randperm(N)[:max_events]
    k, ids = keys[:, take], key_ids[:, take]  # [B, n, dk], [B, n]
    logits = torch.einsum("bid,bjd->bij", k, k) / TEMP
    eye = torch.eye(len(take), dtype=torch.bool)
    logits = logits.masked_fill(eye, -1e4)  # a key is not its own positive
    positive = (ids[:, :, None] == ids[:, None, :]) & ~eye
    return multi_positive_nce(logits.flatten(0, 1), positive.flatten(0, 1))


def losses(ad: Phase13Adapter, f: Feats, t: Targets) -> dict[str, torch.Tensor]:
    """write BCE (lite), retrieval (query vs same-key events), readout and sparse pointer CE."""
    keys, q = ad.event_keys(f), ad.query_key(f)
    same = t.key_ids == t.key_ids.gather(1, t.target[:, None])  # [B, N]: events of the query's key
    out = {"write": WriteController.loss(ad.p_write(f), t.write),
           "retrieve": multi_positive_nce(torch.einsum("bnd,bd->bn", keys, q) / TEMP, same),
           "readout": F.cross_entropy(ad.readout_scores(f), t.target)}
    se, sq = ad.sparse_vectors(f)
    out["sparse"] = F.cross_entropy(torch.einsum("bnd,bd->bn", se, sq) / TEMP, t.target)
    if ad.protocol == "learned":  # the oracle's same-key test is integer equality, nothing to learn
        out["key_key"] = key_key_loss(keys, t.key_ids)
    return out


@dataclass
class TrainConfig:
    """Adapter training on the train split (its own names and templates)."""

    protocol: str = "oracle"
    seed: int = 0
    steps: int = 300
    batch: int = 16
    train_samples: int = 480
    train_events: int = 48
    lr: float = 3e-3
    key_dim: int = 64
    augment_templates: bool = False  # paraphrased train templates (phase13_data._T_EXTRA)
    augment_separators: bool = False  # varied separators after the signal word (phase13_data._SEPARATORS)
    augment_lead_ins: bool = False  # a lead-in word before some plain statements (phase13_data._LEAD_INS)
    augment_question_leads: bool = False  # a lead word before some questions (phase13_data._QUESTION_LEADS)
    token_writer: bool = False  # learned protocol: the writer attention-pools token states (Phase13Adapter)


TRAIN_SETTINGS = ("recall", "versioning", "distractor", "uniform", "hardneg", "streaming")


def train_pool(cfg: TrainConfig) -> list[Sample]:
    rng = random.Random(f"train:{cfg.seed}")
    return [make_sample(TRAIN_SETTINGS[i % len(TRAIN_SETTINGS)], cfg.train_events, rng, "train",
                        cfg.augment_templates, Wording(cfg.augment_separators, cfg.augment_lead_ins,
                                                       cfg.augment_question_leads))
            for i in range(cfg.train_samples)]


def train(cfg: TrainConfig, cache: HiddenCache, hidden_size: int, progress: bool = False) -> tuple[Phase13Adapter, list[float]]:
    """Train one adapter seed; returns it (eval mode) and the loss curve."""
    torch.manual_seed(cfg.seed)
    pool = train_pool(cfg)
    feats = [(featurize(pool[i:i + cfg.batch], cache, cfg.protocol), Targets.of(pool[i:i + cfg.batch]))
             for i in range(0, len(pool), cfg.batch)]
    ad = Phase13Adapter(hidden_size, cfg.protocol, cfg.key_dim, cfg.token_writer)
    ad.background = background_idf([t for s in pool for t in (*s.events, s.query)])
    opt = torch.optim.AdamW(ad.parameters(), lr=cfg.lr, weight_decay=0.01)
    curve = []
    for step in range(cfg.steps):
        f, t = feats[step % len(feats)]
        parts = losses(ad, f, t)
        loss = sum(parts.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(float(loss.detach()))
        if progress and step % 100 == 0:
            print(f"  step {step} loss {float(loss):.3f} " + " ".join(f"{k}={float(v):.3f}" for k, v in parts.items()),
                  file=sys.stderr)
    return ad.eval(), curve


# ----------------------------------------------------------------------------- evaluation and CLI
def evaluate(ad: Phase13Adapter, groups: dict[str, list[Sample]], cache: HiddenCache,
             thr: Thresholds) -> list[dict]:
    """One row per (setting, method): correct / total; targets are compared only after predict."""
    out = []
    for name, samples in groups.items():
        if not samples:
            continue
        pred = predict(ad, featurize(samples, cache, ad.protocol), thr)
        target = torch.tensor([s.target for s in samples])
        for row in ROWS:
            out.append({"setting": name, "row": row, "correct": int((pred[row] == target).sum()),
                        "total": len(samples)})
        out.append({"setting": name, "row": "writes_mean", "value": float(pred["writes"].float().mean())})
        out.append({"setting": name, "row": "memory_branch_rate", "value": float(pred["memory_branch"].float().mean())})
    return out


def run_seed(family: str, protocol: str, seed: int, samples: int, cache: HiddenCache, hidden_size: int,
             cfg: Optional[TrainConfig] = None, settings=EVAL_SETTINGS, progress: bool = False,
             read: Optional[Thresholds] = None, split: str = "test", write_false: Optional[float] = None,
             val_paraphrases: bool = False) -> list[dict]:
    """Train one adapter seed, calibrate on val (learned), evaluate on the held-out ``split``.

    ``read`` carries the learned read's settings (lexical weight, version rule; its thresholds are
    ignored: they are calibrated). ``split="val"`` evaluates on another draw of the validation
    split (seed + 1000), where those settings are chosen without touching the test split.
    ``write_false``: calibrate the write threshold on val too (:func:`calibrate`). ``val_paraphrases``:
    the val samples (calibration and the val draw) mix in value-first statements and imperative
    questions (``phase13_data._T_VAL_EXTRA``, ``_Q_VAL_EXTRA``)."""
    cfg = cfg or TrainConfig()
    cfg = replace(cfg, protocol=protocol, seed=seed, token_writer=cfg.token_writer and protocol == "learned")
    read = read or Thresholds(0.0, 0.0)
    t0 = time.time()
    ad, curve = train(cfg, cache, hidden_size, progress)
    val = make_samples("val", max(12, samples // 2), seed, [s for s in settings if s[2] <= 128], val_paraphrases)
    thr = calibrate(ad, val, cache, lexical=read.lexical, write_false=write_false, lexical_idf=read.lexical_idf)
    if protocol == "learned":
        thr = replace(thr, version_margin=read.version_margin, version_cosine=read.version_cosine,
                      fallback_versions=read.fallback_versions)
    held_out = make_samples(split, samples, seed + 1000, settings, val_paraphrases) if split == "val" else \
        make_samples(split, samples, seed, settings)
    rows = evaluate(ad, held_out, cache, thr)
    meta = {"family": family, "protocol": protocol, "seed": seed, "variant": "lite_write", "split": split,
            "augment_templates": cfg.augment_templates, "augment_separators": cfg.augment_separators,
            "augment_lead_ins": cfg.augment_lead_ins, "augment_question_leads": cfg.augment_question_leads,
            "val_paraphrases": val_paraphrases, "token_writer": cfg.token_writer,
            "lexical": thr.lexical, "lexical_idf": thr.lexical_idf, "version_margin": thr.version_margin, "version_cosine": thr.version_cosine,
            "fallback_versions": thr.fallback_versions,
            "replace_threshold": thr.replace, "route_threshold": thr.route, "write_threshold": thr.write,
            "final_loss": curve[-1], "seconds": round(time.time() - t0, 1)}
    return [{**meta, **r} for r in rows]


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Pool seeds and settings per (family, protocol, method) and over all families; Wilson 95% CIs."""
    groups: dict[tuple, list[int]] = {}
    for r in rows:
        if "correct" not in r:
            continue
        for fam in (r["family"], "pooled"):
            acc = groups.setdefault((fam, r["protocol"], r["row"]), [0, 0])
            acc[0] += r["correct"]
            acc[1] += r["total"]
    out = []
    for (fam, proto, row), (c, n) in groups.items():
        lo, hi = wilson_interval(c, n)
        out.append({"method": row, "task": f"{proto}/{fam}", "family": fam, "protocol": proto,
                    "correct": c, "total": n, "accuracy": c / n, "ci_low": lo, "ci_high": hi})
    return out


def markdown_table(summary: Sequence[dict]) -> str:
    lines = ["| protocol | family | method | correct / total | accuracy | Wilson 95% CI |", "|---|---|---|---|---|---|"]
    for s in sorted(summary, key=lambda s: (s["protocol"], s["family"] == "pooled", s["family"], ROWS.index(s["method"]))):
        lines.append(f"| {s['protocol']} | {s['family']} | {s['method']} | {s['correct']} / {s['total']} | "
                     f"{100 * s['accuracy']:.2f}% | [{s['ci_low']:.3f}, {s['ci_high']:.3f}] |")
    return "\n".join(lines)


def _default_cache_dir() -> Path:
    root = os.environ.get("MEMADAPTER_CACHE") or os.path.join("~", ".cache", "memadapter")
    return Path(root).expanduser() / "phase13"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.phase13", description=__doc__.split("\n")[0])
    ap.add_argument("--families", default=",".join(PAPER_FAMILIES),
                    help="comma list of tiny model types, or smollm2 for the real offline model")
    ap.add_argument("--protocol", choices=PROTOCOLS + ("both",), default="oracle")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=60, help="test samples per seed, spread over the settings")
    ap.add_argument("--max-events", type=int, default=2048, help="drop settings longer than this")
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--train-samples", type=int, default=TrainConfig.train_samples)
    ap.add_argument("--train-events", type=int, default=TrainConfig.train_events)
    ap.add_argument("--augment-templates", action="store_true",
                    help="train on several paraphrased templates per fact and question (val/test templates stay unseen)")
    ap.add_argument("--augment-separators", action="store_true",
                    help="train sentences vary the separator after the signal word (note : / note - / ...)")
    ap.add_argument("--augment-lead-ins", action="store_true",
                    help="some train plain statements begin with a lead-in word (also / meanwhile / ...)")
    ap.add_argument("--augment-question-leads", action="store_true",
                    help="half the train questions begin with a lead word (please / now / ...)")
    ap.add_argument("--token-writer", action="store_true",
                    help="learned: the writer attention-pools token states instead of reading the mean-pooled sentence")
    ap.add_argument("--lexical", type=float, default=0.0,
                    help="learned: weight of the question's word coverage added to key cosine (0: keys only)")
    ap.add_argument("--lexical-idf", choices=("stream", "train"), default="stream",
                    help="learned: coverage word weights from IDF over the stream or over the training sentences")
    ap.add_argument("--version-margin", type=float, default=None,
                    help="learned: read the latest version among slots within this score margin of the best")
    ap.add_argument("--version-cosine", type=float, default=0.5,
                    help="learned: ... whose key cosine with the best slot reaches this")
    ap.add_argument("--fallback-versions", action="store_true",
                    help="learned: the fallback reads the latest written version of its best event (needs --version-margin)")
    ap.add_argument("--write-false", type=float, default=None,
                    help="learned: calibrate the write threshold on val at this rate of unsignalled events written")
    ap.add_argument("--split", choices=("test", "val"), default="test",
                    help="evaluate on the test split, or on another draw of val (to choose settings)")
    ap.add_argument("--val-paraphrases", action="store_true",
                    help="learned: val samples (calibration, --split val) mix in value-first statements and imperative questions")
    ap.add_argument("--cache-dir", default=None, help="hidden-state cache (default $MEMADAPTER_CACHE/phase13)")
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--read-layer", type=int, default=None,
                    help="hidden-state index to read (default: last for tiny backbones, the middle for smollm2)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    families = [f for f in args.families.split(",") if f]
    protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
    settings = tuple(s for s in EVAL_SETTINGS if s[2] <= args.max_events)
    if not settings or args.seeds < 1 or args.samples < len(settings):
        raise ConfigError(f"samples: need at least one sample per setting ({len(settings)}) and seeds >= 1")
    cfg = TrainConfig(steps=args.steps, train_samples=args.train_samples, train_events=args.train_events,
                      augment_templates=args.augment_templates, augment_separators=args.augment_separators,
                      augment_lead_ins=args.augment_lead_ins, augment_question_leads=args.augment_question_leads,
                      token_writer=args.token_writer)
    read = Thresholds(0.0, 0.0, lexical=args.lexical, lexical_idf=args.lexical_idf, version_margin=args.version_margin,
                      version_cosine=args.version_cosine, fallback_versions=args.fallback_versions)
    cache_dir = None if args.no_cache else Path(args.cache_dir) if args.cache_dir else _default_cache_dir()
    rows: list[dict] = []
    for fam in families:
        model, tok, name = load_backbone(fam)
        layer = args.read_layer if args.read_layer is not None else default_read_layer(fam, model)
        cache = HiddenCache(model, tok, name, cache_dir, layer=layer)
        for proto in protocols:
            for seed in range(args.seeds):
                print(f"[phase13] {fam} {proto} seed {seed}", file=sys.stderr)
                rows += run_seed(fam, proto, seed, args.samples, cache, model.config.hidden_size, cfg, settings,
                                 read=read, split=args.split, write_false=args.write_false,
                                 val_paraphrases=args.val_paraphrases)
    summary = summarize(rows)
    print(markdown_table(summary))
    if args.json:
        write_rows_json(args.json, [{"method": r["row"], "task": r["setting"], **r} for r in rows] + summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
