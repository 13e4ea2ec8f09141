"""`alignlab experiment frontier`: reward against KL for DPO, PPO, GRPO and best-of-N (DPO paper, Figure 2).

Rafailov et al. 2023 (Sec. 6.1, Fig. 2 left) plot, for the controlled sentiment task, the ground-truth
reward of each policy against its sequence KL to the reference, one point per (method, hyper-parameter,
checkpoint): the "frontier" is the best reward reached at each KL budget. Here at CPU scale:

- the task: openings of movie reviews (recipes/prompts.py) continued by the policy, reward = VADER compound
  sentiment (rollout/rewards.py "sentiment") instead of the paper's IMDB prompts and SiEBERT classifier;
- dpo (and optionally ipo, simpo): a beta sweep, offline on best-vs-worst pairs sampled from the base model;
- ppo and grpo: a KL-coefficient sweep (rl/);
- best-of-N: N sweep; its KL is the analytic log N - (N - 1) / N (Stiennon et al. 2020, App. G.3).

Every `eval_every` steps a point is measured on held-out prompts by `score_policy`: mean reward of samples
(temperature 1) and KL(policy || base) from the same samples (eval/kl.py k1 and k3). Points are appended to
`points.json` as each run finishes, so a stopped experiment resumes where it was (finished runs skipped).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.errors import AlignlabError
from alignlab.eval.report import png_figure


@dataclass
class PolicyScore:
    """Mean reward and KL to the reference of samples from one policy on held-out prompts."""

    reward: float
    reward_se: float
    kl: Any
    """eval.kl.KLEstimate (k1, k3 with standard errors), or None when the policy is the reference itself."""
    texts: list[str]
    rewards: list[float]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]


def score_policy(model: Any, tokenizer: Any, rows: Sequence[Any], reward_fn: Callable, *, n: int = 1,
                 max_new_tokens: int = 24, seed: int = 0, reference: Any = None, with_kl: bool = True,
                 batch_size: int = 64, temperature: float = 1.0) -> PolicyScore:
    """Sample n completions per row from `model`, score them, and estimate KL(model || reference) from the
    same samples (reference None: the disabled LoRA adapter). Both log-probs come from the same plain
    forward (eval/credit.py), so a policy equal to its reference gives exactly 0."""
    import math

    import torch

    from alignlab.eval.credit import completion_logps, reference_forward
    from alignlab.eval.kl import sequence_kl
    from alignlab.rl.rollout import score_rows
    from alignlab.rollout.generate import SamplingConfig, generate

    sc = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, batch_size=batch_size)
    res = generate(model, tokenizer, list(rows), sc, n=n)
    texts = [s.text for s in res.samples]
    rewards = score_rows(reward_fn, list(rows), texts, n)
    prompts = [s.prompt_ids for s in res.samples]
    comps = [s.completion_ids for s in res.samples]
    kl = None
    if with_kl:
        pad = tokenizer.pad_token_id if isinstance(tokenizer.pad_token_id, int) else 0
        pol = completion_logps(model, prompts, comps, batch_size=batch_size, pad_id=pad)
        with reference_forward(model, reference) as ref_model:
            ref = completion_logps(ref_model, prompts, comps, batch_size=batch_size, pad_id=pad)
        width = max(len(c) for c in comps)

        def padded(xs: list[list[float]]) -> torch.Tensor:
            return torch.tensor([x + [0.0] * (width - len(x)) for x in xs], dtype=torch.float64)

        mask = padded([[1.0] * len(c) for c in comps])
        kl = sequence_kl(padded(pol), padded(ref), mask)
    mean = sum(rewards) / len(rewards)
    var = sum((r - mean) ** 2 for r in rewards) / max(len(rewards) - 1, 1)
    return PolicyScore(mean, math.sqrt(var / len(rewards)), kl, texts, rewards, prompts, comps)


# ---------------------------------------------------------------- the experiment

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
    from alignlab.recipes.demo import DemoConfig, dpo_config, train_dpo

    demo = DemoConfig(model=cfg.model, output_dir=ctx["run_dir"], beta=beta, learning_rate=cfg.dpo_learning_rate,
                      batch_size=cfg.batch_size, lora_r=cfg.lora_r, eval_steps=cfg.eval_every, seed=cfg.seed,
                      cpu_threads=cfg.cpu_threads, progress="plain")
    dcfg = replace(dpo_config(demo, ctx["pairs"]), loss=[method], max_steps=cfg.steps)
    points: list[dict] = []
    policy, result = train_dpo(dcfg, load_model(cfg.model), ctx["tokenizer"], _progress(ctx["eval_fn"], points))
    for p, e in zip(points, result.evals):
        p["step"] = e["step"]
    out = {"method": method, "value": beta, "points": points}
    if cfg.beam_width > 0:
        out["beam"] = beam_reward(cfg, policy, ctx)
    return out


def beam_reward(cfg: FrontierConfig, policy: Any, ctx: dict) -> dict:
    """Mean reward of beam search on the policy (= search on the implicit reward) vs one sample per prompt."""
    from alignlab.rl.rollout import score_rows
    from alignlab.rollout.beam import BeamConfig, beam_search

    hyps = beam_search(policy, ctx["tokenizer"], ctx["eval_rows"], BeamConfig(cfg.beam_width, cfg.max_new_tokens))
    rewards = score_rows(ctx["reward_fn"], ctx["eval_rows"], [h.text for h in hyps], 1)
    return {"num_beams": cfg.beam_width, "reward": sum(rewards) / len(rewards)}


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
    state = build_state(rcfg, World.from_env(rcfg.device), reference=True,
                        critic=get_estimator(rcfg.estimator).needs_critic)
    state.estimator, state.kl_ctl = get_estimator(rcfg.estimator), FixedKLController(coef)
    state.objective = get_policy_loss(rcfg.policy_loss)
    points = [_point(0, ctx["eval_fn"](state.policy))]

    def on_step(st: Any, done: int) -> None:
        if done % cfg.eval_every == 0 or done == cfg.steps:
            points.append(_point(done, ctx["eval_fn"](st.policy)))

    train_rl(state, pg_step, method, on_step=on_step, prompts=(ctx["train_rows"], []))
    return {"method": method, "value": coef, "points": points}


def run_best_of_n(cfg: FrontierConfig, ns: list[float], ctx: dict) -> list[dict]:
    """Best-of-N from the base model: reward of the best of the first N samples of each held-out prompt; KL is
    the analytic log N - (N - 1) / N (Stiennon et al. 2020), exact for distinct samples."""
    import math

    from alignlab.rl.rollout import score_rows
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


# ---------------------------------------------------------------- frontier, plot, orchestration


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


def _save(path: Path, data: dict) -> None:
    import json
    import os

    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _context(cfg: FrontierConfig, out: Path) -> dict:
    """What every run shares: tokenizer, base model, reward, disjoint train/held-out prompts, the eval."""
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.recipes.prompts import builtin_rows
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

    from alignlab.recipes.demo import DemoConfig, sample_pairs
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
        demo = DemoConfig(model=cfg.model, output_dir=str(out), samples_per_prompt=cfg.samples_per_prompt,
                          max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
        ctx["pairs"] = pairs if pairs.is_file() else sample_pairs(demo, ctx["base"], ctx["tokenizer"],
                                                                  ctx["train_rows"], ctx["reward_fn"], out)
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
