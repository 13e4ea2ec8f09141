"""Batch-1 greedy decoding with and without Medusa heads: identical tokens, accepted length, CPU-time speed-up.

    .venv/bin/python bench/medusa_speed.py HEADS_DIR                   # heads from `alignlab medusa`
    .venv/bin/python bench/medusa_speed.py HEADS_DIR --offset 600 --limit 16 --max-new-tokens 96

Plain side: `rollout.generate.generate` at batch size 1 (our KV-cache sampler, one token per forward).
Speculative side: `rollout.speculative.medusa_generate` with the heads. Same process, same prompts (Alpaca
demo instructions from ALIGNLAB_DATA, rows offset..offset+limit), one torch thread. Process CPU time is
reported beside wall time because a shared machine inflates the latter. The numbers in docs/extras.md
come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("heads")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", default=os.path.join(os.environ.get("ALIGNLAB_DATA", "../shared/data"),
                                                  "llamafactory_demo", "alpaca_en_demo.json"))
    p.add_argument("--offset", type=int, default=600)
    p.add_argument("--limit", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--out", default=None, help="also write the result JSON here")
    args = p.parse_args()

    import torch

    from alignlab.data.sources import load_rows
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.models.medusa import load_medusa
    from alignlab.rollout.generate import SamplingConfig, generate
    from alignlab.rollout.speculative import medusa_generate

    torch.set_num_threads(1)
    rows = load_rows(args.data, task="prompt").rows[args.offset:args.offset + args.limit]
    model, tok = load_model(args.model), load_tokenizer(args.model)
    cfg = SamplingConfig(greedy=True, max_new_tokens=args.max_new_tokens, batch_size=1)
    generate(model, tok, rows[:1], SamplingConfig(greedy=True, max_new_tokens=8))  # warm-up
    c, t = time.process_time(), time.perf_counter()
    ref = generate(model, tok, rows, cfg)
    plain_cpu, plain_wall = time.process_time() - c, time.perf_counter() - t
    heads = load_medusa(args.heads, model)
    c, t = time.process_time(), time.perf_counter()
    res, stats = medusa_generate(model, heads, tok, rows, cfg)
    spec_cpu, spec_wall = time.process_time() - c, time.perf_counter() - t
    out = {"prompts": len(rows), "tokens": ref.num_tokens,
           "identical": sum(a.completion_ids == b.completion_ids for a, b in zip(ref.samples, res.samples)),
           "mean_accepted_length": stats.mean_accepted_length, "accepted_hist": stats.accepted,
           "verify_forwards": stats.forwards, "plain_cpu_s": plain_cpu, "spec_cpu_s": spec_cpu,
           "speedup_cpu": plain_cpu / spec_cpu, "plain_wall_s": plain_wall, "spec_wall_s": spec_wall,
           "threads": torch.get_num_threads()}
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
