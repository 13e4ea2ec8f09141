"""Batch-1 decoding with and without Medusa heads: identical tokens, accepted length, CPU-time speed-up, for the
top-1 chain and for candidate trees of several sizes.

    .venv/bin/python bench/medusa_speed.py HEADS_DIR                   # heads from `alignlab medusa`
    .venv/bin/python bench/medusa_speed.py HEADS_DIR --offset 600 --limit 16 --max-new-tokens 96 \\
        --trees 1x3,4x16 --temperature 0.7

Plain side: `rollout.generate.generate` at batch size 1 (our KV-cache sampler, one token per forward).
Speculative side: `rollout.speculative.medusa_generate` with the heads, once per tree given as TOPKxNODES
(1x3 = the top-1 chain of 3 heads; 4x16 = 16 nodes from each head's top 4). Greedy by default (the
completions must be identical); with --temperature T each side also samples at T (typical acceptance with
Medusa's defaults; the sampled completions differ, so only lengths and rates are compared). Same process,
same prompts (Alpaca demo instructions from ALIGNLAB_DATA, rows offset..offset+limit), one torch thread.
Process CPU time is reported beside wall time because a shared machine inflates the latter. The numbers in
docs/extras.md come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def _timed(fn):
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c, time.perf_counter() - t


def _speculative(model, heads, tok, rows, cfg, tree, ref, plain_cpu):
    from alignlab.rollout.speculative import MedusaDecoding, medusa_generate

    top_k, nodes = (int(x) for x in tree.split("x"))
    (res, stats), cpu, wall = _timed(lambda: medusa_generate(
        model, heads, tok, rows, cfg, MedusaDecoding(tree_top_k=top_k, tree_nodes=nodes)))
    out = {"tree": tree, "tokens": res.num_tokens, "mean_accepted_length": round(stats.mean_accepted_length, 4),
           "accepted_hist": stats.accepted, "verify_forwards": stats.forwards, "cpu_s": round(cpu, 2),
           "wall_s": round(wall, 2), "cpu_s_per_token": round(cpu / res.num_tokens, 5),
           "parts_wall_s": {k: round(v, 2) for k, v in stats.seconds.items()}}
    if cfg.greedy:
        out["identical"] = sum(a.completion_ids == b.completion_ids for a, b in zip(ref.samples, res.samples))
        out["speedup_cpu"] = round(plain_cpu / cpu, 4)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("heads")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", default=os.path.join(os.environ.get("ALIGNLAB_DATA", "../shared/data"),
                                                  "llamafactory_demo", "alpaca_en_demo.json"))
    p.add_argument("--offset", type=int, default=600)
    p.add_argument("--limit", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--trees", default="1x3,4x16", help="comma-separated TOPKxNODES trees (1xK = the chain)")
    p.add_argument("--temperature", type=float, default=None, help="sample at this temperature (default greedy)")
    p.add_argument("--out", default=None, help="also write the result JSON here")
    args = p.parse_args()

    import torch

    from alignlab.data.sources import load_rows
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.models.medusa import load_medusa
    from alignlab.rollout.generate import SamplingConfig, generate

    torch.set_num_threads(1)
    rows = load_rows(args.data, task="prompt").rows[args.offset:args.offset + args.limit]
    model, tok = load_model(args.model), load_tokenizer(args.model)
    greedy = args.temperature is None
    cfg = SamplingConfig(greedy=greedy, temperature=args.temperature or 1.0, max_new_tokens=args.max_new_tokens,
                         batch_size=1, sort_by_length=False)
    generate(model, tok, rows[:1], SamplingConfig(greedy=True, max_new_tokens=8))  # warm-up
    ref, plain_cpu, plain_wall = _timed(lambda: generate(model, tok, rows, cfg))
    heads = load_medusa(args.heads, model)
    out = {"prompts": len(rows), "greedy": greedy, "temperature": args.temperature, "plain_tokens": ref.num_tokens,
           "plain_cpu_s": round(plain_cpu, 2), "plain_wall_s": round(plain_wall, 2),
           "plain_cpu_s_per_token": round(plain_cpu / ref.num_tokens, 5), "threads": torch.get_num_threads(),
           "speculative": [_speculative(model, heads, tok, rows, cfg, t, ref, plain_cpu)
                           for t in args.trees.split(",")]}
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
