"""`alignlab online-dpo`: online (iterative) DPO (Guo et al. 2024, "Direct Language Model Alignment from
Online AI Feedback"; Xiong et al. 2024, "Iterative Preference Learning from Human Feedback").

Each step samples `num_generations` answers per prompt from the CURRENT policy, ranks them by the reward
(a reward model, a verifier, VADER, or any callable: a judge wrapped as a RewardFn), keeps the best as
chosen and the worst as rejected (prompts whose answers tie are skipped: they carry no preference), and
takes one DPO-family step (losses/registry.py's LossMix through train/preference.py's PreferenceStep, so
every paired loss works: dpo, ipo, simpo, rpo mixes ...). The reference is the policy's start (frozen copy,
or the LoRA base with the adapter off). It shares `online_loop` (prompts, lr schedule, metrics, evals, save)
with PPO/GRPO.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from alignlab.errors import AlignlabError
from alignlab.recipes.online import OnlineConfig, OnlineState


@dataclass
class OnlineDPOConfig(OnlineConfig):
    learning_rate: float = 5e-6
    """Policy learning rate (TRL OnlineDPO's default scale)."""
    num_generations: int = 2
    """Answers sampled per prompt; the best and the worst by reward form the pair."""
    loss: list[str] = field(default_factory=lambda: ["dpo"])
    """Paired preference loss(es) from the registry (dpo, ipo, simpo, ..., or a mix such as [dpo, sft])."""
    loss_weights: list[float] | None = None
    """Weights of a loss mix (default 1 each)."""
    loss_params: dict[str, Any] = field(default_factory=dict)
    """Per-loss parameters, e.g. {ipo: {...}}."""
    beta: float = 0.1
    """DPO beta: strength of the implicit KL to the reference."""

    def validate(self) -> None:
        super().validate()
        if self.num_generations < 2:
            raise AlignlabError(f"num_generations: online DPO needs >= 2 answers per prompt, got {self.num_generations}")


def preference_pairs(samples: list, rewards: list[float], k: int) -> list[dict[str, list[int]]]:
    """Best-vs-worst pair per prompt (samples are prompt-major, k per prompt); ties are skipped."""
    pairs = []
    for g in range(len(samples) // k):
        group = list(range(g * k, (g + 1) * k))
        best = max(group, key=lambda i: rewards[i])
        worst = min(group, key=lambda i: rewards[i])
        if rewards[best] > rewards[worst]:
            s_best, s_worst = samples[best], samples[worst]
            pairs.append({"prompt_ids": s_best.prompt_ids, "chosen_ids": s_best.completion_ids,
                          "rejected_ids": s_worst.completion_ids})
    return pairs


def dpo_step(state: OnlineState, step: int, rows: list) -> dict[str, float]:
    """Sample, rank, one DPO optimizer step on the pairs (no step when every group tied)."""
    import torch

    from alignlab.data.pairs import PairCollator
    from alignlab.recipes.online import encode_rows, score_rows
    from alignlab.rollout.generate import SamplingConfig, generate
    from alignlab.train.loop import to_device

    cfg, k = state.cfg, state.cfg.num_generations
    t0 = time.perf_counter()
    sc = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                        seed=cfg.seed * 1_000_003 + step, batch_size=cfg.generation_batch_size)
    res = generate(state.policy, state.tokenizer, encode_rows(state, rows), sc, n=k)
    t_gen = time.perf_counter() - t0
    rewards = score_rows(state.reward_fn, rows, [s.text for s in res.samples], k)
    r = torch.tensor(rewards)
    pairs = preference_pairs(res.samples, rewards, k)
    metrics = {"reward_mean": float(r.mean()), "reward_std": float(r.std()),
               "zero_spread_frac": 1.0 - len(pairs) / len(rows), "pairs": float(len(pairs)),
               "response_length": sum(len(s.completion_ids) for s in res.samples) / len(res.samples),
               "truncated_frac": sum(s.finish_reason == "length" for s in res.samples) / len(res.samples),
               "time/generation": t_gen}
    t1 = time.perf_counter()
    if pairs:
        batch = to_device(PairCollator(state.tokenizer.pad_token_id, "plain")(pairs), state.device)
        loss, step_metrics = state.extra["step"](state.policy, batch)
        loss.backward()
        opt = state.optimizers[0]
        params = [p for g in opt.param_groups for p in g["params"]]
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        opt.step()
        opt.zero_grad(set_to_none=True)
        metrics["loss"] = float(loss.detach())
        metrics.update({key: float(v) for key, v in step_metrics.items()})
    metrics["time/training"] = time.perf_counter() - t1
    return metrics


def run(cfg: OnlineDPOConfig) -> list[dict]:
    """Train; returns per-step metrics (also in output_dir/metrics.jsonl) and saves the policy."""
    from alignlab.losses import combine
    from alignlab.recipes.online import build_state, train_on_prompts
    from alignlab.recipes.sft import saved_config_text
    from alignlab.train.loop import seed_everything
    from alignlab.train.preference import AdapterReference, ModelReference, NoReference, PreferenceStep

    seed_everything(cfg.seed)
    saved_config_text(cfg)
    state = build_state(cfg)
    mix = combine(cfg.loss, cfg.loss_weights, cfg.loss_params)
    frozen = state.extra.pop("reference")
    if not mix.needs_reference:
        reference: Any = NoReference()
    else:
        reference = ModelReference(frozen) if frozen is not None else AdapterReference()
    state.extra["step"] = PreferenceStep(mix, reference, beta=cfg.beta)
    return train_on_prompts(state, dpo_step, "online-dpo")
