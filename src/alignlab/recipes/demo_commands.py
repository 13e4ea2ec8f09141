"""CLI registration for `alignlab demo`, `alignlab experiment frontier` and `alignlab explain` (light imports)."""

from __future__ import annotations

from alignlab.cli import config_command
from alignlab.recipes.demo import DemoConfig


def _demo(cfg: DemoConfig) -> None:
    from alignlab.recipes.demo import run

    run(cfg)


config_command(
    "demo",
    "The DPO paper's sentiment task end to end on CPU: sample pairs from SmolLM2, LoRA-DPO, evaluate, report.html.",
    DemoConfig,
    _demo,
)
