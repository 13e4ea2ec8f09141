"""What the peer benchmarks share: TRL in its own virtual environment, and one worker process per side.

Each side runs in its own process so its peak RSS is its own; TRL never becomes a dependency of alignlab.
Before the sides run, the driver measures the machine (bench/hardware.py: CPU model, torch threads, the
matmul peak on the model's shapes), and each side's result gets its useful FLOP/s and `share_of_peak`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def count_embedded_tokens() -> tuple[dict[str, int], Any]:
    """Count the tokens every model forward embeds from now on in this process, as {"trained", "frozen"}; returns
    the counts and the hook's handle (`.remove()` stops counting).

    A global forward pre-hook on nn.Embedding (HF decoders call `embed_tokens(input_ids)` with the ids as the
    first argument). A forward under grad mode is a training forward (a backward follows: 6N per token); one under
    no_grad or inference mode is forward-only (a reference: 2N). Both alignlab and TRL run their references under
    no_grad; the embedding's own requires_grad says nothing (TRL's reference copy keeps it, LoRA freezes it).
    This is the number of positions each side actually runs, padding included, whatever its layout."""
    import torch

    counts = {"trained": 0, "frozen": 0}

    def hook(module: Any, inputs: tuple) -> None:
        if isinstance(module, torch.nn.Embedding) and inputs and hasattr(inputs[0], "numel"):
            counts["trained" if torch.is_grad_enabled() else "frozen"] += int(inputs[0].numel())

    return counts, torch.nn.modules.module.register_module_forward_pre_hook(hook)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def logged_steps(output_dir: str) -> tuple[list[dict], list[int], list[float]]:
    """An alignlab run's per-step metrics rows, tokens and seconds, from the `num_tokens` and `tokens_per_second`
    it logs every step (logging_steps 1)."""
    from alignlab.train.metrics import read_metrics

    rows = [r for r in read_metrics(output_dir) if "tokens_per_second" in r]
    tokens = [rows[0]["num_tokens"]] + [b["num_tokens"] - a["num_tokens"] for a, b in zip(rows, rows[1:])]
    return rows, tokens, [t / r["tokens_per_second"] for t, r in zip(tokens, rows)]


TRL_VERSION = "1.16.0"  # the peer every figure and tests/parity compare with (its internals: _compute_loss, _metrics)


def ensure_trl_venv(venv: Path) -> Path:
    """A venv holding TRL_VERSION with the same torch release as ours (created once, reused after)."""
    python = venv / "bin" / "python"
    check = f"import trl, sys; sys.exit(trl.__version__ != {TRL_VERSION!r})"
    if python.exists() and subprocess.run([str(python), "-c", check], capture_output=True).returncode == 0:
        return python
    import torch

    torch_version = torch.__version__.split("+")[0]
    print(f"creating {venv} with torch=={torch_version} and trl=={TRL_VERSION} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"torch=={torch_version}", f"trl=={TRL_VERSION}"],
                   check=True)
    return python


def run_worker(script: Path, python: str, side: str, spec: dict, spec_path: Path) -> dict:
    """Run `script --worker SIDE --spec FILE` under `python`; its last stdout line is the JSON result."""
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT / "src")}
    if side == "trl":
        env.pop("PYTHONPATH")  # the TRL side must not see alignlab
    if spec["threads"]:
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    proc = subprocess.run([python, str(script), "--worker", side, "--spec", str(spec_path)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"{side} worker failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class _Bf16IfFast(argparse.Action):
    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        from alignlab.rollout.weights import cpu_has_bf16_units

        namespace.bf16 = namespace.bf16 or cpu_has_bf16_units()


def add_shared_args(p: Any) -> None:
    """The flags both benchmarks take: thread count, precision, the TRL venv, side order, worker plumbing."""
    p.add_argument("--threads", type=int, default=0, help="torch threads on both sides (0: torch default)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (fp32 weights and optimizer)")
    p.add_argument("--bf16-if-fast", action=_Bf16IfFast, nargs=0,
                   help="--bf16 where this CPU has bf16 matrix units (AVX512-BF16, AMX-BF16), else float32 on both "
                        "sides: the make targets' choice (on an AVX2-only AMD EPYC, family 25 model 1, one thread, "
                        "a bf16 product ran at 2 GFLOP/s against float32's 81)")
    p.add_argument("--compile", action="store_true",
                   help="alignlab's `compile: true` (compiled MLP and RMSNorm blocks; its one-off cost is in the "
                        "untimed first step, reported as first_step_seconds); TRL runs eager, its default")
    p.add_argument("--trl-venv", default="/tmp/alignlab-bench-trl")
    p.add_argument("--order", default="alignlab,trl",
                   help="which side runs first; `alignlab` alone runs no TRL (no ratios then)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the sides this many times, the order reversed each round (A B, B A, A B ...); the speedup "
                        "is the geometric mean of the rounds' ratios, which cancels a steady drift of the machine")
    p.add_argument("--keep", action="store_true",
                   help="keep the run folders (checkpoints of both sides, about 1 GB for SmolLM2); default: removed")
    p.add_argument("--worker", choices=["alignlab", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)


def run_as_worker(args: Any, workers: dict[str, Callable[[dict], dict]]) -> bool:
    """Inside a worker process: run this side on the spec, print its JSON result, return True."""
    if not args.worker:
        return False
    counts, _ = count_embedded_tokens()
    result = workers[args.worker](json.loads(Path(args.spec).read_text()))
    import torch

    print(json.dumps({**result, "embedded_tokens": counts, "torch_threads": torch.get_num_threads()}))
    return True


def alignlab_order(n: int, seed: int) -> list[int]:
    """The order alignlab's loop visits n examples in its first epoch (train/batches.py Sampler: a torch.randperm
    seeded with `seed`). The TRL side samples in the same order (`in_order`), so both sides' first, untimed step
    and their timed steps hold the same rows: with throughput counted in rows a second, rows of other lengths in
    the timed steps would move the ratio."""
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def in_order(trainer_cls: Any, order: list[int]) -> Any:
    """A transformers Trainer subclass whose training data loader visits the dataset in `order` (alignlab_order)
    instead of its own seeded shuffle."""

    class InOrder(trainer_cls):
        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
            return list(order)

    return InOrder


def step_timer() -> Any:
    """A transformers TrainerCallback collecting the seconds of each optimizer step (TRL side)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.t0 = [], 0.0

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.seconds.append(time.perf_counter() - self.t0)

    return StepTimer()


