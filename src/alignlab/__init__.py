"""alignlab: post-training for language models. Importing this package does no work.

The Python API (alignlab.api) is re-exported lazily: `alignlab.sft`, `alignlab.dpo`, `alignlab.reward_model`,
`alignlab.grpo`, `alignlab.ppo`, `alignlab.online_dpo`, `alignlab.evaluate`, `alignlab.generate`, `alignlab.RunResult` and `alignlab.Callback` import their modules
(and torch) on first use, so `import alignlab` stays instant.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "sft": "alignlab.api",
    "dpo": "alignlab.api",
    "reward_model": "alignlab.api",
    "evaluate": "alignlab.api",
    "generate": "alignlab.api",
    "grpo": "alignlab.api",
    "ppo": "alignlab.api",
    "online_dpo": "alignlab.api",
    "pretrain": "alignlab.api",
    "distill": "alignlab.api",
    "medusa": "alignlab.api",
    "RunResult": "alignlab.api",
    "Callback": "alignlab.train.callbacks",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'alignlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
