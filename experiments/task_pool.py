"""Which pool entries win a ``memadapter eval`` sample? The adapter's best-scored entries, no generation.

For each sample of a task file (``memadapter eval --write-tasks``) this ingests the context once,
builds the read pool for the sample's query and lists the ``--top`` entries by the reader's score:
score, slot or grounded event, withdrawn or not, event type, value and sentence. The references
are printed beside them only to read the list; nothing is fed back. Draw the samples with another
``--seed`` than the one reported, so what is learned here is not fitted to the reported samples.

    .venv/bin/memadapter eval --write-tasks runs/rw_seed1.jsonl --tasks niah_rewritten --lengths 4K \\
        --num-samples 3 --seed 1
    OMP_NUM_THREADS=1 python -m experiments.task_pool runs/rw_seed1.jsonl --json runs/rw_pool.json
"""
import argparse
import json

import torch


def top_entries(model, tokenizer, context: str, query: str, top: int = 6) -> list[dict]:
    """The ``top`` pool entries for ``query`` over a fresh memory of ``context``, best score first."""
    memory = model.new_memory()
    model.ingest(memory, context, progress=False)
    q = tokenizer(query.strip(), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([q])  # [1, T]
    qp = model.read_pools(memory, ids, torch.ones_like(ids))[0]
    if not len(qp.pool):
        return []
    scores, valid = model.score_pools([qp])
    score = scores[0]  # [N]
    order = [j for j in torch.argsort(score, descending=True).tolist() if valid[0, j]][:top]  # entries it may pick
    return [{"score": float(score[j]), "slot": bool(qp.pool.is_slot[j]), "withdrawn": bool(qp.pool.withdrawn[j]),
             "event_type": qp.pool.event_types[j], "value": qp.pool.value_texts[j], "sentence": qp.pool.sentences[j]}
            for j in order]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("tasks", help="a task file written by `memadapter eval --write-tasks`")
    p.add_argument("--adapter", default=None, help="adapter directory (default: the bundled one)")
    p.add_argument("--top", type=int, default=6)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    from memadapter.modeling import MemAdapterForCausalLM
    from memadapter.modeling.real_models import bundled_adapter_path, load_smollm2

    backbone, tokenizer = load_smollm2()
    model = MemAdapterForCausalLM.from_pretrained(backbone, adapter=args.adapter or bundled_adapter_path(),
                                                  tokenizer=tokenizer).eval()
    rows = []
    with open(args.tasks) as f:
        for line in f:
            t = json.loads(line)
            entries = top_entries(model, tokenizer, t["context"], t["query"], args.top)
            rows.append({"id": t["id"], "task": t["task"], "query": t["query"], "references": t["references"],
                         "stale_values": t.get("stale_values"), "entries": entries})
            print(t["task"], t["query"][:70], "| gold", t["references"], "| stale", t.get("stale_values"))
            for e in entries:
                print(f"  {e['score']:7.2f} {'slot ' if e['slot'] else 'event'} {'WITHDRAWN' if e['withdrawn'] else '         '}"
                      f" {e['value']!r:.40} | {e['sentence'][:100]!r}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
