"""CLI registration for `alignlab ppo`, `alignlab grpo` and `alignlab online-dpo` (imports stay light)."""

from __future__ import annotations

from alignlab.cli import config_command
from alignlab.rl.config import DistillConfig, OnlineDPOConfig, PolicyGradientConfig, PPOConfig


def _grpo(cfg: PolicyGradientConfig) -> None:
    from alignlab.recipes.rl import run

    run(cfg, "grpo")


def _ppo(cfg: PPOConfig) -> None:
    from alignlab.recipes.rl import run

    run(cfg, "ppo")


def _online_dpo(cfg: OnlineDPOConfig) -> None:
    from alignlab.recipes.online_dpo import run

    run(cfg)


config_command(
    "ppo",
    "PPO from a reward: rollouts with the KV-cache sampler, a separate critic (GAE), KL shaped into the reward.",
    PPOConfig,
    _ppo,
)
config_command(
    "grpo",
    "GRPO and the critic-free estimators (estimator: grpo | dr_grpo | rloo | reinforce_pp | reinforce_pp_baseline; "
    "policy_loss: ppo_clip | gspo | cispo; env: calculator | python for multi-turn tool use).",
    PolicyGradientConfig,
    _grpo,
)
config_command(
    "online-dpo",
    "Online DPO: sample two answers per prompt, rank them by the reward, take a DPO step; repeat.",
    OnlineDPOConfig,
    _online_dpo,
)


def _distill(cfg: DistillConfig) -> None:
    from alignlab.recipes.distill import run

    run(cfg)


config_command(
    "distill",
    "On-policy distillation (GKD): the student samples, the loss is the per-token divergence (reverse KL, or the "
    "generalised JSD with beta) to a teacher sharing its vocabulary: a local model, or an OpenAI-compatible "
    "endpoint returning prompt log-probs (teacher=http://..., kl_estimator=sampled).",
    DistillConfig,
    _distill,
)
