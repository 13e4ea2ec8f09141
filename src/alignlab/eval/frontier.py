"""The reward-vs-KL frontier (DPO paper, Rafailov et al. 2023, Sec. 6.1, Fig. 2 left): points, envelopes, plot.

A point is one (method, hyper-parameter, checkpoint): mean reward of its samples on held-out prompts and
its KL to the base (eval/policy.py). A method's frontier is its envelope, the best reward reached at each
KL budget. Best-of-N gets the analytic KL log N - (N - 1) / N (Stiennon et al. 2020, App. G.3); beam
search on a DPO policy is search on its implicit reward. `recipes/frontier.py` runs the sweep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.errors import AlignlabError
from alignlab.eval.report import png_figure

DPO_FAMILY = ("dpo", "ipo", "simpo")
RL_METHODS = ("ppo", "grpo")

# What a run's numbers depend on. Shared keys shape every run (the prompts, the base samples the DPO pairs come
# from, the held-out measurement): a points.json made under other values cannot be extended. A method's own keys
# only make that method's runs stale: they are dropped and redone (when the sweep has them).
SHARED_KEYS = ("model", "train_prompts", "samples_per_prompt", "eval_prompts", "eval_samples", "max_new_tokens",
               "seed")
_TRAINED = ("steps", "eval_every", "batch_size", "lora_r")
METHOD_KEYS = {**{m: (*_TRAINED, "dpo_learning_rate", "beam_width") for m in DPO_FAMILY},
               "ppo": (*_TRAINED, "rl_learning_rate"), "grpo": (*_TRAINED, "rl_learning_rate", "num_generations"),
               "best_of_n": ()}


def run_settings(config: dict, method: str) -> dict:
    """The config values a `method` run's points depend on (stored with each run in points.json)."""
    return {k: config.get(k) for k in (*SHARED_KEYS, *METHOD_KEYS[method])}


def stale_runs(data: dict, config: dict, where: str) -> dict[str, dict]:
    """Runs in points.json `data` made under other settings than `config`: {run key: {key: (then, now)}}. A
    change to a shared key is an AlignlabError (start a new output_dir); runs saved without their own settings
    (older files) are judged by the file's config."""
    stale = {}
    for key, run in data.get("runs", {}).items():
        then = run.get("settings") or run_settings(data.get("config", {}), run["method"])
        now = run_settings(config, run["method"])
        diff = {k: (then.get(k), v) for k, v in now.items() if then.get(k) != v}
        shared = {k: d for k, d in diff.items() if k in SHARED_KEYS}
        if shared:
            changes = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in shared.items())
            raise AlignlabError(f"{where}: its runs share other settings ({changes}); give a new output_dir")
        if diff:
            stale[key] = diff
    return stale


