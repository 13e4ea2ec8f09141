"""`alignlab experiment frontier`: reward against KL for DPO, PPO, GRPO and best-of-N (DPO paper, Figure 2).

Rafailov et al. 2023 (Sec. 6.1, Fig. 2 left) plot, for the controlled sentiment task, the ground-truth
reward of each policy against its sequence KL to the reference, one point per (method, hyper-parameter,
checkpoint): the "frontier" is the best reward reached at each KL budget. Here at CPU scale:

- the task: openings of movie reviews (data/builtin.py) continued by the policy, reward = VADER compound
  sentiment (rollout/rewards.py "sentiment") instead of the paper's IMDB prompts and SiEBERT classifier;
- dpo (and optionally ipo, simpo): a beta sweep, offline on best-vs-worst pairs sampled from the base model;
- ppo and grpo: a KL-coefficient sweep (recipes/online.py);
- best-of-N: N sweep; its KL is the analytic log N - (N - 1) / N (Stiennon et al. 2020, App. G.3).

Every `eval_every` steps a point is measured on held-out prompts by `eval.policy.score_policy`: mean reward
of samples (temperature 1) and KL(policy || base) from the same samples (eval/kl.py k1 and k3); envelopes,
best-of-N, beam search and the plot are in eval/frontier.py. Points are appended to
`points.json` as each run finishes, so a stopped experiment resumes where it was (finished runs skipped).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.errors import AlignlabError
from alignlab.eval.frontier import beam_reward, frontier_summary, plot_frontier, run_best_of_n
from alignlab.eval.policy import PolicyScore, score_policy

DPO_FAMILY = ("dpo", "ipo", "simpo")
RL_METHODS = ("ppo", "grpo")


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
    rl_learning_rate: float = 1e-4
    """LoRA learning rate of the PPO and GRPO runs."""
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
        if self.train_prompts + self.eval_prompts > 712:
            raise AlignlabError("train_prompts + eval_prompts: at most 712 distinct movie-review openings exist")
        if min(self.steps, self.eval_every, self.batch_size, self.eval_prompts, self.eval_samples) < 1:
            raise AlignlabError("steps, eval_every, batch_size, eval_prompts and eval_samples must be >= 1")


def run_key(method: str, value: float) -> str:
    return f"{method} {value:g}"


def _point(step: int, s: PolicyScore) -> dict[str, float]:
    return {"step": step, "reward": s.reward, "reward_se": s.reward_se, "kl": s.kl.k3, "kl_se": s.kl.k3_se,
            "kl_k1": s.kl.k1}


def _progress(eval_fn: Callable[[Any], PolicyScore], points: list[dict]) -> Callable[[Any], dict[str, float]]:
    """An eval_fn for train(): measures a point and records it (the loop tells no step, so count them)."""

    def fn(model: Any) -> dict[str, float]:
        s = eval_fn(model)
        points.append(_point(0, s))
        return {"eval_reward": s.reward, "eval_kl": s.kl.k3}

    return fn


def run_dpo(cfg: FrontierConfig, method: str, beta: float, ctx: dict) -> dict:
    """One DPO-family run on the shared pairs; points every eval_every steps, beam-search reward at the end."""
    from dataclasses import replace

    from alignlab.models.load import load_model
    from alignlab.train.dpo import lora_dpo_config, train_lora_dpo

    dcfg = lora_dpo_config(cfg.model, ctx["pairs"], str(Path(ctx["run_dir"]) / "model"), lora_r=cfg.lora_r,
                           beta=beta, learning_rate=cfg.dpo_learning_rate, batch_size=cfg.batch_size,
                           eval_steps=cfg.eval_every, seed=cfg.seed, cpu_threads=cfg.cpu_threads, progress="plain")
    dcfg = replace(dcfg, loss=[method], max_steps=cfg.steps)
    points: list[dict] = []
    policy, result = train_lora_dpo(dcfg, load_model(cfg.model), ctx["tokenizer"], _progress(ctx["eval_fn"], points))
    for p, e in zip(points, result.evals):
        p["step"] = e["step"]
    out = {"method": method, "value": beta, "points": points}
    if cfg.beam_width > 0:
        out["beam"] = beam_reward(cfg, policy, ctx)
    return out


def run_rl(cfg: FrontierConfig, method: str, coef: float, ctx: dict) -> dict:
    """One PPO or GRPO run (recipes.online) with a fixed KL coefficient; points every eval_every steps."""
    from alignlab.losses.policy import FixedKLController
    from alignlab.models.lora import LoraConfig
    from alignlab.recipes.online import OnlineConfig, PPOConfig, build_state, online_loop
    from alignlab.recipes.rl_step import rl_step

    cls = PPOConfig if method == "ppo" else OnlineConfig
    rcfg = cls(model=cfg.model, output_dir=ctx["run_dir"], max_steps=cfg.steps, batch_size=cfg.batch_size,
               num_generations=1 if method == "ppo" else cfg.num_generations, kl_coef=coef,
               learning_rate=cfg.rl_learning_rate, max_new_tokens=cfg.max_new_tokens, eval_prompts=0,
               lora=LoraConfig(r=cfg.lora_r, alpha=2 * cfg.lora_r, dropout=0.0), seed=cfg.seed,
               cpu_threads=cfg.cpu_threads, progress="plain", logging_steps=max(1, cfg.eval_every // 2))
    rcfg.validate()
    state = build_state(rcfg)
    state.extra["kl_ctl"] = FixedKLController(coef)
    points = [_point(0, ctx["eval_fn"](state.policy))]

    def step_fn(st: Any, step: int, rows: list) -> dict[str, float]:
        metrics = rl_step(st, step, rows)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            points.append(_point(step + 1, ctx["eval_fn"](st.policy)))
        return metrics

    online_loop(state, ctx["train_rows"], step_fn, [])
    return {"method": method, "value": coef, "points": points}


def _save(path: Path, data: dict) -> None:
    import json
    import os

    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _context(cfg: FrontierConfig, out: Path) -> dict:
    """What every run shares: tokenizer, base model, reward, disjoint train/held-out prompts, the eval."""
    from alignlab.data.builtin import builtin_rows
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


def run(cfg: FrontierConfig) -> dict:
    """Every (method, value) run not yet in points.json, then the summary and the plot."""
    import json

    import torch

    from alignlab.rollout.pairs import sample_pairs
    from alignlab.train.loop import seed_everything

    cfg.validate()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    path = out / "points.json"
    data = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    data["config"] = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    todo = [(m, v) for m, vs in cfg.sweep.items() for v in vs if run_key(m, v) not in data["runs"]]
    print(f"frontier: {len(todo)} runs to do, {len(data['runs'])} already in {path}", flush=True)
    ctx = _context(cfg, out) if todo else {}
    if any(m in DPO_FAMILY for m, _ in todo):
        pairs = out / "preferences.jsonl"
        ctx["pairs"] = pairs if pairs.is_file() else sample_pairs(
            ctx["base"], ctx["tokenizer"], ctx["train_rows"], ctx["reward_fn"], pairs,
            samples_per_prompt=cfg.samples_per_prompt, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    bon = [v for m, v in todo if m == "best_of_n"]
    if bon:
        for r in run_best_of_n(cfg, bon, ctx):
            data["runs"][run_key("best_of_n", r["value"])] = r
        _save(path, data)
    for m, v in [(m, v) for m, v in todo if m != "best_of_n"]:
        print(f"frontier: {run_key(m, v)}", flush=True)
        seed_everything(cfg.seed)
        ctx["run_dir"] = str(out / "runs" / run_key(m, v).replace(" ", "_"))
        runner = run_dpo if m in DPO_FAMILY else run_rl
        data["runs"][run_key(m, v)] = runner(cfg, m, v, ctx)
        _save(path, data)  # after every run: a stopped experiment resumes here
    data["summary"] = frontier_summary(data["runs"])
    _save(path, data)
    png = plot_frontier(data["runs"], data["summary"], out / "frontier.png")
    best = ", ".join(f"{m} {b['reward']:.3f} at KL {b['kl']:.2f}" for m, b in data["summary"]["best"].items())
    print(f"frontier: highest frontier on the common KL range {data['summary']['common_kl_range']}: "
          f"{data['summary']['highest']}; best reward per method: {best}; points {path}, plot {png}", flush=True)
    return data
