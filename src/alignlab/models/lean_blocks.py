"""Llama-style RMSNorm and SwiGLU that keep fewer activations for backward, with the same forward ops.

transformers' `LlamaRMSNorm` (`x * rsqrt(mean(x^2) + eps)`, then `weight *`) leaves autograd holding the
float32 input (for `pow`) AND the float32 normalised input (for the weight's product): two [tokens, hidden]
float32 tensors a norm, four a layer. `LlamaMLP`'s `down(silu(gate(x)) * up(x))` holds gate(x) (for silu), silu's
output and up(x) (for the product) and the product (for down's weight gradient). `_RMSNorm` keeps the input and the
[tokens, 1] reciprocal root and recomputes the normalised input in backward (one product); `_SwiGLUDown` keeps gate(x),
up(x) and down's cast weight and recomputes silu and the product (`_SiluMul`, without down, where down is not a
plain bias-free Linear: LoRA, kept weight casts). Liger-Kernel's RMSNorm and SwiGLU functions make the same trade in
Triton on GPUs. Per layer and token that is 2 x 4 x hidden + 4 x intermediate bytes fewer under bf16 autocast,
10.5 KB for SmolLM2 (of the ~29 KB of activations a layer held).

Forward: the modules' own ops in their order, so the outputs are the same bits. Backward: the derivative formulas
autograd applies to those ops (mul, rsqrt, mean, pow, silu, and a Linear's mm on the folded input), and the norm's
two gradients for its input reach the input's buffer separately, in the engine's order: losses and gradients equal the plain path's bit for bit (test,
float32 and bf16 autocast, bf16 weights, under selective recomputation).
Only for modules of these exact transformers classes (the Llama family's shared code) whose forward is not
replaced already (compiled blocks) and that have no hooks; anything else keeps its own forward. Applied by the training
loops to the trained model without gradient checkpointing (frozen models run under no_grad and save nothing).
Measured (Intel Xeon with AMX, one thread, SmolLM2, bf16, separate processes alternating): `make bench-dpo`'s job for
8 steps, peak memory 5.52 and 5.59 GB against 5.80 and 5.86, the same seconds (30.9 and 31.2 against 30.6 and
31.6), autograd's saved tensors on one step 985 MB against 1,255 (norm and silu only); with down's input recomputed
too (and shared input casts on in both), 5.30 and 5.28 GB against 5.49 and 5.54, 31.5 and 30.0 s against 30.3 and
32.5, saved tensors 758 MB against 865. Under full checkpointing (`make bench-sft`'s job)
only a layer's activations live at a time: 30-70 MB less for ~1% more time (43.4 and 42.2 s against 42.5 and 42.1),
so not there; selective recomputation already drops what these keep.
"""

from __future__ import annotations

import types
from typing import Any

from alignlab.models.kept_casts import kept_casts

NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")
MLPS = ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP")

_FNS: dict[str, Any] = {}


def _functions() -> dict[str, Any]:
    if not _FNS:
        _FNS.update(norm=_norm_cls(), silu_mul=_silu_mul_cls(), swiglu_down=_swiglu_down_cls())
    return _FNS


def _norm_cls() -> Any:
    import torch

    class _RMSNorm(torch.autograd.Function):
        """`x` comes in twice (`x_pow` and `x_mul`): autograd's plain graph sends float32 `x` one gradient from the
        normalising product and one from pow(2), added to `x`'s buffer in that order after the residual's; two
        inputs keep that order, so the input gradient is the same bits too."""

        @staticmethod
        def forward(ctx, x_pow, x_mul, weight, eps):
            h = x_pow.to(torch.float32)
            r = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
            ctx.save_for_backward(x_pow, weight, r)
            return weight * (h * r).to(x_pow.dtype)

        @staticmethod
        def backward(ctx, grad):
            x, weight, r = ctx.saved_tensors
            h = x.to(torch.float32)
            normed = (h * r).to(x.dtype)  # recomputed: the same bits as the forward's
            grad_w = (grad * normed).sum_to_size(weight.shape) if ctx.needs_input_grad[2] else None
            grad_n = (grad * weight).to(x.dtype).to(torch.float32)  # through `.to(x.dtype)`, as autograd does
            grad_var = -0.5 * (grad_n * h).sum(-1, keepdim=True) * r.pow(3)  # rsqrt'(v) = -r^3 / 2
            by_mul = grad_n * r
            by_pow = (grad_var.expand_as(h) / h.shape[-1]) * (2 * h)  # mean's backward, then pow(2)'s: 2 h
            if x.dtype == torch.float32:  # h is x: two gradients, added in the engine's order
                return by_mul, by_pow, grad_w, None
            return (by_mul + by_pow).to(x.dtype), None, grad_w, None  # summed in float32 before the cast back

    return _RMSNorm


