"""CLI registration for `alignlab self-instruct` and `alignlab experiment rejection-sampling` (light imports)."""

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


def _rejection_sampling(cfg) -> None:
    from alignlab.recipes.rejection_sampling import run

    run(cfg)


def _register_rejection_sampling() -> None:
    from alignlab.recipes.rejection_sampling import RejectionSamplingConfig

    config_command(
        "experiment rejection-sampling",
        "Iterative rejection-sampling fine-tuning (Llama 2, Sec. 3.2.3): R rounds of sample K / score with a "
        "reward / keep the best per prompt across rounds / SFT; held-out reward and KL per round, rounds.png.",
        RejectionSamplingConfig,
        _rejection_sampling,
    )


_register_rejection_sampling()
