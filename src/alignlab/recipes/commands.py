"""CLI registration for `alignlab sft` and `alignlab pretrain` (imports stay light; `merge` lives in models)."""

from __future__ import annotations

from alignlab.cli import config_command
from alignlab.recipes.pretrain import PretrainConfig
from alignlab.recipes.sft import SFTConfig


def _sft(cfg: SFTConfig) -> None:
    from alignlab.api import sft

    sft(cfg)


def _pretrain(cfg: PretrainConfig) -> None:
    from alignlab.recipes.pretrain import run

    run(cfg)


config_command(
    "sft",
    "Supervised fine-tuning (completion-only / assistant-only loss, packing, LoRA) on a chat or instruction file.",
    SFTConfig,
    _sft,
)
config_command(
    "pretrain",
    "Train a byte-level BPE tokenizer and a small Llama from scratch on a text corpus; reports validation perplexity.",
    PretrainConfig,
    _pretrain,
)

