"""CLI registration for `alignlab rm` (imports stay light: torch loads only when the command runs)."""

from __future__ import annotations

from alignlab.cli import config_command
from alignlab.recipes.reward import RewardConfig


def _rm(cfg: RewardConfig) -> None:
    from alignlab.api import reward_model

    reward_model(cfg)


config_command(
    "rm",
    "Train a reward model (scalar head on a causal LM) with Bradley-Terry pairs (margin, centring) or "
    "Plackett-Luce ranked lists; reports held-out reward accuracy.",
    RewardConfig,
    _rm,
)
