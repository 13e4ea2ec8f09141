"""What the machine can do and how much of it a training job uses: the CPU, the matmul peak, FLOPs per token.

Shared by bench/sft_vs_trl.py and bench/dpo_vs_trl.py (through bench/peer.py), so both report the same way:

- `cpu_model()`: the CPU's name (lscpu's "Model name", else /proc/cpuinfo's "model name").
- `matmul_peak(config, threads)`: the GFLOP/s torch.matmul reaches on the model's own MLP shapes,
  [T x hidden] x [hidden x intermediate] and [T x intermediate] x [intermediate x hidden], in bf16 and in
  float32, after warm-up, at the job's torch thread count. The best repetition counts (a peak; the machine
  may be shared), and the median is reported beside it.
- `matmul_params(config)`: N, the parameters a token meets in a matmul (every decoder Linear plus the LM head;
  the embedding lookup is no matmul, but a tied embedding counts once, as the head). 134,479,872 for
  SmolLM2-135M, which is its whole parameter count since its head is the tied embedding.
- `train_flops_per_token(n, recompute)`: 6N for a forward and backward (2N forward, 4N backward: the
  input and the weight gradients), 8N with activation checkpointing (the forward runs twice).
  Attention's score/value matmuls (2 x layers x context x hidden per token and pass) are left out, as in the
  usual 6N count; for SmolLM2 at a few hundred tokens of context they are under 10% of 6N.
- `share_of_peak(flops_per_second, peak_gflops)`: useful FLOP/s over the measured peak.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (lscpu, then /proc/cpuinfo); 'unknown' when neither says."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def _get(config: Any, key: str, default: Any = None) -> Any:
    return config.get(key, default) if isinstance(config, Mapping) else getattr(config, key, default)


def matmul_params(config: Any) -> int:
    """N: parameters in the matmuls one token goes through, from a HF decoder config (dict or PretrainedConfig).

    Per layer: q and o projections hidden x (heads x head_dim), k and v hidden x (kv_heads x head_dim), and a gated
    MLP (gate, up, down) 3 x hidden x intermediate; then the LM head vocab x hidden. Biases and norms are
    vectors (no matmul) and left out."""
    hidden = int(_get(config, "hidden_size"))
    heads = int(_get(config, "num_attention_heads"))
    kv_heads = int(_get(config, "num_key_value_heads", None) or heads)
    head_dim = int(_get(config, "head_dim", None) or hidden // heads)
    inter = int(_get(config, "intermediate_size"))
    layers, vocab = int(_get(config, "num_hidden_layers")), int(_get(config, "vocab_size"))
    attn = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    mlp = 3 * hidden * inter
    return layers * (attn + mlp) + vocab * hidden


def train_flops_per_token(n: int, *, recompute: bool) -> int:
    """FLOPs per trained token: 6N (forward 2N + backward 4N), 8N when checkpointing reruns the forward."""
    return (8 if recompute else 6) * n


def forward_flops_per_token(n: int) -> int:
    """FLOPs per token of a forward only (a frozen reference): 2N."""
    return 2 * n


def share_of_peak(flops_per_second: float, peak_gflops: float) -> float:
    """Useful FLOP/s as a fraction of the measured matmul peak (GFLOP/s)."""
    if peak_gflops <= 0:
        raise ValueError(f"peak must be positive, got {peak_gflops} GFLOP/s")
    return flops_per_second / (peak_gflops * 1e9)


def _rate(m: int, k: int, n: int, dtype: Any, seconds: float, repeats: int) -> list[float]:
    import torch

    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(3):  # warm-up: first calls pay allocation and kernel selection
        torch.matmul(a, b)
    rates = []
    for _ in range(repeats):
        calls, t0 = 0, time.perf_counter()
        while True:
            torch.matmul(a, b)
            calls += 1
            dt = time.perf_counter() - t0
            if dt >= seconds / repeats:
                break
        rates.append(2 * m * k * n * calls / dt / 1e9)
    return rates


def matmul_peak(config: Any, *, threads: int = 0, tokens: int = 1024, seconds: float = 1.0,
                repeats: int = 5) -> dict[str, Any]:
    """Best and median GFLOP/s of torch.matmul on the model's MLP shapes, in bf16 and float32, at `threads`."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        hidden, inter = int(_get(config, "hidden_size")), int(_get(config, "intermediate_size"))
        out: dict[str, Any] = {"shapes": [[tokens, hidden, inter], [tokens, inter, hidden]],
                               "torch_threads": torch.get_num_threads()}
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            rates = _rate(tokens, hidden, inter, dtype, seconds / 2, repeats)
            rates += _rate(tokens, inter, hidden, dtype, seconds / 2, repeats)
            out[f"{name}_gflops"] = round(max(rates), 1)
            out[f"{name}_gflops_median"] = round(statistics.median(rates), 1)
        return out
    finally:
        torch.set_num_threads(before)


def load_config(model_dir: str) -> dict:
    """The model's config.json as a dict (no transformers import needed)."""
    import json

    return json.loads((Path(model_dir) / "config.json").read_text())
