"""The report of a training run: `run_dir/report.html`, one static page viewable offline.

Every numeric metric in `metrics.jsonl` is plotted against the optimizer step, its training and held-out
(`eval_` prefixed) values on the same axes, the recipe's key curves first (DPO: rewards/margins and
rewards/accuracies; RL: reward_mean and kl*; SFT: loss and perplexity), then the rest by name. The page
also shows the resolved config (config.yaml) and the timing (train_runtime, steps, mean throughput). Plots
are PNGs embedded as base64 data URIs, so the page needs no other file and no network. Several runs passed
together (`alignlab report RUN_DIR RUN_DIR --out FILE`) are overlaid on the same axes, one colour per run.
"""

from __future__ import annotations

import base64
import html
import json
import math
import tempfile
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

__all__ = ["RunLog", "metric_order", "read_run", "render_run_report", "write_run_report"]

# Base metric names (without "eval_") shown first, in this order; a pattern may use shell wildcards.
KEY_CURVES: tuple[str, ...] = (
    "rewards/margins", "rewards/accuracies",  # DPO family
    "reward_mean", "kl*",  # online RL
    "loss", "perplexity",  # SFT (and every loss-driven recipe)
)
# Written by the loop at the end, not a curve: shown under timing.
_FINAL_KEYS = ("train_runtime",)


@dataclass
class RunLog:
    """What a run directory holds for the report."""

    name: str
    """Label of the run in legends and headings (the directory name)."""
    path: Path
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    """Metric name as logged (e.g. `loss`, `eval_loss`) -> [(step, value)] in file order."""
    final: dict[str, Any] = field(default_factory=dict)
    """The loop's closing row (train_runtime) when the run finished."""
    config: str = ""
    """config.yaml as written by the run, or empty."""


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None  # strings such as "nan" are how metrics.jsonl keeps non-finite values; not plottable
    return float(v) if math.isfinite(v) else None


def read_run(run_dir: str | Path) -> RunLog:
    """Parse `run_dir/metrics.jsonl` (required) and `run_dir/config.yaml` (optional)."""
    from alignlab.errors import AlignlabError

    path = Path(run_dir)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise AlignlabError(f"{path}: no metrics.jsonl (is this a training output_dir?)")
    run = RunLog(path.resolve().name or str(path), path)
    for n, line in enumerate(metrics.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise AlignlabError(f"{metrics}:{n}: not a JSON object ({e.msg})") from None
        if not isinstance(row, dict):
            raise AlignlabError(f"{metrics}:{n}: expected a JSON object, got {type(row).__name__}")
        if any(k in row for k in _FINAL_KEYS):
            run.final.update(row)
            continue
        step = row.get("step")
        if not isinstance(step, int):
            continue
        for key, value in row.items():
            v = _number(value)
            if key != "step" and v is not None:
                run.series.setdefault(key, []).append((step, v))
    config = path / "config.yaml"
    run.config = config.read_text(encoding="utf-8") if config.is_file() else ""
    return run


def _base(name: str) -> str:
    return name.removeprefix("eval_")


def metric_order(names: set[str] | list[str]) -> list[str]:
    """Base metric names (train and eval merged): key curves in KEY_CURVES order, then the rest sorted."""
    bases = sorted({_base(n) for n in names})
    first: list[str] = []
    for pattern in KEY_CURVES:
        first += [b for b in bases if b not in first and (fnmatch(b, pattern) or b.endswith("_" + pattern))]
    return first + [b for b in bases if b not in first]


def _plot(base: str, runs: list[RunLog], path: Path) -> Path:
    """One PNG: each run's train series (solid) and eval series (dashed, dots) of one metric."""
    from alignlab.eval.report import png_figure

    # Fixed margins instead of tight_layout: a run has ~20 metrics and the report is written after every run.
    with png_figure(path, (5.0, 2.8), dpi=80, tight=False) as (fig, ax):
        fig.subplots_adjust(left=0.13, right=0.97, top=0.89, bottom=0.17)
        colours = [f"C{i % 10}" for i in range(len(runs))]
        for run, colour in zip(runs, colours):
            for key, style in ((base, "-"), ("eval_" + base, "--o")):
                points = run.series.get(key)
                if not points:
                    continue
                label = ("eval " if key != base else "train ") + (run.name if len(runs) > 1 else "")
                ax.plot([p[0] for p in points], [p[1] for p in points], style, color=colour,
                        markersize=3, linewidth=1.4, label=label.strip())
        ax.set_xlabel("step")
        ax.set_title(base)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return path


def _e(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return html.escape(str(x), quote=True)


def _timing(run: RunLog) -> str:
    steps = max((s for pts in run.series.values() for s, _ in pts), default=0)
    cells = [("steps logged up to", steps), ("train_runtime (s)", run.final.get("train_runtime", "unfinished"))]
    for key in ("tokens_per_second", "pairs_per_second", "samples_per_second", "peak_memory_mb"):
        values = [v for _, v in run.series.get(key, [])]
        if values:
            label = "peak_memory_mb (max)" if key == "peak_memory_mb" else f"{key} (mean)"
            cells.append((label, max(values) if key == "peak_memory_mb" else sum(values) / len(values)))
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in cells)
    return f"<table>{rows}</table>"


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
pre{background:#f6f6f6;padding:8px;white-space:pre-wrap;max-height:30em;overflow:auto}
.plots{display:flex;flex-wrap:wrap;gap:8px}.plots img{width:400px}"""


def render_run_report(runs: list[RunLog], images: dict[str, bytes]) -> str:
    """The page: plots (base metric -> PNG bytes, in `images` order), then timing and config per run."""
    title = "alignlab run: " + ", ".join(r.name for r in runs)
    plots = "".join(
        f'<figure><img alt="{_e(base)}" title="{_e(base)}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}"></figure>'
        for base, png in images.items())
    per_run = "".join(
        f"<h2>{_e(r.name)}</h2><p>{_e(r.path)}</p><h3>timing</h3>{_timing(r)}"
        f"<details{' open' if len(runs) == 1 else ''}><summary>config.yaml</summary>"
        f"<pre>{_e(r.config or '(no config.yaml)')}</pre></details>"
        for r in runs)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1>"
            f"<p>{len(images)} metrics against optimizer step; train solid, eval dashed.</p>"
            f"<div class='plots'>{plots}</div>{per_run}</body></html>")


def write_run_report(run_dir: str | Path, *others: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of `run_dir` (overlaid with `others`, if any) to `out`, default run_dir/report.html.

    Returns the HTML path. The file is written to a temporary name and renamed, so a reader never sees half.
    """
    runs = [read_run(d) for d in (run_dir, *others)]
    names = {k for r in runs for k in r.series}
    images: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="alignlab-report-") as tmp:
        for i, base in enumerate(metric_order(names)):
            images[base] = _plot(base, runs, Path(tmp) / f"{i}.png").read_bytes()
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    from alignlab.files import write_text_atomic

    return write_text_atomic(path, render_run_report(runs, images))