def measure_machine(model_dir: str, threads: int) -> dict:
    """The machine as the JSON last line reports it: CPU model, torch threads, matmul peak on the model's shapes."""
    from hardware import cpu_model, load_config, matmul_peak

    peak = matmul_peak(load_config(model_dir), threads=threads)
    return {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
            "peak_matmul": peak}


def add_flops(result: dict, useful_flops: float, processed_flops: float | None, peak: float) -> dict:
    """Useful (and, where known, processed) GFLOP/s over the timed seconds, and their share of `peak` (GFLOP/s)."""
    from hardware import share_of_peak

    useful = useful_flops / result["seconds"]
    out = {**result, "useful_gflops_per_second": round(useful / 1e9, 2),
           "share_of_peak": round(share_of_peak(useful, peak), 4)}
    if processed_flops is not None:
        processed = processed_flops / result["seconds"]
        out.update(processed_gflops_per_second=round(processed / 1e9, 2),
                   processed_share_of_peak=round(share_of_peak(processed, peak), 4))
    return out


def compare(script: Path, args: Any, spec: dict, out: Path, summarize: Callable[[dict], dict], *, rate: str,
            describe: Callable[[dict], str], job: dict,
            flops: Callable[[dict], tuple[float, float | None]] | None = None,
            peak: Callable[[str, dict], float] | None = None) -> None:
    """Measure the machine, run the sides (alignlab here, TRL in its venv; `--rounds` times, the order reversed
    each round), print a line each, the ratios, and the JSON last line (its sides: the last round's).
    flops(result) gives a side's (useful, processed) FLOPs in its timed seconds (processed None: not counted; flops
    None: the job reports no FLOP/s); peak(side, machine) the GFLOP/s its share is taken of (default: the matmul peak of
    the job's dtype). With flops, `speedup_at_peak` = speedup / alignlab's share of peak: the ratio alignlab would
    reach against the same TRL run if every useful FLOP of its step ran at that peak, the most this machine
    allows at these FLOPs."""
    try:
        _compare(script, args, spec, out, summarize, rate=rate, describe=describe, job=job, flops=flops, peak=peak)
    finally:  # each side saves a full checkpoint: left behind, a handful of runs fills a small disk
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)


