"""`alignlab experiment frontier`: reward against KL for DPO, PPO, GRPO and best-of-N (DPO paper, Figure 2).

Rafailov et al. 2023 (Sec. 6.1, Fig. 2 left) plot, for the controlled sentiment task, the ground-truth
reward of each policy against its sequence KL to the reference, one point per (method, hyper-parameter,
checkpoint): the "frontier" is the best reward reached at each KL budget. Here at CPU scale:

movie-review openings (data/builtin.py) scored by VADER (instead of IMDB and SiEBERT); dpo/ipo/simpo: a beta
sweep on best-vs-worst pairs sampled from the base; ppo, grpo: a KL-coefficient sweep (rl/); best-of-N: an N
sweep with the analytic KL log N - (N - 1) / N (Stiennon et al. 2020, App. G.3). Every `eval_every` steps
`eval.policy.score_policy` measures a point on held-out prompts (mean reward and KL(policy || base) of the same
samples); envelopes, best-of-N, beam search and the plot are in eval/frontier.py. points.json grows as each
run finishes, so a stopped experiment resumes where it was; a rerun redoes only the runs whose settings changed
(eval.frontier.stale_runs).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignlab.eval.frontier import (
    DPO_FAMILY,
    FrontierConfig,
    beam_reward,
    drop_stale_runs,
    frontier_context,
    frontier_summary,
    plot_frontier,
    preference_pairs,
    run_best_of_n,
    run_settings,
    save_points,
)
from alignlab.eval.policy import PolicyScore


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
    """One PPO or GRPO run (rl/) with a fixed KL coefficient; points every eval_every steps."""
    from alignlab.losses.advantages import get_estimator
    from alignlab.losses.policy import FixedKLController, get_policy_loss
    from alignlab.models.lora import LoraConfig
    from alignlab.rl.config import PolicyGradientConfig, PPOConfig
    from alignlab.rl.loop import build_state, train_rl
    from alignlab.rl.update import pg_step
    from alignlab.train.world import World

    cls = PPOConfig if method == "ppo" else PolicyGradientConfig
    rcfg = cls(model=cfg.model, output_dir=ctx["run_dir"], max_steps=cfg.steps, batch_size=cfg.batch_size,
               num_generations=1 if method == "ppo" else cfg.num_generations, kl_coef=coef,
               learning_rate=cfg.rl_learning_rate, max_new_tokens=cfg.max_new_tokens, eval_prompts=0,
               resume="never",
               lora=LoraConfig(r=cfg.lora_r, alpha=2 * cfg.lora_r, dropout=0.0), seed=cfg.seed,
               cpu_threads=cfg.cpu_threads, progress="plain", logging_steps=max(1, cfg.eval_every // 2))
    rcfg.validate()
    state = build_state(rcfg, World.for_run(rcfg), reward_fn=ctx["reward_fn"], reference=True,
                        critic=get_estimator(rcfg.estimator).needs_critic)
    state.estimator, state.kl_ctl = get_estimator(rcfg.estimator), FixedKLController(coef)
    state.objective = get_policy_loss(rcfg.policy_loss)
    points = [_point(0, ctx["eval_fn"](state.policy))]

    def on_step(st: Any, done: int) -> None:
        if done % cfg.eval_every == 0 or done == cfg.steps:
            points.append(_point(done, ctx["eval_fn"](st.policy)))

    train_rl(state, pg_step, method, on_step=on_step, prompts=(ctx["train_rows"], []))
    return {"method": method, "value": coef, "points": points}


def run(cfg: FrontierConfig) -> dict:
    """Every (method, value) run not yet in points.json, then the summary and the plot."""
    import json

    import torch

    from alignlab.train.loop import seed_everything

    cfg.validate()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    path = out / "points.json"
    data = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    config = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    drop_stale_runs(data, config, str(path))
    todo = [(m, v) for m, vs in cfg.sweep.items() for v in vs if run_key(m, v) not in data["runs"]]
    print(f"frontier: {len(todo)} runs to do, {len(data['runs'])} already in {path}", flush=True)
    ctx = frontier_context(cfg, out) if todo else {}
    if any(m in DPO_FAMILY for m, _ in todo):
        ctx["pairs"] = preference_pairs(cfg, config, out, ctx, bool(data["runs"]))
    bon = [v for m, v in todo if m == "best_of_n"]
    if bon:
        for r in run_best_of_n(cfg, bon, ctx):
            data["runs"][run_key("best_of_n", r["value"])] = {**r, "settings": run_settings(config, "best_of_n")}
        save_points(path, data)
    for m, v in [(m, v) for m, v in todo if m != "best_of_n"]:
        print(f"frontier: {run_key(m, v)}", flush=True)
        seed_everything(cfg.seed)
        ctx["run_dir"] = str(out / "runs" / run_key(m, v).replace(" ", "_"))
        runner = run_dpo if m in DPO_FAMILY else run_rl
        data["runs"][run_key(m, v)] = {**runner(cfg, m, v, ctx), "settings": run_settings(config, m)}
        save_points(path, data)  # after every run: a stopped experiment resumes here
    data["summary"] = frontier_summary(data["runs"])
    save_points(path, data)
    png = plot_frontier(data["runs"], data["summary"], out / "frontier.png")
    best = ", ".join(f"{m} {b['reward']:.3f} at KL {b['kl']:.2f}" for m, b in data["summary"]["best"].items())
    print(f"frontier: highest frontier on the common KL range {data['summary']['common_kl_range']}: "
          f"{data['summary']['highest']}; best reward per method: {best}; points {path}, plot {png}", flush=True)
    return data
