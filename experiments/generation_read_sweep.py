"""Compare read-time settings of a trained adapter on generation dev streams, one ingest per stream.

Every ``--variant NAME:JSON`` (``ReadConfig`` settings by their flat names, applied over the
adapter's ``config.read``) answers every question of every stream with the ``memory`` method from
the *same* ingested memory, so a read rule costs one generation per question, not a 32K-token
ingest per stream. The
first variant should be the committed settings (``base:{}``): it reproduces the adapter's
``generation_eval`` dev row and so checks the sweep. Only settings read at select time may differ
between variants (an ingest-time setting would need its own ingest); the script refuses others.
``--reader NAME:DIR[:JSON]`` adds a variant that reads with the committed settings (JSON's over them) and the read-time
weights (:data:`READ_MODULES`: the QueryHead, the learned ReadScorer, the answer pointer and the injector) of the adapter
in DIR, e.g. ``memadapter.training.fit_reader``'s or ``fit_injector``'s output; they are read after the ingest only, and every other
tensor in DIR must equal the loaded adapter's. (``--query-head`` is its old name.)

    python -m experiments.generation_read_sweep --split validation --synthetic-names 0.0 --num-streams 16 \\
        --filler-tokens 30000 --seed 0 --variant base:{} --variant wide:'{"name_chunks": 3}' \\
        --reader fitted:runs/smollm2_open_reader --json out.json
"""
import argparse
import json
import sys

import torch
from tqdm import tqdm

from memadapter.modeling.configuration_settings import ReadConfig
from memadapter.training import generation_eval as ge

READ_TIME = frozenset(ReadConfig.names())  # read by select, never by ingest: variants may differ in these only
# adapter weights read after the ingest, never by it: select's (query head, scorer, pointer) and the injectors'
READ_MODULES = ("query_head.", "read_scorer.", "answer_pointer.", "injector.", "cross_attn.", "value_token_proj.")


def variants(items):
    out = {}
    for item in items:
        name, _, raw = item.partition(":")
        settings = json.loads(raw or "{}")
        bad = set(settings) - READ_TIME
        if bad:
            sys.exit(f"--variant {name}: {sorted(bad)} are not read-time settings ({sorted(READ_TIME)})")
        out[name] = settings
    return out


def read_weights(items, model):
    """``NAME:DIR[:JSON]`` items -> ({name: the READ_MODULES tensors of the adapter in DIR, by adapter
    key}, {name: the read-time settings JSON, applied over the committed ones}); exits when DIR holds
    another tensor that differs from ``model``'s (a weight the ingest reads). A module DIR lacks (an
    adapter saved before the ReadScorer) is left out: it reads as ``model``'s."""
    from safetensors.torch import load_file

    own, out, settings = model.adapter_state_dict(), {}, {}
    for item in items:
        name, _, rest = item.partition(":")
        path, _, raw = rest.partition(":")
        settings[name] = variants([f"{name}:{raw}"])[name]
        tensors = load_file(f"{path}/adapter_model.safetensors")
        differ = [k for k in sorted(set(own) | set(tensors)) if not k.startswith(READ_MODULES)
                  and not (k in own and k in tensors and torch.equal(own[k].cpu(), tensors[k]))]
        if differ:
            sys.exit(f"--reader {name}: {path} differs from the adapter in more than {', '.join(READ_MODULES)}: {differ[:3]}")
        out[name] = {k: v for k, v in tensors.items() if k.startswith(READ_MODULES)}
    return out, settings


def load_read_weights(model, state) -> None:
    """Load ``state`` (adapter keys under READ_MODULES, each module complete) into ``model``; a
    scorer saved before features were added reads them with weight 0 (``widen_features``)."""
    from memadapter.modeling.read_scorer import widen_features

    for prefix in READ_MODULES:
        module = getattr(model, prefix.rstrip("."), None)
        if module is None:  # an adapter without an answer pointer, or another injector
            continue
        own = module.state_dict()
        module.load_state_dict({k: widen_features(state[prefix + k], v) for k, v in own.items()})


