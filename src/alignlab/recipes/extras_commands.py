"""CLI registration for `alignlab self-instruct` (imports stay light)."""

from __future__ import annotations

from alignlab.cli import config_command
from alignlab.recipes.self_instruct import SelfInstructConfig


def _self_instruct(cfg: SelfInstructConfig) -> None:
    from alignlab.recipes.self_instruct import run

    run(cfg)


config_command(
    "self-instruct",
    "Grow an Alpaca-format instruction dataset from seed tasks with a local model or an OpenAI-compatible "
    "endpoint (Wang et al. 2023): ROUGE-L near-duplicate filter, stated heuristics, counts per stage.",
    SelfInstructConfig,
    _self_instruct,
)
