"""`compile: true`: torch.compile of a model's elementwise-heavy blocks (the MLP and the RMSNorms) for training.

Why these blocks and not the whole model: a decoder layer's matrix products already run in oneDNN/cuBLAS, and
what eager mode adds around them is a chain of elementwise kernels, each reading and writing the whole activation
(RMSNorm's pow, mean, rsqrt, mul, mul and casts; SwiGLU's silu and mul) and, in backward, their gradients. Inductor
fuses each chain into one loop. Attention stays eager: span plans (models/attention.py) are Python-level geometry
that would recompile per batch. Measured on SmolLM2-135M, 8 x 256 tokens, bf16 autocast, one thread (Intel Xeon
with AMX, interleaved runs, median of 5): forward + backward 13.3 -> 11.7 s without checkpointing, 16.9 -> 15.2 s
with selective checkpointing; compiling costs ~18 s once per process (one graph per block class serves every layer:
dynamic shapes, so varying batch lengths do not recompile; a batch of one row compiles once more, torch
specialising sizes 0 and 1).

Under bf16 autocast the compiled blocks round differently from eager ones (inductor keeps a fused chain's
intermediates in fp32 where eager rounds each op's output to bf16): SmolLM2's per-token log-probs move by up to
0.27 nats (float32: 3e-5). So whatever the policy is compared with runs compiled too: its own no-grad forwards
(evaluation, a LoRA policy's adapter-off reference, cached reference log-probs, RL's old log-probs) and a separate
frozen reference (train/reference.py: compiled, its Linear weights kept float32 rather than lowered to bf16). A
no-grad forward compiles once more (the grad mode is part of the graph) and gives the differentiated forward's
numbers bit for bit (test; SmolLM2 checked too), so DPO starts at log 2 and RL's KL at 0 as without compile.
`make bench-dpo`'s bf16 job against TRL (Xeon, one thread, `--rounds 2`, same day): 2.12x and memory 0.73 eager,
2.36x and 0.66 compiled (4.7 GB against TRL's 7.0; the compiled graphs keep fewer intermediates).

The sampler decodes eager (`eager_blocks`, rollout/weights.py): a compiled RMSNorm made SmolLM2's decode slower
(16 rows x 32 tokens: 3.6 -> 4.4 s), and inductor's CPU bf16 linear fusion fails on the bf16 weights the sampler
swaps in (torch 2.13).
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_COMPILED: dict[type, Any] = {}  # one compiled function per block class, shared by all its instances
_EAGER = [0]  # depth of open eager_blocks() contexts


@contextmanager
def eager_blocks() -> Iterator[None]:
    """Compiled blocks run their eager code inside (the sampler's decode steps)."""
    _EAGER[0] += 1
    try:
        yield
    finally:
        _EAGER[0] -= 1


def _is_block(module: Any) -> bool:
    name = type(module).__name__
    return name.endswith("RMSNorm") or name.endswith("MLP")  # transformers' names: LlamaMLP, Qwen2RMSNorm, ...


def _compiled_forward(cls: type) -> Any:
    import torch

    if cls not in _COMPILED:
        _COMPILED[cls] = torch.compile(cls.forward, dynamic=True)
    compiled, eager = _COMPILED[cls], cls.forward

    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        return (eager if _EAGER[0] else compiled)(self, *args, **kwargs)

    forward.alignlab_compiled = True  # type: ignore[attr-defined]
    return forward


def compile_blocks(model: Any, enabled: bool = True) -> int:
    """Make `model`'s MLP and RMSNorm modules run compiled (outside `eager_blocks`); the number of modules changed.

    The change is an instance attribute (`module.forward`): the class, other models in the process, state dicts
    and saved checkpoints are untouched. A model without such blocks is an error, so that `compile: true` never
    silently does nothing."""
    if not enabled:
        return 0
    blocks = [m for m in model.modules() if _is_block(m)]
    if not blocks:
        from alignlab.errors import ConfigError

        raise ConfigError(f"compile: {type(model).__name__} has no *MLP or *RMSNorm modules to compile")
    for m in blocks:
        if not getattr(m.forward, "alignlab_compiled", False):
            m.forward = types.MethodType(_compiled_forward(type(m)), m)
    return len(blocks)


def is_compiled(module: Any) -> bool:
    return bool(getattr(getattr(module, "forward", None), "alignlab_compiled", False))
