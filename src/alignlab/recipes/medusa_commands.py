"""CLI registration for `alignlab medusa MODEL [--config FILE] [key=value ...]` (imports stay light)."""

from __future__ import annotations

import argparse

from alignlab.cli import command


def _args(p: argparse.ArgumentParser) -> None:
    from alignlab.config import describe
    from alignlab.recipes.medusa import MedusaConfig

    p.add_argument("model", help="base model: alias (tiny-random, smollm2-135m-instruct), HF dir or hub id")
    p.add_argument("--config", "-c", help="YAML file with config keys (overrides on the command line win)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data=prompts.jsonl")
    p.epilog = f"config keys (MedusaConfig):\n{describe(MedusaConfig)}"
    p.formatter_class = argparse.RawDescriptionHelpFormatter


@command("medusa", "Train Medusa decoding heads on a frozen base by self-distillation (Cai et al. 2024), for "
         "`alignlab generate MODEL --speculative medusa=DIR`.", _args)
def run_medusa(args: argparse.Namespace) -> int:
    from alignlab.config import load_config
    from alignlab.recipes.medusa import MedusaConfig, run

    run(load_config(MedusaConfig, args.config, [*args.overrides, f"model={args.model}"]))
    return 0