def _silu_mul_cls() -> Any:
    import torch
    import torch.nn.functional as F

    class _SiluMul(torch.autograd.Function):
        @staticmethod
        def forward(ctx, gate, up):
            ctx.save_for_backward(gate, up)
            return F.silu(gate) * up

        @staticmethod
        def backward(ctx, grad):
            gate, up = ctx.saved_tensors
            grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
            return grad_gate, grad * F.silu(gate) if ctx.needs_input_grad[1] else None

    return _SiluMul


def _swiglu_down_cls() -> Any:
    import torch
    import torch.nn.functional as F

    class _SwiGLUDown(torch.autograd.Function):
        """down(silu(gate) * up) keeping gate, up and down's (cast) weight: the product h = silu(gate) * up, which
        the plain graph holds for down's weight gradient, is recomputed in backward. The gradients are the ops
        autograd's MmBackward runs for a Linear on a 3-D input (h folded to 2-D; the weight gradient as
        grad^T.mm(h), as for a transposed, column-major weight), then the cast's backward."""

        @staticmethod
        def forward(ctx, gate, up, weight):
            device = gate.device.type
            low = (weight.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device)
                   and weight.is_floating_point() else weight)  # the cast autocast would make
            ctx.save_for_backward(gate, up, low)
            ctx.weight_dtype = weight.dtype
            return F.linear(F.silu(gate) * up, low)

        @staticmethod
        def backward(ctx, grad):
            gate, up, low = ctx.saved_tensors
            h = (F.silu(gate) * up).reshape(-1, up.shape[-1])  # recomputed: the forward's bits
            grad2d = grad.reshape(-1, grad.shape[-1])
            grad_w = grad2d.t().mm(h).to(ctx.weight_dtype) if ctx.needs_input_grad[2] else None
            grad_h = grad2d.mm(low).view(up.shape)
            grad_gate = torch.ops.aten.silu_backward(grad_h * up, gate) if ctx.needs_input_grad[0] else None
            return grad_gate, grad_h * F.silu(gate) if ctx.needs_input_grad[1] else None, grad_w

    return _SwiGLUDown


def _norm_forward(self: Any, hidden_states: Any) -> Any:
    import torch

    if not torch.is_grad_enabled():
        return type(self).forward(self, hidden_states)
    return _functions()["norm"].apply(hidden_states, hidden_states, self.weight, self.variance_epsilon)


def _mlp_forward(self: Any, x: Any) -> Any:
    import torch

    if not torch.is_grad_enabled():
        return type(self).forward(self, x)
    down = self.down_proj  # fused only where skipping its call changes nothing: no bias, hooks or weight casts kept
    if (type(down) is torch.nn.Linear and down.bias is None and not down._forward_hooks
            and not down._forward_pre_hooks and not kept_casts(down) - {"input"}
            and ("forward" not in down.__dict__ or kept_casts(down)) and x.dim() == 3):
        return _functions()["swiglu_down"].apply(self.gate_proj(x), self.up_proj(x), down.weight)
    return down(_functions()["silu_mul"].apply(self.gate_proj(x), self.up_proj(x)))


def _eligible(module: Any) -> Any:
    name = type(module).__name__
    if "forward" in module.__dict__ or module._forward_hooks or module._forward_pre_hooks:
        return None
    if name in NORMS and hasattr(module, "variance_epsilon"):
        return _norm_forward
    if (name in MLPS and type(getattr(module, "act_fn", None)).__name__ == "SiLUActivation"
            and all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj"))):
        return _mlp_forward
    return None


def is_lean(module: Any) -> bool:
    """Whether `module` runs the lean forward (the bf16 sampler's own Llama step may stand in for it)."""
    return getattr(module.__dict__.get("forward"), "__func__", None) in (_norm_forward, _mlp_forward)


def lean_blocks(model: Any, enabled: bool = True) -> int:
    """Give `model`'s Llama-family RMSNorm and SiLU-MLP modules the lean forward (an instance attribute: classes,
    state dicts and checkpoints are untouched); the number of modules changed."""
    if not enabled:
        return 0
    changed = 0
    for m in model.modules():
        fn = _eligible(m)
        if fn is not None:
            m.forward = types.MethodType(fn, m)
            changed += 1
    return changed