def _compare(script: Path, args: Any, spec: dict, out: Path, summarize: Callable[[dict], dict], *, rate: str,
             describe: Callable[[dict], str], job: dict, flops: Any, peak: Any) -> None:
    sides = args.order.split(",")
    trl_python = ensure_trl_venv(Path(args.trl_venv)) if "trl" in sides else None
    machine = measure_machine(spec["model_dir"], args.threads)
    dtype = "bf16" if spec.get("bf16") else "fp32"
    rates = machine["peak_matmul"]
    peak = peak or (lambda side, machine: machine["peak_matmul"][f"{dtype}_gflops"])
    print(f"{machine['cpu_model']}, {rates['torch_threads']} torch thread(s), load {machine['load_average_1m']}: "
          f"matmul peak {rates['bf16_gflops']:,.0f} GFLOP/s bf16, {rates['fp32_gflops']:,.0f} fp32", flush=True)
    rounds: list[dict] = []
    for r in range(max(1, args.rounds)):
        results: dict = {}
        for side in sides if r % 2 == 0 else sides[::-1]:
            python = sys.executable if side == "alignlab" else str(trl_python)
            t0 = time.perf_counter()
            results[side] = summarize(run_worker(script, python, side, spec, out / f"{side}.json"))
            share = ""
            if flops is not None:
                results[side] = add_flops(results[side], *flops(results[side]), peak(side, machine))
                share = (f"  {results[side]['useful_gflops_per_second']:,.1f} useful GFLOP/s = "
                         f"{results[side]['share_of_peak']:.3f} of peak")
            label = f"{side} #{r + 1}" if args.rounds > 1 else side
            print(f"{label:9s} {describe(results[side])}{share}  ({time.perf_counter() - t0:.0f}s wall)", flush=True)
        rounds.append(results)
    line = {"job": job, "machine": machine, **rounds[-1]}
    if all("alignlab" in res and "trl" in res for res in rounds):
        ratios = [res["alignlab"][rate] / res["trl"][rate] for res in rounds]
        speedup = math.prod(ratios) ** (1 / len(ratios))
        memory_ratio = max(res["alignlab"]["peak_memory_mb"] for res in rounds) / \
            max(res["trl"]["peak_memory_mb"] for res in rounds)
        unit = rate.replace("_per_second", "/s")
        each = f" (rounds: {', '.join(f'{x:.2f}x' for x in ratios)})" if len(ratios) > 1 else ""
        print(f"speedup (alignlab / TRL {unit}): {speedup:.2f}x{each}   memory ratio (alignlab / TRL peak): "
              f"{memory_ratio:.2f}")
        line.update(speedup=round(speedup, 3), memory_ratio=round(memory_ratio, 3))
        if flops is not None:  # the last round's share, as the sides in the line
            at_peak = ratios[-1] / rounds[-1]["alignlab"]["share_of_peak"]
            print(f"at the matmul peak (every useful FLOP of alignlab's step at {peak('alignlab', machine):,.0f} GFLOP/s) "
                  f"the ratio would be {at_peak:.2f}x: the most this machine allows against this TRL run")
            line["speedup_at_peak"] = round(at_peak, 3)
        if len(rounds) > 1:
            line.update(round_speedups=[round(x, 3) for x in ratios], rounds=rounds)
    print(json.dumps(line))
