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
0.27 nats (float32: 3e-5). A loss or penalty that compares the policy with an eager no-grad forward (a DPO
reference, online RL's reference, old or sampler log-probs) would then not start from policy = reference, so
those trainers refuse `compile` with bf16 (`refuse_bf16_comparison`); SFT, reward models and reference-free
preference losses take it. `make bench-dpo`'s bf16 job (with a reference; Xeon, one thread, 8 steps) ran 0.224 ->
0.262 pairs/s and 6.1 -> 5.6 GB peak compiled, before this refusal, but started at loss 0.6754 instead of log 2.

Only forwards that build a graph take the compiled code. No-grad forwards (a frozen reference, evaluation, sampling)
stay eager: they would recompile for the other grad mode, and inductor's CPU bf16 linear fusion fails on
sampling's swapped-in bf16 weights (torch 2.13). The decode step itself was measured too (compiled RMSNorm in
the sampler, 16 rows x 32 tokens: 3.6 -> 4.4 s, slower), so sampling is not compiled.
"""

from __future__ import annotations

import types
from typing import Any

_COMPILED: dict[type, Any] = {}  # one compiled function per block class, shared by all its instances


def _is_block(module: Any) -> bool:
    name = type(module).__name__
    return name.endswith("RMSNorm") or name.endswith("MLP")  # transformers' names: LlamaMLP, Qwen2RMSNorm, ...


def _compiled_forward(cls: type) -> Any:
    import torch

    if cls not in _COMPILED:
        _COMPILED[cls] = torch.compile(cls.forward, dynamic=True)
    compiled, eager = _COMPILED[cls], cls.forward

    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        return (compiled if torch.is_grad_enabled() else eager)(self, *args, **kwargs)

    forward.alignlab_compiled = True  # type: ignore[attr-defined]
    return forward


def compile_blocks(model: Any, enabled: bool = True) -> int:
    """Make `model`'s MLP and RMSNorm modules run compiled when differentiated; the number of modules changed.

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


def refuse_bf16_comparison(compiled: bool, bf16: bool, what: str) -> None:
    """Raise when `compile` and `bf16` are both on and the loss compares the policy with `what` (an eager forward)."""
    if compiled and bf16:
        from alignlab.errors import ConfigError

        raise ConfigError(
            f"compile: true with bf16: true: {what} runs eager, and under bf16 autocast the compiled blocks round "
            "differently (SmolLM2: per-token log-probs up to 0.27 nats apart), so the policy would not start equal to "
            "it. Use compile with bf16: false (3e-5 nats apart), or bf16 without compile.")


def is_compiled(module: Any) -> bool:
    return bool(getattr(getattr(module, "forward", None), "alignlab_compiled", False))
