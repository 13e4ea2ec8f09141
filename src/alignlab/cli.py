"""`alignlab` command line: subcommands register themselves; this file only dispatches.

A command module calls `command(...)` (free-form arguments) or `config_command(...)` (a typed config
filled from `--config FILE` and `key=value` overrides) at import time. Modules keep heavy imports
(torch, transformers) inside their functions so `alignlab --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from alignlab.errors import AlignlabError, AlreadyDone

# Modules whose import registers commands. Add one line per new command module.
COMMAND_MODULES: tuple[str, ...] = (
    "alignlab.data.commands",
    "alignlab.eval.commands",
    "alignlab.eval.passk_command",
    "alignlab.eval.run_report_commands",
    "alignlab.models.commands",
    "alignlab.recipes.dpo_commands",
    "alignlab.recipes.commands",
    "alignlab.recipes.demo_commands",
    "alignlab.recipes.extras_commands",
    "alignlab.recipes.medusa_commands",
    "alignlab.recipes.online_commands",
    "alignlab.recipes.reward_commands",
    "alignlab.rollout.chat",
    "alignlab.rollout.commands",
)


@dataclass
class Command:
    name: str  # "sft" or a two-word group command such as "data inspect"
    help: str
    configure: Callable[[argparse.ArgumentParser], None] | None
    run: Callable[[argparse.Namespace], int | None]


_REGISTRY: dict[str, Command] = {}


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None] | None = None):
    """Register `fn(args) -> exit code | None` as `alignlab NAME`; `configure` adds its arguments."""

    def deco(fn: Callable[[argparse.Namespace], int | None]):
        _REGISTRY[name] = Command(name, help, configure, fn)
        return fn

    return deco


def config_command(name: str, help: str, config_cls: type, run: Callable[[Any], Any]) -> None:
    """Register `alignlab NAME [--config FILE] [key=value ...]` that builds `config_cls` and calls `run(cfg)`."""
    from alignlab.config import describe, load_config, nested_configs

    def configure(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", "-c", help="YAML file with config keys (overrides on the command line win)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, dotted for nesting")
        nested = "".join(f"\n\nkeys of {key} ({c.__name__}):\n{describe(c)}" for key, c in nested_configs(config_cls))
        p.epilog = f"config keys ({config_cls.__name__}):\n{describe(config_cls)}{nested}"
        p.formatter_class = argparse.RawDescriptionHelpFormatter

    def invoke(args: argparse.Namespace) -> int | None:
        cfg = load_config(config_cls, args.config, args.overrides)
        if getattr(cfg, "output_dir", None) and getattr(cfg, "resume", None):
            from alignlab.config import config_text
            from alignlab.train.resume import stop_if_finished

            stop_if_finished(cfg.output_dir, cfg.resume, config_text(cfg))  # before any model is loaded
        run(cfg)
        return 0

    _REGISTRY[name] = Command(name, help, configure, invoke)


def _load_commands() -> None:
    for module in COMMAND_MODULES:
        importlib.import_module(module)


def build_parser() -> argparse.ArgumentParser:
    _load_commands()
    parser = argparse.ArgumentParser(prog="alignlab", description="Post-training for language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name in sorted(_REGISTRY):
        cmd = _REGISTRY[name]
        head, _, tail = name.partition(" ")
        if tail:  # "data inspect": a group parser holding its own subcommands
            if head not in groups:
                gp = sub.add_parser(head, help=f"{head} commands")
                groups[head] = gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
            p = groups[head].add_parser(tail, help=cmd.help, description=cmd.help)
        else:
            p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        if cmd.configure:
            cmd.configure(p)
        p.set_defaults(_command=cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    from alignlab.quiet import quiet_expected_noise

    quiet_expected_noise()  # before transformers is imported: expected third-party noise off, the rest kept
    parser = build_parser()
    args = parser.parse_args(argv)
    cmd: Command | None = getattr(args, "_command", None)
    if cmd is None:
        parser.print_help()
        return 0
    try:
        code = cmd.run(args)
    except AlreadyDone as e:  # nothing left to do is a success, not an error
        print(f"alignlab {cmd.name}: {e}", flush=True)
        return 0
    except AlignlabError as e:
        print(f"alignlab {cmd.name}: error: {e}", file=sys.stderr)
        if os.environ.get("ALIGNLAB_TRACEBACK"):
            raise
        return 2
    except KeyboardInterrupt:
        print(f"alignlab {cmd.name}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
