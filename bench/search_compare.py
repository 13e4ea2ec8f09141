"""Sampling, greedy, beam and MCTS decoding of a DPO policy on held-out sentiment openings (docs/extras.md, Sec. 5).

    .venv/bin/python bench/search_compare.py POLICY_DIR [--prompts 12] [--budget 48] [--out compare.json]

POLICY_DIR: a LoRA-DPO adapter (or model) trained from smollm2-135m-instruct, e.g. by
`alignlab best-of-n ... --reward sentiment` then `alignlab dpo lora.r=16 ...`. Reports, per method, the mean
VADER reward, the mean implicit reward beta * sum log pi / pi_ref of the chosen completions, the win rate
against the sampled completions, model calls per prompt and process CPU time (one torch thread). `--budget` sets
MCTS's calls per prompt and the number of samples of the equal-compute best-of-k row (k = budget / (tokens + 2)).
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("policy")
    p.add_argument("--reference", default="smollm2-135m-instruct")
    p.add_argument("--prompts", type=int, default=12)
    p.add_argument("--offset", type=int, default=200, help="first held-out builtin:sentiment opening")
    p.add_argument("--budget", type=int, default=48)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    import torch

    from alignlab.data.builtin import builtin_rows
    from alignlab.eval.measures import completion_logps
    from alignlab.eval.winrate import win_rate
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.rollout.beam import BeamConfig, beam_search
    from alignlab.rollout.encode import encode_prompt
    from alignlab.rollout.generate import SamplingConfig, generate
    from alignlab.rollout.rewards import get_reward, score
    from alignlab.rollout.search import MCTSConfig, mcts_search

    torch.set_num_threads(1)
    n, t = args.prompts, args.max_new_tokens
    rows = builtin_rows("sentiment", args.offset + n, 0)[args.offset:args.offset + n]
    texts_in = [r.prompt[0]["content"] for r in rows]
    tok = load_tokenizer(args.reference)
    policy, ref = load_model(args.policy).eval(), load_model(args.reference).eval()
    reward = get_reward("sentiment")
    ids = [encode_prompt(tok, r) for r in rows]
    res: dict[str, dict] = {}

    def record(name: str, comps: list[list[int]], calls: float, cpu: float) -> None:
        txt = [tok.decode(c, skip_special_tokens=True) for c in comps]
        lp, lr = completion_logps(policy, list(zip(ids, comps))), completion_logps(ref, list(zip(ids, comps)))
        r = score(reward, texts_in, txt)
        res[name] = {"reward": sum(r) / n, "rewards": r, "calls_per_prompt": calls / n, "cpu_s": cpu,
                     "implicit_reward": sum(args.beta * (sum(a) - sum(b)) for a, b in zip(lp, lr)) / n, "texts": txt}
        print(name, {k: v for k, v in res[name].items() if k not in ("rewards", "texts")}, flush=True)

    with torch.inference_mode():
        for name, sc in (("sampling (T=1)", SamplingConfig(max_new_tokens=t, seed=0, batch_size=1)),
                         ("greedy", SamplingConfig(max_new_tokens=t, greedy=True, batch_size=1))):
            c = time.process_time()
            g = generate(policy, tok, rows, sc)
            record(name, [s.completion_ids for s in g.samples], g.num_tokens, time.process_time() - c)
        c = time.process_time()
        h = beam_search(policy, tok, rows, BeamConfig(num_beams=4, max_new_tokens=t))
        record("beam 4 (log pi)", [x.completion_ids for x in h], 4 * sum(len(x.completion_ids) for x in h),
               time.process_time() - c)
        # Equal compute: best-of-k samples ranked by the same implicit reward MCTS maximises, k chosen so that
        # k sampled rows plus one policy and one reference scoring forward per candidate match MCTS's budget.
        k = max(1, round(args.budget / (t + 2)))
        c = time.process_time()
        g = generate(policy, tok, [r for r in rows for _ in range(k)], SamplingConfig(max_new_tokens=t, seed=1,
                                                                                      batch_size=k))
        cands = [s.completion_ids for s in g.samples]
        pairs = [(ids[i // k], cd) for i, cd in enumerate(cands)]
        lp, lr = completion_logps(policy, pairs), completion_logps(ref, pairs)
        implicit = [sum(a) - sum(b) for a, b in zip(lp, lr)]
        best = [max(range(i * k, i * k + k), key=implicit.__getitem__) for i in range(n)]
        record(f"best-of-{k} by implicit reward", [cands[j] for j in best], g.num_tokens + 2 * len(cands),
               time.process_time() - c)
        c = time.process_time()
        m = mcts_search(policy, ref, tok, rows, MCTSConfig(budget=args.budget, beta=args.beta, max_new_tokens=t))
        record(f"mcts budget {args.budget}", [x.completion_ids for x in m], sum(x.calls for x in m),
               time.process_time() - c)
    base = res["sampling (T=1)"]["rewards"]
    for v in res.values():
        outcomes = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(v["rewards"], base)]
        v["win_rate_vs_sampling"] = win_rate(outcomes, n_boot=1000).to_dict()
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
