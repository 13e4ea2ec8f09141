"""What the peer benchmarks share: TRL in its own virtual environment, and one worker process per side.

Each side runs in its own process so its peak RSS is its own; TRL never becomes a dependency of alignlab.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ensure_trl_venv(venv: Path) -> Path:
    """A venv holding TRL with the same torch release as ours (created once, reused after)."""
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import trl"], capture_output=True).returncode == 0:
        return python
    import torch

    torch_version = torch.__version__.split("+")[0]
    print(f"creating {venv} with torch=={torch_version} and trl (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"torch=={torch_version}", "trl"], check=True)
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


def add_shared_args(p: Any) -> None:
    """The flags both benchmarks take: thread count, precision, the TRL venv, side order, worker plumbing."""
    p.add_argument("--threads", type=int, default=0, help="torch threads on both sides (0: torch default)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (fp32 weights and optimizer)")
    p.add_argument("--trl-venv", default="/tmp/alignlab-bench-trl")
    p.add_argument("--order", default="alignlab,trl", help="which side runs first")
    p.add_argument("--worker", choices=["alignlab", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)


def run_as_worker(args: Any, workers: dict[str, Callable[[dict], dict]]) -> bool:
    """Inside a worker process: run this side on the spec, print its JSON result, return True."""
    if not args.worker:
        return False
    print(json.dumps(workers[args.worker](json.loads(Path(args.spec).read_text()))))
    return True


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


def compare(script: Path, args: Any, spec: dict, out: Path, summarize: Callable[[dict], dict], *, rate: str,
            describe: Callable[[dict], str], job: dict) -> None:
    """Run both sides (alignlab here, TRL in its venv), print a line each, the ratios, and the JSON last line."""
    trl_python = ensure_trl_venv(Path(args.trl_venv))
    results = {}
    for side in args.order.split(","):
        python = sys.executable if side == "alignlab" else str(trl_python)
        t0 = time.perf_counter()
        results[side] = summarize(run_worker(script, python, side, spec, out / f"{side}.json"))
        print(f"{side:9s} {describe(results[side])}  ({time.perf_counter() - t0:.0f}s wall)", flush=True)
    speedup = results["alignlab"][rate] / results["trl"][rate]
    memory_ratio = results["alignlab"]["peak_memory_mb"] / results["trl"]["peak_memory_mb"]
    unit = rate.replace("_per_second", "/s")
    print(f"speedup (alignlab / TRL {unit}): {speedup:.2f}x   memory ratio (alignlab / TRL peak): {memory_ratio:.2f}")
    print(json.dumps({"job": job, "alignlab": results["alignlab"], "trl": results["trl"],
                      "speedup": round(speedup, 3), "memory_ratio": round(memory_ratio, 3)}))
