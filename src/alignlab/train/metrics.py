"""Where numbers go: output_dir/metrics.jsonl, TensorBoard (when installed) and a progress display.

metrics.jsonl has one JSON object per logged step (step, loss, learning_rate, grad_norm,
tokens_per_second, peak_memory_mb and the step function's own metrics) and a final object with
train_runtime. Only rank 0 creates a `MetricsLogger` that writes; other ranks get a silent one.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

from alignlab.files import write_text_atomic


def peak_memory_mb(device: str = "cpu") -> float:
    """Peak accelerator memory allocated (CUDA) or the process's peak resident set size (CPU), in MiB."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def _clean(value: Any) -> Any:
    """JSON-safe numbers: tensors become floats, NaN/inf become strings instead of invalid JSON."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


# What a console line shows when the row has it: the loss, then RL's reward, KL (named by estimator), response
# length and clip fraction; throughput last.
HEADLINE_KEYS = ("loss", "reward_mean", "kl_k1", "kl_k2", "kl_k3", "response_length", "clip_frac")


def headline(row: dict[str, Any]) -> str:
    parts = [f"{k} {row[k]:.4f}" if k == "loss" else f"{k} {row[k]:.4g}"
             for k in HEADLINE_KEYS if isinstance(row.get(k), (int, float))]
    tps = row.get("tokens_per_second")
    if parts and isinstance(tps, (int, float)):
        parts.append(f"{tps:,.0f} tok/s")
    return "  ".join(parts)


class _Progress:
    """A rich bar (loss, tokens/s, ETA) on a terminal, or one plain line per logged step."""

    def __init__(self, mode: str, total: int, start_step: int):
        if mode == "auto":
            mode = "rich" if sys.stderr.isatty() else "plain"
        self.mode, self.total, self.bar, self.task = mode, total, None, None
        self.t0, self.s0 = time.perf_counter(), start_step
        if mode == "rich":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, completed=start_step, info="")

    def update(self, step: int, row: dict[str, Any]) -> None:
        info = headline(row)
        evals = "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k.startswith("eval") and isinstance(v, float))
        if self.bar is not None:
            self.bar.update(self.task, completed=step, **({"info": info} if info else {}))
            if evals:
                self.bar.console.print(f"step {step}: {evals}")
        elif self.mode == "plain":
            done = step - self.s0
            eta = (time.perf_counter() - self.t0) / max(done, 1) * (self.total - step)
            print(f"step {step}/{self.total}  {info}  eta {eta:.0f}s  {evals}".rstrip(), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class MetricsLogger:
    """Append-only metrics.jsonl + optional TensorBoard + progress; a no-op when `enabled` is False."""

    def __init__(self, output_dir: str | Path, *, enabled: bool = True, total_steps: int = 0,
                 start_step: int = 0, progress: str = "auto", tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.tb = None
        self.progress = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if start_step == 0:
            _set_aside(self.path)
        else:
            _truncate_after(self.path, start_step)
        self.file = open(self.path, "a", encoding="utf-8")  # append: a resumed run continues the file
        try:
            from torch.utils.tensorboard import SummaryWriter

            # tensorboard=False: the loop writes TensorBoard only when report_to asks (train.callbacks).
            self.tb = SummaryWriter(str(Path(output_dir) / "tensorboard")) if tensorboard else None
        except ImportError:  # tensorboard is optional
            self.tb = None
        if progress != "none":
            self.progress = _Progress(progress, total_steps, start_step)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
        if self.progress is not None:
            self.progress.update(step, row)

    def close(self, final: dict[str, Any] | None = None) -> None:
        if not self.enabled:
            return
        if final is not None:
            self.file.write(json.dumps({k: _clean(v) for k, v in final.items()}) + "\n")
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.progress is not None:
            self.progress.close()


def _set_aside(path: Path) -> None:
    """A fresh run (step 0) into a directory holding an earlier run's metrics.jsonl renames that file to
    metrics.N.jsonl instead of appending to it: two runs' rows in one file would read as one run."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    n = 1
    while (old := path.with_name(f"metrics.{n}.jsonl")).exists():
        n += 1
    path.rename(old)
    print(f"{path} held an earlier run's metrics; kept as {old.name}", flush=True)


def _truncate_after(path: Path, step: int) -> None:
    """A run resumed from checkpoint `step` redoes the steps after it: keep only rows with step <= `step`
    so each step is in metrics.jsonl once, and move the dropped rows (the killed run's tail, or a finished
    run's closing row when it is extended) to metrics.dropped-after-<step>[.N].jsonl. The rewrite is atomic."""
    if not path.is_file():
        return
    keep, dropped = [], []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            # a closing row (train_runtime) ended a run that this one now extends: it is no longer the end
            row_step = step + 1 if "train_runtime" in row else row.get("step", 0)
        except json.JSONDecodeError:  # a line cut by the kill: it belongs to the redone tail
            row_step = step + 1
        (keep if isinstance(row_step, (int, float)) and row_step <= step else dropped).append(
            line if line.endswith("\n") else line + "\n")
    if not dropped:
        return
    side, n = path.with_name(f"metrics.dropped-after-{step}.jsonl"), 1
    while side.exists():
        side, n = path.with_name(f"metrics.dropped-after-{step}.{n}.jsonl"), n + 1
    side.write_text("".join(dropped), encoding="utf-8")
    write_text_atomic(path, "".join(keep))
    print(f"{path}: resuming at step {step}; {len(dropped)} later rows moved to {side.name}", flush=True)


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    """All rows of output_dir/metrics.jsonl (tests and reports use this)."""
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