def picked_value(model, ctx, tok, question: str) -> str:
    """The value text of the first entry ``select`` reads for the question ("unknown" for a withdrawn
    slot): what the injector is handed to copy, scored without generating."""
    from memadapter.modeling.reader import WITHDRAWN

    ctx.memory.restore(ctx.snapshot)
    ids = torch.tensor([ge.question_ids(tok, question)])  # [1, T]
    texts = model.select(ctx.memory, ids, torch.ones_like(ids)).texts[0]
    value = texts[0].rsplit(": ", 1)[-1].strip() if texts else ""
    return "unknown" if value == WITHDRAWN else value


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--adapter", default="modeling/adapters/smollm2-135m-prefix")
    p.add_argument("--base", default=None)
    p.add_argument("--builder", default="lifecycle", choices=("lifecycle", "open", "counterfactual"),
                   help="which generator's split (training.generation_eval --builder)")
    p.add_argument("--split", default="validation")
    p.add_argument("--synthetic-names", type=float, default=0.0)
    p.add_argument("--num-streams", type=int, default=16)
    p.add_argument("--filler-tokens", type=int, default=30000)
    p.add_argument("--filler-source", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", action="append", default=[], metavar="NAME:JSON")
    p.add_argument("--reader", "--query-head", dest="reader", action="append", default=[], metavar="NAME:DIR[:JSON]",
                   help="a variant with the QueryHead and ReadScorer of the adapter in DIR, and the committed settings "
                        "(with JSON's read-time settings over them)")
    p.add_argument("--json", default=None, help="rows and every prediction, per variant")
    p.add_argument("--select-only", action="store_true",
                   help="no generation: a question's prediction is the value of the entry it selects first")
    args = p.parse_args()
    todo = variants(args.variant)
    args.set, args.dtype, args.device = [], "float32", None
    model = ge._load_model(args, *ge._model_dirs(args))
    tok, base = model.tokenizer, model.config.read.to_dict()
    heads, head_settings = read_weights(args.reader, model)
    own = {k: v.clone() for k, v in model.adapter_state_dict().items() if k.startswith(READ_MODULES)}
    if set(heads) & set(todo):
        sys.exit(f"--reader: {sorted(set(heads) & set(todo))} already name a --variant")
    todo.update(head_settings)
    if not todo:
        sys.exit("give at least one --variant or --reader")
    settings = ge._Settings(max_new_tokens=12, full_context_tokens=8192, tail_tokens=1024, chat=True)
    preds = []
    for i, stream in enumerate(tqdm(list(ge._streams(args)), desc="read sweep", unit="stream")):
        text, questions = ge._inputs(stream, i, None)
        ctx = ge._stream_context(model, tok, text, ["memory"])
        for name, overrides in todo.items():
            model.config.apply_settings({**base, **overrides})
            load_read_weights(model, {**own, **heads.get(name, {})})
            # the memory was ingested under the first variant's fingerprint; these weights are not read by
            # the ingest (read_weights checked), so it is the same memory under this variant's
            ctx.memory.adapter_id = model.adapter_fingerprint()
            for q in questions:
                pred = picked_value(model, ctx, tok, q["question"]) if args.select_only else \
                    ge._answer(model, tok, "memory", ctx, q["question"], ge.question_ids(tok, q["question"]), settings)
                preds.append({"split": args.split, "stream": str(stream.get("id", i)), "method": name,
                              "kind": q["kind"], "question": q["question"], "gold": q["answer"], "prediction": pred,
                              "skipped": False, **ge.score_prediction(pred, q)})
    rows = ge.summarize(preds, list(todo), args.split)
    print(ge.markdown_table(rows))
    first = {(p["stream"], p["question"]): p["prediction"] for p in preds if p["method"] == list(todo)[0]}
    for p in preds:  # what each variant changed against the first
        old = first[(p["stream"], p["question"])]
        if p["prediction"] != old:
            print(f"{p['method']}: {p['kind']} | {p['question']} | gold {p['gold']} | {old} -> {p['prediction']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "variants": todo, "rows": rows, "predictions": preds}, f, indent=1)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
