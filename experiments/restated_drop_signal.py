"""Do the training streams teach ``restated_drop``? A text-only count, no model.

Per question of a stream and per later event sentence that restates (share >= 0.5,
:func:`memadapter.restatement.restatement`) an earlier event sentence of the asked entity, whether
the later one is about the same entity (a correction or a version) or another (a look-alike in
the same words), and whether it leaves out a question word the earlier sentence names
(:func:`memadapter.restatement.dropped_words` > 0). The feature can be learned where the two
kinds differ in that column and both are frequent.

    python -m experiments.restated_drop_signal --streams 60 --seed 0
"""
import argparse
import collections
import json

from memadapter.restatement import dropped_words, restatement
from memadapter.training.counterfactual import build_counterfactual_dataset
from memadapter.training.lifecycle_data import build_dataset
from memadapter.training.open_data import build_open_dataset


def count(streams) -> collections.Counter:
    """{(same entity?, drops a question word?): cases} over the streams' questions."""
    out = collections.Counter()
    for st in streams:
        events, text = st["events"], st["text"]
        for q in st["questions"]:
            asked = q.get("entity") or q.get("key")
            for j, b in enumerate(events):
                later = text[b["start"]:b["end"]]
                for a in events[:j]:
                    if not asked or a.get("entity") != asked:
                        continue
                    earlier = text[a["start"]:a["end"]]
                    if restatement(later, earlier)[0] < 0.5:
                        continue
                    same = "same" if b.get("entity") == asked else "other"
                    out[(same, dropped_words(q["question"], later, earlier) > 0)] += 1
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    builders = {"open": lambda: build_open_dataset("train", args.streams, args.seed, filler_tokens=100),
                "lifecycle": lambda: build_dataset("train", args.streams, args.seed, filler_tokens=100),
                "counterfactual": lambda: build_counterfactual_dataset("train", args.streams // 2, args.seed,
                                                                       filler_tokens=100)}
    rows = {name: {f"{same}, drops={drops}": n for (same, drops), n in sorted(count(build()).items())}
            for name, build in builders.items()}
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
