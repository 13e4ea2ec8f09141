"""CLI registration for `alignlab dpo` (imports stay light: torch loads only when the command runs)."""

from __future__ import annotations

from alignlab.cli import config_command
from alignlab.recipes.dpo import DPOConfig


def _dpo(cfg: DPOConfig) -> None:
    from alignlab.api import dpo

    dpo(cfg)


config_command(
    "dpo",
    "Preference optimisation (dpo, ipo, simpo, orpo, kto, ... or a weighted mix) with a frozen, LoRA-base, "
    "cached or no reference.",
    DPOConfig,
    _dpo,
)
