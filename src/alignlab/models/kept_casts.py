"""bf16 training: each Linear weight cast to bf16 once per optimizer step, not once per forward.

Under bf16 autocast every Linear casts its float32 weight on every call: with `grad_accum` micro-batches and
gradient checkpointing (the forward runs again in backward) that is 2 x grad_accum casts of every weight per
optimizer step, SmolLM2's 135M weights read and half of it written each time. `keep_weight_casts` makes each
plain nn.Linear take its weight through `ops.buffers.kept_cast` instead: one bf16 copy per weight, written once per
optimizer step into the same block, inside `reused_buffers` (the loops hold it). Outside `reused_buffers`, outside
bf16 autocast, in inference mode, or for a weight that is not float32, the module runs its own forward.

Same numbers bit for bit (test): the forward is the same bf16 `F.linear` autocast would call on the same casts, and
the weight's gradient goes back through `_CastBack`, whose backward is the cast's own (`grad.to(float32)`), so
gradients and their accumulation into `.grad` are unchanged. The price is the kept copies (half the float32
weights' size) held for the run, where autocast without checkpointing already held them from forward to backward.
The training loop applies it where a step casts a weight more than once (grad_accum > 1 or gradient
checkpointing), not with `compile: true` (compiled MLP blocks trace their Linears; their casts fuse there) or FSDP
(its flat parameters are gathered per forward). Measured on an Intel Xeon with AMX, one thread, SmolLM2, bf16,
paired in-process runs of alignlab's side alternating with and without: `make bench-sft`'s job (grad_accum 4, full
checkpointing) 8% faster (old/new 1.08; its benchmark then 1.83x TRL, memory 0.97 against 0.92: the kept copies),
the same final loss. With one forward per step it only holds memory: DPO's benchmark job (grad_accum 1, no
checkpointing) 0.98, GRPO's update (one micro-batch) 3-8% slower in three paired runs; so not there, and not in RL.
Tried and dropped: adding the bf16 weight gradient straight into an existing float32 `.grad` instead of upcasting it
first (the same bits): torch's mixed-dtype `add_` on CPU is as slow as the cast and the add together (436 against
477 us for a [1536, 576] gradient), and the SFT job's paired A/B gave 1.01.

Inputs (`share_input_casts`): autocast also casts each Linear's float32 input separately, so q, k and v (gate and
up) make three (two) bf16 copies of the same normed activation, and each is held for backward. With the flag, the
first reader makes one copy (kept while the activation lives and is unchanged) and every reader takes it through its
own `_CastBack`, so each reader's gradient is cast back to float32 and summed there, as with autocast's own casts:
the same bits (test). On the DPO benchmark's step (SmolLM2, bf16, Intel Xeon with AMX, one thread): 120 MB fewer
saved tensors (865 against 985 MB), peak memory 5.51-5.53 GB against 5.55 over 8 steps, the same speed. Where the
forward is recomputed (checkpointing) nothing is held and the loop leaves it off.
"""

from __future__ import annotations

import types
from typing import Any

_AUTOGRAD = None
_INPUTS = None  # float32 activation -> (its version, its bf16 copy), while the activation lives
_WEIGHT_FLAG, _INPUT_FLAG = "_alignlab_kept_weight", "_alignlab_shared_input"


def _cast_back_cls():
    import torch

    class _CastBack(torch.autograd.Function):
        """The kept bf16 copy of `weight` in the graph as `weight.to(bf16)` would be: gradients flow to the float32
        weight through the same cast a fresh copy's backward applies."""

        @staticmethod
        def forward(ctx, weight, low):
            ctx.dtype = weight.dtype
            return low.view_as(low)  # a new tensor object on the kept block: each call gets its own graph node

        @staticmethod
        def backward(ctx, grad):
            return grad.to(ctx.dtype), None

    return _CastBack


def _shared_input(x: Any) -> Any:
    """The bf16 copy of float32 activation `x`, made once for every Linear that reads `x` (kept while `x` lives and
    is unchanged), entering each reader's graph through its own `_CastBack` node."""
    import torch

    global _AUTOGRAD, _INPUTS
    if _INPUTS is None:
        from torch.utils.weak import WeakIdKeyDictionary

        _INPUTS = WeakIdKeyDictionary()
    hit = _INPUTS.get(x)
    if hit is None or hit[0] != x._version:
        with torch.no_grad():
            hit = _INPUTS[x] = (x._version, x.to(torch.bfloat16))
    if not (x.requires_grad and torch.is_grad_enabled()):
        return hit[1]
    _AUTOGRAD = _AUTOGRAD or _cast_back_cls()
    return _AUTOGRAD.apply(x, hit[1])


def _forward(self: Any, x: Any) -> Any:
    import torch
    import torch.nn.functional as F

    from alignlab.ops import buffers

    w = self.weight
    device = w.device.type
    # Not in inference mode: a copy made there could never enter a training graph later.
    if not (torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16
            and not torch.is_inference_mode_enabled()):
        return torch.nn.Linear.forward(self, x)
    if self.__dict__.get(_INPUT_FLAG) and x.dtype == torch.float32:
        x = _shared_input(x)  # bf16 already: autocast leaves it as it is
    if not (self.__dict__.get(_WEIGHT_FLAG) and buffers.active() and w.dtype == torch.float32):
        return torch.nn.Linear.forward(self, x)
    low = buffers.kept_cast(w, torch.bfloat16)
    if w.requires_grad and torch.is_grad_enabled():
        global _AUTOGRAD
        _AUTOGRAD = _AUTOGRAD or _cast_back_cls()
        low = _AUTOGRAD.apply(w, low)
    return F.linear(x, low, self.bias)  # autocast casts x and the bias as it would have


def kept_cast_forward(module: Any) -> bool:
    """Whether `module` runs the kept-cast forward (the sampler's packed bf16 Linears may stand in for it)."""
    return getattr(module.__dict__.get("forward"), "__func__", None) is _forward


def kept_casts(module: Any) -> set[str]:
    """Which casts `module` keeps: "weight", "input" (neither: the module's own forward)."""
    return {name for name, flag in (("weight", _WEIGHT_FLAG), ("input", _INPUT_FLAG)) if module.__dict__.get(flag)}


def _install(model: Any, flag: str) -> int:
    import torch

    changed = 0
    for m in model.modules():
        if type(m) is torch.nn.Linear and ("forward" not in m.__dict__ or kept_cast_forward(m)):
            if not kept_cast_forward(m):
                m.forward = types.MethodType(_forward, m)
            if not m.__dict__.get(flag):
                m.__dict__[flag] = True
                changed += 1
    return changed


def keep_weight_casts(model: Any, enabled: bool = True) -> int:
    """Give every plain nn.Linear of `model` (not a subclass, not one whose forward is already replaced but by this
    module) kept weight casts; the number of modules changed. An instance attribute: classes, state dicts and
    checkpoints are untouched."""
    return _install(model, _WEIGHT_FLAG) if enabled else 0


def share_input_casts(model: Any, enabled: bool = True) -> int:
    """Give the same Linears one bf16 copy of each float32 input, shared by every Linear that reads it; the number
    of modules changed."""
    return _install(model, _INPUT_FLAG) if enabled else 0
