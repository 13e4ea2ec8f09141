"""CLI registration for `alignlab sft`, `alignlab pretrain` and `alignlab merge` (imports stay light)."""

from __future__ import annotations

import argparse

from alignlab.cli import command, config_command
from alignlab.recipes.pretrain import PretrainConfig
from alignlab.recipes.sft import SFTConfig


def _sft(cfg: SFTConfig) -> None:
    from alignlab.recipes.sft import run

    run(cfg)


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


def _merge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapter_dir", help="directory with adapter_config.json (an `alignlab sft lora=...` output)")
    p.add_argument("out_dir", help="where to write the merged plain model (safetensors) and tokenizer")


@command("merge", "Merge a LoRA adapter into its base model and save a plain HF model.", _merge_args)
def _merge(args: argparse.Namespace) -> None:
    from alignlab.models.lora import merge_adapter

    merge_adapter(args.adapter_dir, args.out_dir)
    print(f"merged model written to {args.out_dir}")
