"""`alignlab ppo` / `alignlab grpo`: online RL from a reward, on one policy loss and one loop.

Each step (Ouyang et al. 2022 Sec. 3.5; Shao et al. 2024 Alg. 1):
  1. rollout: `num_generations` samples for each of `batch_size` prompts with our KV-cache sampler
     (rollout/generate.py), scored by the reward (rollout/rewards.py);
  2. log-probs of the sampled tokens under the rollout policy ("old"), the reference (LoRA base with the
     adapter disabled, or a frozen copy), and values from the critic (PPO's `gae` estimator only);
  3. advantages from the chosen `estimator` (losses/advantages.py), the KL to the reference either shaped
     into the reward (InstructGPT) or added to the loss (GRPO);
  4. `ppo_epochs` passes over the rollout in minibatches of `mini_batch_size` sequences, each an optimizer
     step on the PPO clipped surrogate (losses/policy.py) minus an entropy bonus.

The progress signal is `reward_mean` (and `eval_reward`), never the loss: a group-normalised loss is about
0 at every step by construction. `recipes/rl_value.py` holds the critic and `recipes/online_dpo.py` reuses
`online_loop` with a DPO step instead of steps 2-4.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from alignlab.errors import AlignlabError
from alignlab.train.config import TrainConfig

ESTIMATORS = ("gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
GROUPED = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline")


@dataclass
class OnlineConfig(TrainConfig):
    model: str = "tiny-random"
    """Policy to train (and, unless `reference` says otherwise, its frozen start is the KL reference)."""
    data: str = "builtin:sentiment"
    """Prompts: a file read as task=prompt (GSM8K's `answer` is kept for the gsm8k reward) or a built-in set
    builtin:sentiment | builtin:reverse | builtin:add (recipes/prompts.py)."""
    num_prompts: int = 512
    """Prompts drawn from a built-in set (a file uses all its rows)."""
    batch_size: int = 8
    """PROMPTS per RL step; each gets num_generations samples, so a rollout holds batch_size x num_generations sequences."""
    learning_rate: float = 1e-5
    """Policy learning rate (RL wants it small: ~1e-6..1e-5 full fine-tuning, ~1e-5..1e-4 LoRA)."""
    lr_scheduler: Literal["cosine", "linear", "constant"] = "constant"
    """Decay after warmup; RL recipes usually keep it constant."""
    logging_steps: int = 1
    """Write a metrics.jsonl line every N RL steps."""
    reward: str = "sentiment"
    """Reward: sentiment | gsm8k | format | reward_model | "module.path:function" (RewardFn signature)."""
    reward_options: dict[str, Any] = field(default_factory=dict)
    """Keyword options for the reward factory, e.g. {path: runs/rm} for reward_model."""
    estimator: Literal["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"] = "grpo"
    """Advantages: gae (PPO with a critic), grpo, dr_grpo, rloo, reinforce_pp, reinforce_pp_baseline."""
    num_generations: int = 4
    """Samples per prompt (the group size K of grouped estimators; >= 2 for them)."""
    mini_batch_size: int = 0
    """Sequences per optimizer step inside a rollout (0: the whole rollout, one step per epoch = on-policy)."""
    ppo_epochs: int = 1
    """Passes over each rollout; >1 reuses samples (the ratio clip then matters)."""
    max_new_tokens: int = 32
    """Longest completion; rows that reach it count as truncated."""
    temperature: float = 1.0
    """Sampling temperature; the training forward divides logits by it too, so ratios compare like with like."""
    top_p: float = 1.0
    """Nucleus sampling during rollouts (1.0 = off)."""
    max_prompt_length: int = 256
    """Prompts longer than this keep their last tokens."""
    clip_eps: float = 0.2
    """PPO ratio clip epsilon (Schulman et al. 2017, Eq. 7)."""
    clip_eps_high: float | None = None
    """Upper clip epsilon (DAPO clip-higher); null = clip_eps."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 for negative advantages (Ye et al. 2020); null disables."""
    kl_coef: float = 0.05
    """KL-to-reference coefficient beta (start value when adaptive_kl)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """KL estimator (Schulman 2020): k1 for a shaped reward, k3 (or k2) as a loss term."""
    kl_in_reward: bool = False
    """true: subtract beta*KL from the reward (InstructGPT/PPO); false: add beta*KL to the loss (GRPO)."""
    adaptive_kl: bool = False
    """Adapt beta toward kl_target (Ziegler et al. 2019, Eq. 2) instead of keeping it fixed."""
    kl_target: float = 6.0
    """Target sequence KL (nats) for adaptive_kl."""
    kl_horizon: int = 10000
    """Samples over which adaptive_kl moves beta by its full clipped error."""
    entropy_coef: float = 0.0
    """Entropy bonus weight (Schulman et al. 2017, Eq. 9); 0 disables (entropy is still logged)."""
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "token-mean"
    """How token losses reduce: token-mean (DAPO), seq-mean-token-mean (GRPO paper), seq-mean-token-sum-norm (Dr. GRPO)."""
    whiten_advantages: bool = True
    """Whiten GAE advantages over the rollout (PPO practice); grouped estimators are already normalised."""
    gamma: float = 1.0
    """Discount for gae and reinforce_pp (1.0 is standard for LM episodes)."""
    lam: float = 0.95
    """GAE lambda."""
    value_model: str | None = None
    """Critic for estimator gae: a model/scorer path; null starts it from the policy's model with a new head."""
    value_learning_rate: float = 1e-5
    """Critic learning rate (its own AdamW)."""
    value_clip: float | None = 0.2
    """Clip of the value update around the rollout values; null disables."""
    reference: Literal["auto", "model", "adapter"] = "auto"
    """KL reference: adapter (LoRA policy, adapter off: no second copy), model (frozen copy), auto picks."""
    old_logprobs: Literal["sampler", "forward"] = "sampler"
    """Old-policy log-probs from the sampler (free) or a separate no-grad forward (bit-identical to training math)."""
    eval_prompts: int = 32
    """Held-out prompts scored greedily at eval steps (eval_reward); from eval_data or a fresh built-in seed."""
    generation_batch_size: int = 64
    """Sequences decoded together during rollouts."""

    def validate(self) -> None:
        super().validate()
        if self.num_generations < 1 or (self.estimator in GROUPED and self.num_generations < 2):
            raise AlignlabError(f"num_generations: {self.estimator} needs >= 2 samples per prompt, "
                                f"got {self.num_generations}")
        if self.max_steps < 1:
            raise AlignlabError("max_steps: online RL counts RL steps; give max_steps >= 1")
        n = self.batch_size * self.num_generations
        mb = self.mini_batch_size or n
        if n % mb or mb % self.grad_accum:
            raise AlignlabError(f"mini_batch_size ({mb}) must divide the rollout ({self.batch_size} prompts x "
                                f"{self.num_generations} samples = {n}) and be a multiple of grad_accum "
                                f"({self.grad_accum})")
        if self.ppo_epochs < 1:
            raise AlignlabError(f"ppo_epochs: must be >= 1, got {self.ppo_epochs}")


@dataclass
class PPOConfig(OnlineConfig):
    estimator: Literal["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"] = "gae"
    """Advantages: gae (critic, PPO proper) or any critic-free estimator."""
    kl_in_reward: bool = True
    """PPO shapes -beta*KL into the per-token reward (InstructGPT)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """k1 = log pi - log ref per token, the shaped-reward estimator."""
    num_generations: int = 1
    """Samples per prompt; PPO with a critic needs no groups."""


# ---------------------------------------------------------------- prompts and rewards


def load_prompt_rows(spec: str, n: int, seed: int) -> list:
    from alignlab.recipes.prompts import BUILTIN_PREFIX, builtin_rows

    if spec.startswith(BUILTIN_PREFIX):
        return builtin_rows(spec, n, seed)
    if not spec:
        raise AlignlabError("data: give a prompt file or a built-in set such as builtin:sentiment")
    from alignlab.data.sources import load_rows

    rows = load_rows(spec, task="prompt").rows
    if not rows:
        raise AlignlabError(f"{spec}: no prompt rows")
    return rows


def eval_rows_for(cfg: OnlineConfig) -> list:
    if cfg.eval_prompts <= 0:
        return []
    if cfg.eval_data:
        return load_prompt_rows(cfg.eval_data, cfg.eval_prompts, cfg.seed)[: cfg.eval_prompts]
    if cfg.data.startswith("builtin:"):  # a different seed: prompts the policy never trains on
        return load_prompt_rows(cfg.data, cfg.eval_prompts, cfg.seed + 10_000)
    return []


def prompt_text(row: Any) -> Any:
    """What the reward sees as the prompt: plain text for chat=False rows, the messages otherwise."""
    return "".join(m["content"] for m in row.prompt) if not row.chat else row.prompt


def encode_rows(state: OnlineState, rows: list) -> list[list[int]]:
    """Prompt ids for generation, cut to `max_prompt_length` (the last tokens are kept) BEFORE sampling,
    so the sampler and the training forward see the same prompt."""
    from alignlab.data.tokenize import tokenize_prompt

    return [tokenize_prompt(r, state.tokenizer, state.cfg.max_prompt_length) for r in rows]


def score_rows(reward_fn: Callable, rows: list, texts: list[str], k: int) -> list[float]:
    """Reward of each completion; rows[i] is repeated k times to line up with its samples."""
    from alignlab.rollout.rewards import score

    expanded = [r for r in rows for _ in range(k)]
    fields = {"answer": [r.answer for r in expanded]} if any(r.answer is not None for r in rows) else {}
    return score(reward_fn, [prompt_text(r) for r in expanded], texts, **fields)


# ---------------------------------------------------------------- the loop every online recipe shares


@dataclass
class OnlineState:
    """What a step function needs; recipes fill `extra` with their own parts (reference, critic, ...)."""

    cfg: OnlineConfig
    policy: Any
    tokenizer: Any
    reward_fn: Callable
    optimizers: list
    device: str
    extra: dict[str, Any] = field(default_factory=dict)


def greedy_eval(state: OnlineState, rows: list) -> dict[str, float]:
    """Mean reward of greedy completions on held-out prompts (accuracy for 0/1 rewards)."""
    from alignlab.rollout.generate import SamplingConfig, generate

    cfg = state.cfg
    sc = SamplingConfig(max_new_tokens=cfg.max_new_tokens, greedy=True, batch_size=cfg.generation_batch_size)
    res = generate(state.policy, state.tokenizer, encode_rows(state, rows), sc)
    rewards = score_rows(state.reward_fn, rows, [s.text for s in res.samples], 1)
    return {"eval_reward": sum(rewards) / len(rewards)}


def online_loop(state: OnlineState, prompts: list, step_fn: Callable, eval_rows: list) -> list[dict]:
    """Run cfg.max_steps RL steps: prompts in seeded epochs, lr schedule on every optimizer, metrics.jsonl,
    greedy evals, final save. `step_fn(state, step, rows) -> metrics` does one rollout and its updates."""
    import torch

    from alignlab.train.checkpoint import save_model
    from alignlab.train.loop import Sampler
    from alignlab.train.metrics import MetricsLogger
    from alignlab.train.optim import lr_at, warmup_steps_for

    cfg = state.cfg
    if len(prompts) < cfg.batch_size:
        raise AlignlabError(f"data: {len(prompts)} prompts for batch_size {cfg.batch_size}")
    sampler = Sampler(len(prompts), cfg.batch_size, cfg.seed)
    warmup = warmup_steps_for(cfg, cfg.max_steps)
    logger = MetricsLogger(cfg.output_dir, total_steps=cfg.max_steps, progress=cfg.progress)
    history: list[dict] = []

    def evaluate(step: int) -> None:
        if eval_rows:
            row = greedy_eval(state, eval_rows)
            logger.log(step, row)
            history.append({"step": step, **row})

    evaluate(0)
    t0 = time.perf_counter()
    for step in range(cfg.max_steps):
        for opt in state.optimizers:
            base = opt.defaults["lr"]
            lr = lr_at(step, base_lr=base, total_steps=cfg.max_steps, warmup_steps=warmup,
                       schedule=cfg.lr_scheduler, min_lr_ratio=cfg.min_lr_ratio)
            for group in opt.param_groups:
                group["lr"] = lr
        rows = [prompts[i] for i in sampler.step_indices(step)]
        metrics = step_fn(state, step, rows)
        metrics["learning_rate"] = state.optimizers[0].param_groups[0]["lr"]
        done = step + 1
        if not all(torch.isfinite(torch.tensor(float(v))) for v in metrics.values()):
            raise AlignlabError(f"step {done}: non-finite metrics {metrics}; lower learning_rate")
        if done % cfg.logging_steps == 0 or done == cfg.max_steps:
            logger.log(done, metrics)
        history.append({"step": done, **metrics})
        if (cfg.eval_steps and done % cfg.eval_steps == 0) or done == cfg.max_steps:
            evaluate(done)
    runtime = time.perf_counter() - t0
    save_model(state.policy, Path(cfg.output_dir), state.tokenizer)
    logger.close({"step": cfg.max_steps, "train_runtime": runtime})
    return history


# ---------------------------------------------------------------- PPO / GRPO wiring


def build_state(cfg: OnlineConfig) -> OnlineState:
    """Policy (LoRA or full), tokenizer, reward, reference, critic (gae only) and their optimizers."""
    import copy

    import torch

    from alignlab.recipes.sft import prepare_model
    from alignlab.rollout.rewards import get_reward
    from alignlab.train.optim import build_optimizer
    from alignlab.train.world import World

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Each rank would run the whole job into the same output_dir; see docs/distributed.md.
        raise AlignlabError("online RL (ppo, grpo, online-dpo) runs in one process; launch it without torchrun")
    device = World.resolve_device(cfg.device)
    if cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    tokenizer, policy = prepare_model(cfg)
    policy.to(device).eval()  # dropout off for every RL forward (see rl_step's docstring)
    lora = cfg.lora is not None
    kind = cfg.reference if cfg.reference != "auto" else ("adapter" if lora else "model")
    if kind == "adapter" and not lora:
        raise AlignlabError("reference: adapter needs a LoRA policy (set lora: {...}) or use reference: model")
    extra: dict[str, Any] = {"reference": None if kind == "adapter" else
                             copy.deepcopy(policy).eval().requires_grad_(False)}
    optimizers = [build_optimizer(policy, cfg)]
    if cfg.estimator == "gae":
        from alignlab.recipes.rl_value import build_critic

        critic, opt = build_critic(cfg, device)
        extra.update(critic=critic)
        optimizers.append(opt)
    reward_fn = get_reward(cfg.reward, **cfg.reward_options)
    return OnlineState(cfg, policy, tokenizer, reward_fn, optimizers, device, extra)


def run(cfg: OnlineConfig) -> list[dict]:
    """Train; returns the per-step metrics (also in output_dir/metrics.jsonl) and saves the policy."""
    from alignlab.losses.policy import AdaptiveKLController, FixedKLController
    from alignlab.recipes.rl_step import rl_step
    from alignlab.recipes.sft import saved_config_text
    from alignlab.train.loop import seed_everything

    seed_everything(cfg.seed)
    saved_config_text(cfg)
    state = build_state(cfg)
    state.extra["kl_ctl"] = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
                             if cfg.adaptive_kl else FixedKLController(cfg.kl_coef))
    return train_on_prompts(state, rl_step, cfg.estimator)


def train_on_prompts(state: OnlineState, step_fn: Callable, label: str) -> list[dict]:
    """`online_loop` on cfg.data's prompts with cfg's held-out eval rows; prints the reward's change."""
    cfg = state.cfg
    history = online_loop(state, load_prompt_rows(cfg.data, cfg.num_prompts, cfg.seed), step_fn, eval_rows_for(cfg))
    steps = [h for h in history if "reward_mean" in h]
    if steps:
        kl = f", kl {steps[-1]['kl']:.3f}" if "kl" in steps[-1] else ""
        print(f"{label}: reward_mean {steps[0]['reward_mean']:.3f} -> {steps[-1]['reward_mean']:.3f}{kl}; "
              f"model in {cfg.output_dir}", flush=True)
    return history
