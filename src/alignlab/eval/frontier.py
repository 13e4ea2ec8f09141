"""The reward-vs-KL frontier (DPO paper, Rafailov et al. 2023, Sec. 6.1, Fig. 2 left): points, envelopes, plot.

A point is one (method, hyper-parameter, checkpoint): mean reward of its samples on held-out prompts and
its KL to the base (eval/policy.py). A method's frontier is its envelope, the best reward reached at each
KL budget. Best-of-N gets the analytic KL log N - (N - 1) / N (Stiennon et al. 2020, App. G.3); beam
search on a DPO policy is search on its implicit reward. `recipes/frontier.py` runs the sweep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignlab.eval.report import png_figure


def beam_reward(cfg: Any, policy: Any, ctx: dict) -> dict:
    """Mean reward of beam search on the policy (= search on the implicit reward) vs one sample per prompt."""
    from alignlab.eval.policy import score_rows
    from alignlab.rollout.beam import BeamConfig, beam_search

    hyps = beam_search(policy, ctx["tokenizer"], ctx["eval_rows"], BeamConfig(cfg.beam_width, cfg.max_new_tokens))
    rewards = score_rows(ctx["reward_fn"], ctx["eval_rows"], [h.text for h in hyps], 1)
    return {"num_beams": cfg.beam_width, "reward": sum(rewards) / len(rewards)}


def run_best_of_n(cfg: Any, ns: list[float], ctx: dict) -> list[dict]:
    """Best-of-N from the base model: reward of the best of the first N samples of each held-out prompt; KL is
    the analytic log N - (N - 1) / N (Stiennon et al. 2020), exact for distinct samples."""
    import math

    from alignlab.eval.policy import score_rows
    from alignlab.rollout.generate import SamplingConfig, generate

    rows, k, top = ctx["eval_rows"], cfg.eval_samples, int(max(ns))
    res = generate(ctx["base"], ctx["tokenizer"], rows, SamplingConfig(max_new_tokens=cfg.max_new_tokens,
                                                                     seed=cfg.seed + 7), n=top * k)
    rewards = score_rows(ctx["reward_fn"], rows, [s.text for s in res.samples], top * k)
    out = []
    for n in sorted(int(x) for x in ns):
        best = [max(rewards[(i * k + j) * top:(i * k + j) * top + n]) for i in range(len(rows)) for j in range(k)]
        mean = sum(best) / len(best)
        out.append({"method": "best_of_n", "value": n, "points": [
            {"step": 0, "reward": mean, "reward_se": None, "kl": math.log(n) - (n - 1) / n, "kl_se": 0.0}]})
    return out


def envelope(points: list[dict]) -> list[tuple[float, float]]:
    """The frontier of a set of points: (kl, best reward at KL <= kl), at each point where it rises."""
    best, out = float("-inf"), []
    for p in sorted(points, key=lambda p: (p["kl"], -p["reward"])):
        if p["reward"] > best:
            best = p["reward"]
            out.append((p["kl"], best))
    return out


def frontier_summary(runs: dict[str, dict]) -> dict:
    """Each method's envelope and the method whose envelope is highest on average over the KL range every
    method covers (a step function evaluated on 50 points from 0 to the smallest of the methods' largest KL)."""
    by_method: dict[str, list[dict]] = {}
    for r in runs.values():
        by_method.setdefault(r["method"], []).extend(p for p in r["points"] if p.get("kl") is not None)
    env = {m: envelope(ps) for m, ps in by_method.items() if ps}
    if not env:
        return {"envelopes": {}, "highest": None, "best": {}}
    kl_max = min(max(p["kl"] for p in ps) for ps in by_method.values() if ps)
    grid = [kl_max * i / 49 for i in range(50)] if kl_max > 0 else [0.0]

    def height(e: list[tuple[float, float]]) -> float:
        vals = [max((r for k, r in e if k <= g), default=e[0][1]) for g in grid]
        return sum(vals) / len(vals)

    heights = {m: height(e) for m, e in env.items()}
    top = max(heights.values())
    leaders = [m for m, h in heights.items() if h == top]
    best = {m: {"reward": e[-1][1], "kl": e[-1][0]} for m, e in env.items()}
    return {"envelopes": env, "mean_reward_on_common_kl": heights, "common_kl_range": [0.0, kl_max],
            "highest": leaders[0] if len(leaders) == 1 else "tie: " + ", ".join(leaders), "best": best}


def plot_frontier(runs: dict[str, dict], summary: dict, path: Path) -> Path:
    """Reward against KL: every point faint, each method's envelope as a line (DPO paper, Fig. 2 left)."""
    colours = {"dpo": "#1f77b4", "ipo": "#17becf", "simpo": "#9467bd", "ppo": "#d62728", "grpo": "#ff7f0e",
               "best_of_n": "#2ca02c"}
    with png_figure(path, (6.4, 4.2), dpi=90) as (fig, ax):
        for r in runs.values():
            pts = [p for p in r["points"] if p.get("kl") is not None]
            ax.scatter([p["kl"] for p in pts], [p["reward"] for p in pts], s=12, alpha=0.35,
                       color=colours.get(r["method"], "grey"))
        for m, e in summary["envelopes"].items():
            ax.plot([k for k, _ in e], [r for _, r in e], "o-", color=colours.get(m, "grey"), label=m, ms=4)
        ax.set_xlabel("KL(policy || base), nats per completion")
        ax.set_ylabel("mean VADER reward, held-out prompts")
        ax.set_title("reward vs KL frontier")
        ax.legend()
    return path
