"""The fused ops of a training step against Liger-Kernel's, on the model's own shapes: the LM head with its loss,
RMSNorm and SwiGLU's silu-times-up, each forward + backward.

    python bench/fused_vs_liger.py --device cuda                     # SmolLM2-135M's shapes, 8,192 tokens
    python bench/fused_vs_liger.py --device cpu --tokens 512 --reps 3 # dry run: plain and ours (Liger is Triton)

Sides, all under bf16 autocast with float32 parameters as the training loops run them:
- plain: the eager ops transformers runs (the full [tokens, vocab] logits then cross-entropy; LlamaRMSNorm's
  ops; silu(gate) * up);
- ours: `ops.logprobs.chunked_token_logprobs` (the head chunk by chunk, no full logits) and the lean autograd
  functions of `models.lean_blocks` (fewer tensors kept for backward, the plain ops' bits);
- liger: `LigerFusedLinearCrossEntropyFunction`, `LigerRMSNormFunction`, `LigerSiLUMulFunction` from the
  `liger-kernel` package, when it imports (its kernels need a GPU; on a machine without network its wheel
  can be carried, as bench/gpu_check.py's docstring says for the other wheels).

Per op and side: milliseconds of a forward + backward (the median of --reps after two warm-ups, the device
synchronised around each), the peak memory it adds over its inputs (CUDA only), and its agreement with the
plain op computed in float32 without autocast: the loss's absolute difference and the input gradients' largest
difference relative to their largest magnitude. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # a bare GPU machine: this checkout's alignlab

SHAPES = {"hidden": 576, "intermediate": 1536, "vocab": 49152, "eps": 1e-5}  # SmolLM2-135M (config.json)


def liger_ops() -> dict | None:
    try:
        from liger_kernel.ops import (
            LigerFusedLinearCrossEntropyFunction,
            LigerRMSNormFunction,
            LigerSiLUMulFunction,
        )
    except ImportError:
        return None
    return {"head": lambda h, w, y: LigerFusedLinearCrossEntropyFunction.apply(h, w, y)[0],
            "rmsnorm": lambda x, w, eps: LigerRMSNormFunction.apply(x, w, eps, 0.0, "llama", False),
            "swiglu": LigerSiLUMulFunction.apply}


def plain_rmsnorm(x, w, eps):
    h = x.to(torch.float32)  # LlamaRMSNorm.forward's ops
    return w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def our_ops() -> dict:
    from alignlab.models.lean_blocks import _functions
    from alignlab.ops.logprobs import chunked_token_logprobs

    fns = _functions()
    return {"head": lambda h, w, y: -chunked_token_logprobs(h, w, y).mean(),
            "rmsnorm": lambda x, w, eps: fns["norm"].apply(x, x, w, eps),
            "swiglu": fns["silu_mul"].apply}


PLAIN = {"head": lambda h, w, y: F.cross_entropy(F.linear(h, w).float(), y),
         "rmsnorm": plain_rmsnorm, "swiglu": lambda a, b: F.silu(a) * b}


def inputs(op: str, tokens: int, device: str) -> tuple[list[torch.Tensor], list, torch.Tensor | None]:
    """(tensors that get gradients, other arguments, the output's upstream gradient or None for a scalar loss)."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape, scale=1.0, dtype=torch.float32):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    h, i, v = SHAPES["hidden"], SHAPES["intermediate"], SHAPES["vocab"]
    if op == "head":  # the final norm's float32 output and the (tied) head weight
        return [rand(tokens, h), rand(v, h, scale=0.05)], [torch.randint(0, v, (tokens,), generator=g).to(device)], None
    if op == "rmsnorm":  # the float32 residual stream and the norm's weight
        return [rand(tokens, h), 1 + rand(h, scale=0.1)], [SHAPES["eps"]], rand(tokens, h)
    # gate(x) and up(x): bf16, as autocast's matmuls return them
    return ([rand(tokens, i, dtype=torch.bfloat16), rand(tokens, i, dtype=torch.bfloat16)], [],
            rand(tokens, i, dtype=torch.bfloat16))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(fn, tensors, extra, upstream, device: str, autocast: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One forward + backward; (the loss or output, the gradients of `tensors`)."""
    leaves = [t.detach().requires_grad_() for t in tensors]
    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=autocast):
        out = fn(*leaves, *extra)
    (out if upstream is None else (out.float() * upstream.float()).sum()).backward()
    return out.detach(), [t.grad for t in leaves]


def measure(fn, tensors, extra, upstream, device: str, reps: int, reference) -> dict:
    for _ in range(2):
        run(fn, tensors, extra, upstream, device, True)
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        run(fn, tensors, extra, upstream, device, True)
        sync(device)
        times.append(time.perf_counter() - t)
    res = {"ms": round(1e3 * statistics.median(times), 3)}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out, grads = run(fn, tensors, extra, upstream, device, True)
        res["peak_extra_mb"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
    else:
        out, grads = run(fn, tensors, extra, upstream, device, True)
    ref_out, ref_grads = reference
    if upstream is None:
        res["loss_abs_diff"] = float(abs(out.float() - ref_out.float()))
    res["grad_rel_diff"] = max(float((a.float() - b.float()).abs().max() / b.float().abs().max())
                               for a, b in zip(grads, ref_grads))
    return res


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tokens", type=int, default=8192, help="rows of each op's input (tokens of a batch)")
    p.add_argument("--reps", type=int, default=10)
    args = p.parse_args(argv)
    sides = {"plain": PLAIN, "ours": our_ops()}
    liger = liger_ops() if args.device.startswith("cuda") else None
    if liger:
        sides["liger"] = liger
    result: dict = {"bench": "fused_vs_liger", "device": args.device, "tokens": args.tokens, **SHAPES,
                    "liger": bool(liger), "ops": {}}
    if args.device.startswith("cuda"):
        result["device_name"] = torch.cuda.get_device_name(args.device)
    for op in ("head", "rmsnorm", "swiglu"):
        tensors, extra, upstream = inputs(op, args.tokens, args.device)
        reference = run(PLAIN[op], [t.float() for t in tensors], extra, upstream, args.device, False)
        result["ops"][op] = {}
        for side, ops in sides.items():
            res = measure(ops[op], tensors, extra, upstream, args.device, args.reps, reference)
            result["ops"][op][side] = res
            mem = f"  +{res['peak_extra_mb']:,.0f} MB" if "peak_extra_mb" in res else ""
            print(f"{op:<8} {side:<6} {res['ms']:9.3f} ms{mem}  grad rel diff {res['grad_rel_diff']:.2e}", flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