def save_points(path: Path, data: dict) -> None:
    """Write points.json through a temporary file and a rename: a crash mid-write leaves the previous file."""
    import json

    from alignlab.files import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def preference_pairs(cfg: FrontierConfig, config: dict, out: Path, ctx: dict, saved_runs: bool) -> Path:
    """The DPO runs' best-vs-worst pairs, sampled once from the base model and reused by later runs, as long as
    preferences.settings.json says they were sampled under this config's shared settings: a first attempt
    stopped before any run was saved leaves pairs that points.json's guard never sees. Pairs without that file
    (an older run) are trusted when points.json has runs (its guard checked the same settings), else resampled."""
    import json

    from alignlab.rollout.pairs import sample_pairs

    pairs, settings = out / "preferences.jsonl", out / "preferences.settings.json"
    shared = {k: config.get(k) for k in SHARED_KEYS}
    then = json.loads(settings.read_text()) if settings.is_file() else (shared if saved_runs else None)
    if pairs.is_file() and then is not None and then != shared:
        changes = ", ".join(f"{k} {then.get(k)!r} -> {v!r}" for k, v in shared.items() if then.get(k) != v)
        raise AlignlabError(f"{pairs}: sampled under other settings ({changes}); give a new output_dir")
    if not (pairs.is_file() and then == shared):
        sample_pairs(ctx["base"], ctx["tokenizer"], ctx["train_rows"], ctx["reward_fn"], pairs,
                     samples_per_prompt=cfg.samples_per_prompt, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    settings.write_text(json.dumps(shared) + "\n", encoding="utf-8")
    return pairs


def drop_stale_runs(data: dict, config: dict, where: str) -> None:
    """Remove (and say so) the runs of points.json `data` that `stale_runs` finds; then `config` is the file's."""
    for key, diff in stale_runs(data, config, where).items():
        changes = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
        print(f"frontier: {key} was run with other settings ({changes}): dropped", flush=True)
        del data["runs"][key]
    data["config"] = config


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
    method covers (a step function evaluated on 50 points from 0 to the smallest of the methods' largest KL).
    Every method starts from the base model, so a method without a KL-0 point of its own (best-of-N) reaches at
    least the base model's reward within any KL budget (the mean reward of the KL-0 points, the runs' step-0
    evaluations), below its first point and where that point (N = 2) is lower; without any KL-0 point the range
    starts at the largest of the methods' first KLs instead."""
    by_method: dict[str, list[dict]] = {}
    for r in runs.values():
        by_method.setdefault(r["method"], []).extend(p for p in r["points"] if p.get("kl") is not None)
    env = {m: envelope(ps) for m, ps in by_method.items() if ps}
    if not env:
        return {"envelopes": {}, "highest": None, "best": {}, "common_kl_range": None}
    base = [p["reward"] for ps in by_method.values() for p in ps if p["kl"] == 0]
    kl_lo = 0.0 if base else max(e[0][0] for e in env.values())
    kl_max = min(max(p["kl"] for p in ps) for ps in by_method.values() if ps)
    if kl_max < kl_lo:
        return {"envelopes": env, "highest": None, "common_kl_range": None,
                "best": {m: {"reward": e[-1][1], "kl": e[-1][0]} for m, e in env.items()}}
    grid = [kl_lo + (kl_max - kl_lo) * i / 49 for i in range(50)] if kl_max > kl_lo else [kl_lo]
    base_reward = [sum(base) / len(base)] if base else []

    def height(e: list[tuple[float, float]]) -> float:
        floor = base_reward if e[0][0] > 0 else []  # a KL-0 point of its own is in its envelope already
        vals = [max([*floor, *(r for k, r in e if k <= g)]) for g in grid]
        return sum(vals) / len(vals)

    heights = {m: height(e) for m, e in env.items()}
    top = max(heights.values())
    leaders = [m for m, h in heights.items() if h == top]
    best = {m: {"reward": e[-1][1], "kl": e[-1][0]} for m, e in env.items()}
    return {"envelopes": env, "mean_reward_on_common_kl": heights, "common_kl_range": [kl_lo, kl_max],
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


@dataclass
class FrontierConfig:
    model: str = "smollm2-135m-instruct"
    """Base policy of every run (tiny-random for a smoke run)."""
    output_dir: str = "runs/frontier"
    """points.json, frontier.png, the shared preference pairs and one folder per run."""
    sweep: dict[str, list[float]] = field(default_factory=lambda: {
        "dpo": [0.05, 0.1, 0.5], "ppo": [0.02, 0.1, 0.5], "grpo": [0.02, 0.1, 0.5], "best_of_n": [2, 4, 8, 16]})
    """Method -> values: beta for dpo/ipo/simpo, the KL coefficient for ppo/grpo, N for best_of_n."""
    train_prompts: int = 256
    """Training prompts (DPO pairs are sampled from the base model on these; RL rolls out on them)."""
    samples_per_prompt: int = 4
    """Base-model samples per training prompt; best vs worst make a DPO pair."""
    eval_prompts: int = 32
    """Held-out prompts every point is measured on (disjoint from the training prompts)."""
    eval_samples: int = 2
    """Samples per held-out prompt for a point's reward and KL."""
    max_new_tokens: int = 24
    """Tokens per completion everywhere."""
    steps: int = 40
    """Optimizer steps per DPO run, RL steps per PPO/GRPO run."""
    eval_every: int = 10
    """Measure a point every N steps (and at step 0 and the end)."""
    batch_size: int = 8
    """Pairs per DPO step; prompts per RL step."""
    num_generations: int = 4
    """GRPO's samples per prompt (PPO samples one)."""
    dpo_learning_rate: float = 5e-4
    """LoRA learning rate of the DPO-family runs."""
    rl_learning_rate: float = 1e-3
    """LoRA learning rate of the PPO and GRPO runs. At 1e-4 they stayed under 1 nat of KL in 40 steps, where DPO
    went past 3 (docs/reproducing_dpo.md), so the two were never compared at the same KL."""
    lora_r: int = 16
    """LoRA rank of every trained run (alpha = 2r)."""
    beam_width: int = 4
    """Beams for the beam-search reward of each DPO-family run's final policy (0: skip)."""
    seed: int = 0
    """Seeds prompts, sampling and training."""
    cpu_threads: int = 0
    """torch threads (0: torch's default)."""

    def validate(self) -> None:
        known = set(DPO_FAMILY) | set(RL_METHODS) | {"best_of_n"}
        bad = set(self.sweep) - known
        if bad:
            raise AlignlabError(f"sweep: unknown methods {sorted(bad)}; choose from {sorted(known)}")
        if not self.sweep or not all(self.sweep.values()):  # else a traceback after the runs, at the summary
            raise AlignlabError(f"sweep: give each method one value or more, got {self.sweep}")
        ns = self.sweep.get("best_of_n", [])
        if any(not float(n).is_integer() or n < 1 for n in ns):  # 2.5 ran as N=2 under a key no rerun found
            raise AlignlabError(f"sweep.best_of_n: N must be whole numbers >= 1, got {ns}")
        if self.train_prompts + self.eval_prompts > 712:
            raise AlignlabError("train_prompts + eval_prompts: at most 712 distinct movie-review openings exist")
        if min(self.steps, self.eval_every, self.batch_size, self.eval_prompts, self.eval_samples) < 1:
            raise AlignlabError("steps, eval_every, batch_size, eval_prompts and eval_samples must be >= 1")


def frontier_context(cfg: FrontierConfig, out: Path) -> dict:
    """What every run shares: tokenizer, base model, reward, disjoint train/held-out prompts, the eval."""
    from alignlab.data.builtin import builtin_rows
    from alignlab.eval.policy import score_policy
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.rollout.rewards import get_reward

    tokenizer, base = load_tokenizer(cfg.model), load_model(cfg.model)
    rows = builtin_rows("sentiment", cfg.train_prompts + cfg.eval_prompts, cfg.seed)
    ctx = {"tokenizer": tokenizer, "base": base, "reward_fn": get_reward("sentiment"),
           "train_rows": rows[:cfg.train_prompts], "eval_rows": rows[cfg.train_prompts:]}
    ctx["eval_fn"] = lambda model: score_policy(model, tokenizer, ctx["eval_rows"], ctx["reward_fn"],
                                                n=cfg.eval_samples, max_new_tokens=cfg.max_new_tokens,
                                                seed=cfg.seed + 3)
    return ctx
