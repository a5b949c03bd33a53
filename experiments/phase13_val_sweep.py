"""Choose Phase 13 (b) training settings on the validation split only (no test sample is read).

Per family and adapter seed, each configuration trains one adapter (``TrainConfig`` fields over
the learned-protocol defaults below), calibrates on the plain val split (30 samples per setting up
to 128 events), and answers one val draw of 60 samples over the 10 settings twice: as drawn
("mix": value-first statements, half the questions imperative) and with every question rewritten to
val's imperative form "say which ..." ("imp"). Prints hybrid correct per run and the totals; the
rows of docs/results/phase13_val_train_samples.json came from this script.

    python -m experiments.phase13_val_sweep llama,qwen2 0,1,2 '{"C3": {"steps": 2000, "train_samples": 960}}' out.json

``--read`` gives read settings per name (``readout_weight`` scales the fallback's readout logits);
``--val-samples`` a larger val draw where 60 samples saturate (SmolLM2).
"""
import argparse
import json
import time
from dataclasses import replace

import torch

from .phase13 import EVAL_SETTINGS, TrainConfig, _default_cache_dir, evaluate, train
from .phase13_backbones import HiddenCache, default_read_layer, load_backbone
from .phase13_data import _Q, _Q_VAL_EXTRA, make_samples
from .phase13_read import calibrate

BASE = {"protocol": "learned", "steps": 1000, "augment_templates": True, "token_writer": True}
READ = {"lexical": 2.0, "lexical_idf": "train", "version_margin": 0.3, "version_cosine": 0.5, "readout_weight": 1.0}
IMPERATIVE = {attr: forms[0] for attr, forms in _Q_VAL_EXTRA.items()}  # val's own imperative questions


def imperative(sample):
    """The sample with its wh-question rewritten as val's imperative one (already imperative: as is)."""
    for attr, q in _Q["val"].items():
        pre, post = q.split("{e}")
        if sample.query.startswith(pre) and sample.query.endswith(post):
            return replace(sample, query=IMPERATIVE[attr].format(e=sample.query[len(pre):len(sample.query) - len(post)]))
    return sample


def read_all(ad, cal, draws, cache, rd) -> dict:
    """Hybrid correct per setting for each draw, read with the settings ``rd`` (over READ)."""
    r = {**READ, **rd}
    thr = replace(calibrate(ad, cal, cache, lexical=r["lexical"], write_false=0.01, lexical_idf=r["lexical_idf"]),
                  version_margin=r["version_margin"], version_cosine=r["version_cosine"], fallback_versions=True)
    scores = ad.readout_scores
    ad.readout_scores = lambda f: r["readout_weight"] * scores(f)  # instance attribute, dropped below
    try:
        return {form: {row["setting"]: row["correct"] for row in evaluate(ad, groups, cache, thr)
                       if row.get("row") == "hybrid"} for form, groups in draws.items()}
    finally:
        del ad.readout_scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("families"), ap.add_argument("seeds"), ap.add_argument("configs"), ap.add_argument("out")
    ap.add_argument("--read", default='{"as_built": {}}', help="JSON: read-settings name -> settings")
    ap.add_argument("--val-samples", type=int, default=60, help="samples of the val draw per seed (over the 10 settings)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    configs, reads, out, total = json.loads(args.configs), json.loads(args.read), [], {}
    for fam in args.families.split(","):
        model, tok, name = load_backbone(fam)
        cache = HiddenCache(model, tok, name, _default_cache_dir(), layer=default_read_layer(fam, model))
        for seed in map(int, args.seeds.split(",")):
            held = make_samples("val", args.val_samples, seed + 1000, EVAL_SETTINGS, True)
            draws = {"mix": held, "imp": {k: [imperative(s) for s in v] for k, v in held.items()}}
            cal = make_samples("val", 30, seed, [s for s in EVAL_SETTINGS if s[2] <= 128])
            for cname, over in configs.items():
                t0 = time.time()
                ad, _ = train(TrainConfig(**{**BASE, "seed": seed, **over}), cache, model.config.hidden_size)
                for rname, rd in reads.items():
                    res, key = read_all(ad, cal, draws, cache, rd), f"{cname}/{rname}"
                    for form, per in res.items():
                        total.setdefault(key, {}).setdefault(form, 0)
                        total[key][form] += sum(per.values())
                    out.append({"family": fam, "seed": seed, "config": key, **res})
                    print(fam, seed, key, {f: sum(v.values()) for f, v in res.items()}, f"{time.time() - t0:.0f}s", flush=True)
                with open(args.out, "w") as fh:
                    json.dump(out, fh, indent=1)
    print("TOTAL", total)


if __name__ == "__main__":
    main()
