"""Llama-style RMSNorm and SwiGLU that keep fewer activations for backward, with the same forward ops.

transformers' `LlamaRMSNorm` (`x * rsqrt(mean(x^2) + eps)`, then `weight *`) leaves autograd holding the
float32 input (for `pow`) AND the float32 normalised input (for the weight's product): two [tokens, hidden]
float32 tensors a norm, four a layer. `LlamaMLP`'s `silu(gate(x)) * up(x)` holds gate(x) (for silu), silu's output
and up(x) (for the product). `_RMSNorm` keeps the input and the [tokens, 1] reciprocal root and recomputes the
normalised input in backward (one product); `_SiluMul` keeps gate(x) and up(x) and recomputes silu (Liger-Kernel's
RMSNorm and SwiGLU functions make the same trade in Triton on GPUs). Per layer and token that is 2 x 4 x hidden +
2 x intermediate bytes fewer under bf16 autocast, 7.4 KB for SmolLM2 (of the ~29 KB of activations a layer held).

Forward: the modules' own ops in their order, so the outputs are the same bits. Backward: the derivative formulas
autograd applies to those ops (mul, rsqrt, mean, pow, silu), and the norm's two gradients for its input reach the
input's buffer separately, in the engine's order: losses and gradients equal the plain path's bit for bit (test,
float32 and bf16 autocast, bf16 weights, under selective recomputation).
Only for modules of these exact transformers classes (the Llama family's shared code) whose forward is not
replaced already (compiled blocks) and that have no hooks; anything else keeps its own forward. Applied by the training
loops to the trained model without gradient checkpointing (frozen models run under no_grad and save nothing).
Measured (Intel Xeon with AMX, one thread, SmolLM2, bf16, separate processes alternating): `make bench-dpo`'s job for
8 steps, peak memory 5.52 and 5.59 GB against 5.80 and 5.86, the same seconds (30.9 and 31.2 against 30.6 and
31.6), autograd's saved tensors on one step 985 MB against 1,255. Under full checkpointing (`make bench-sft`'s job)
only a layer's activations live at a time: 30-70 MB less for ~1% more time (43.4 and 42.2 s against 42.5 and 42.1),
so not there; selective recomputation already drops what these keep.
"""

from __future__ import annotations

import types
from typing import Any

NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")
MLPS = ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP")

_FNS: dict[str, Any] = {}


def _functions() -> dict[str, Any]:
    if _FNS:
        return _FNS
    import torch
    import torch.nn.functional as F

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

    _FNS.update(norm=_RMSNorm, silu_mul=_SiluMul)
    return _FNS


def _norm_forward(self: Any, hidden_states: Any) -> Any:
    import torch

    if not torch.is_grad_enabled():
        return type(self).forward(self, hidden_states)
    return _functions()["norm"].apply(hidden_states, hidden_states, self.weight, self.variance_epsilon)


def _mlp_forward(self: Any, x: Any) -> Any:
    import torch

    if not torch.is_grad_enabled():
        return type(self).forward(self, x)
    return self.down_proj(_functions()["silu_mul"].apply(self.gate_proj(x), self.up_proj(x)))


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
