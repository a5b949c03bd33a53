"""Would reading the pointer's question prompt once pay? A measurement, not a read path.

The answer pointer reads each of a question's sentences behind the same question prompt
(``read_answers.pair_ids``), so a select runs the prompt's tokens through the whole backbone once
per sentence. This script times, per question of a validation stream, that forward as the read path
runs it (the padded pairs, ``read_answers.pointer_features``) against the same features computed
with the prompt read once: its keys and values cached, repeated for every sentence, and the
sentences read after them. It reports the ratio (shared / plain; median over questions, each the
best of ``--repeats``) and the largest feature difference over real tokens.

    OMP_NUM_THREADS=1 python -m experiments.pointer_prompt_cache --builder open --split val_unseen_templates \\
        --num-streams 1 --filler-tokens 4000 --seed 2 --json runs/pointer_prompt_cache.json
"""
import argparse
import json
import statistics
import time

import torch

from memadapter.modeling.backbones import backbone_parts
from memadapter.modeling.read_answers import pair_ids, pointer_features
from memadapter.training import generation_eval as ge


def shared_prompt_features(model, prompt: list[int], sentences: list[list[int]], layers: list[int]) -> torch.Tensor:
    """``pointer_features`` of [prompt + sentence] rows [G, n + S, L * H], the prompt read once."""
    decoder = backbone_parts(model.backbone).decoder
    device = next(model.backbone.parameters()).device
    p = torch.tensor([prompt], device=device)  # [1, n]
    head = decoder(input_ids=p, attention_mask=torch.ones_like(p), use_cache=True, output_hidden_states=True)
    ids, mask = model._right_pad(sentences)  # [G, S], padded as the read path pads its pairs
    g, n = len(sentences), len(prompt)
    cache = head.past_key_values
    cache.batch_repeat_interleave(g)  # the prompt's keys and values, once per sentence
    full_mask = torch.cat([torch.ones(g, n, dtype=torch.long, device=device), mask], 1)  # [G, n + S]
    positions = torch.arange(n, n + ids.shape[1], device=device)[None].expand(g, -1)
    tail = decoder(input_ids=ids, attention_mask=full_mask, past_key_values=cache, position_ids=positions,
                   use_cache=True, output_hidden_states=True)
    states = [torch.cat([a.expand(g, -1, -1), b], 1) for a, b in zip(head.hidden_states, tail.hidden_states)]
    return torch.cat([states[i] for i in layers], -1)


def best_time(fn, repeats: int) -> tuple[float, torch.Tensor]:
    """(the fastest of ``repeats`` calls of ``fn``, in seconds; what the last call returned)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", default="modeling/adapters/smollm2-135m-prefix")
    p.add_argument("--base", default=None)
    p.add_argument("--builder", default="open", choices=("lifecycle", "open", "counterfactual"))
    p.add_argument("--split", default="val_unseen_templates")
    p.add_argument("--num-streams", type=int, default=1)
    p.add_argument("--filler-tokens", type=int, default=4000)
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.split.startswith("test"):
        raise SystemExit("validation halves only")
    torch.set_num_threads(args.threads)
    args.set, args.device, args.dtype, args.synthetic_names, args.filler_source = [], None, "float32", 0.0, "auto"
    model = ge._load_model(args, *ge._model_dirs(args))
    tok, layers = model.tokenizer, list(model.config.answer_layers)
    device = next(model.backbone.parameters()).device
    rows = []
    with torch.no_grad():
        for stream in ge._streams(args):
            memory = model.new_memory()
            model.ingest(memory, stream["text"], progress=False)
            index = memory.indexes[0]
            for q in stream["questions"]:
                question = str(q["question"])
                ids = torch.tensor([ge.question_ids(tok, question)], device=device)
                chunks = model._retrieved_chunks(memory, 0, model._mean(model._hidden(ids, torch.ones_like(ids)),
                                                                        torch.ones_like(ids))[0].float().cpu(), question)
                found = model._answer_sentences(memory, 0, question, chunks)
                if not found or not len(index):
                    continue
                encoded = [pair_ids(tok, question, s) for _, _, s, _ in found]
                n = encoded[0][1]
                pairs, mask = model._right_pad([e for e, _ in encoded])  # as the read path pads them
                sentences = [e[n:] for e, _ in encoded]
                t_plain, plain = best_time(lambda: pointer_features(model, pairs, mask, layers)[0], args.repeats)
                t_shared, shared = best_time(lambda: shared_prompt_features(model, encoded[0][0][:n], sentences, layers),
                                             args.repeats)
                rows.append({"question": question, "prompt_tokens": n, "sentence_tokens": [len(e) - n for e, _ in encoded],
                             "plain_s": t_plain, "shared_s": t_shared, "ratio": t_shared / t_plain,
                             "max_abs_diff": float((plain - shared)[mask.bool()].abs().max())})
    summary = {"questions": len(rows), "median_ratio": statistics.median(r["ratio"] for r in rows),
               "median_plain_s": statistics.median(r["plain_s"] for r in rows),
               "median_shared_s": statistics.median(r["shared_s"] for r in rows),
               "max_abs_diff": max(r["max_abs_diff"] for r in rows), "args": vars(args)}
    print(json.dumps({k: v for k, v in summary.items() if k != "args"}, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**summary, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
