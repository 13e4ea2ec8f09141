"""The HTML report of an `alignlab eval` run: one self-contained file plus the PNG plots it shows.

Plots are drawn with matplotlib's Agg backend (no display needed), saved under `plots/` and also embedded
in the page as base64 data URIs, so report.html can be mailed or archived alone. Every piece of text
that came from data, models or judges is HTML-escaped (a model's answer is untrusted input). Values of
the environment variables a config names as API-key holders (`api_key_env`) are redacted from anything
written, in case an endpoint echoed one back in a reply.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["plot_checkpoints", "plot_evaluation", "redact", "render_html", "secret_values", "write_report"]


def secret_values(config: Any) -> list[str]:
    """Values of every environment variable named by an `api_key_env` key anywhere in a config mapping."""
    names: list[str] = []

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                if k == "api_key_env" and isinstance(v, str):
                    names.append(v)
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(config)
    return [os.environ[n] for n in names if os.environ.get(n)]


def json_text(payload: Any) -> str:
    """eval.json's text: NaN and infinities (a standard error of one sample) as null, so strict parsers read it."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return [clean(x) for x in v] if isinstance(v, (list, tuple)) else v

    return json.dumps(clean(payload), indent=2, default=str)


def redact(text: str, secrets: Iterable[str]) -> str:
    for s in secrets:
        if len(s) >= 4:  # a 1-3 character "key" would blank out ordinary text
            text = text.replace(s, "[redacted]")
    return text


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:60] or "evaluation"


@contextmanager
def png_figure(path: Path, figsize: tuple[float, float], dpi: int = 100, tight: bool = True) -> Iterator[tuple[Any, Any]]:
    """(fig, ax) on matplotlib's Agg backend (no display); saved to `path` as PNG when the block succeeds,
    closed either way (pyplot keeps every open figure alive otherwise). tight=False skips tight_layout
    (~40% of a small plot's time) for callers that set fixed margins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    try:
        yield fig, ax
        if tight:
            fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def plot_evaluation(name: str, records: list[dict], path: Path) -> Path:
    """One PNG: each model's headline value as a point with its interval as whiskers."""
    rows = [r for r in records if r.get("value") is not None]
    with png_figure(path, (6.4, 1.6 + 0.45 * max(len(rows), 1))) as (fig, ax):
        labels = [str(r["model"]) + (" (LC)" if r.get("metric") == "lc_win_rate" else "") for r in rows]
        values = [float(r["value"]) for r in rows]
        lows = [max(v - float(r["low"]), 0.0) if r.get("low") is not None else 0.0 for v, r in zip(values, rows)]
        highs = [max(float(r["high"]) - v, 0.0) if r.get("high") is not None else 0.0 for v, r in zip(values, rows)]
        # Points with interval whiskers, not bars: ratings sit near 1000 and perplexities far from 0.
        ax.errorbar(values, range(len(rows)), xerr=[lows, highs], fmt="o", color="#4c72b0", capsize=4)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_yticks(range(len(rows)), labels)
        ax.invert_yaxis()
        metric = records[0].get("metric", "value") if records else "value"
        ax.set_xlabel(metric)
        if metric == "win_rate":
            ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_title(name)
    return path


def plot_checkpoints(results: list[dict], path: Path) -> Path | None:
    """One PNG with a panel per evaluation: every checkpoint's value (interval as whiskers) in the order the
    config lists them, joined by a line, so a run's checkpoints read as a trend side by side. None when no
    evaluation has a value."""
    names = [n for n in dict.fromkeys(r["evaluation"] for r in results)
             if any(r.get("value") is not None for r in results if r["evaluation"] == n)]
    if not names:
        return None
    models = list(dict.fromkeys(str(r["model"]) for r in results))
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    with png_figure(path, (4.2 * cols, 0.8 + 2.6 * rows)) as (fig, _):
        fig.clear()
        for k, name in enumerate(names):
            ax = fig.add_subplot(rows, cols, k + 1)
            recs = {str(r["model"]): r for r in results if r["evaluation"] == name and r.get("value") is not None}
            xs = [i for i, m in enumerate(models) if m in recs]
            vals = [float(recs[models[i]]["value"]) for i in xs]
            lo = [v - float(recs[models[i]]["low"]) if recs[models[i]].get("low") is not None else 0.0
                  for v, i in zip(vals, xs)]
            hi = [float(recs[models[i]]["high"]) - v if recs[models[i]].get("high") is not None else 0.0
                  for v, i in zip(vals, xs)]
            ax.errorbar(xs, vals, yerr=[[max(x, 0.0) for x in lo], [max(x, 0.0) for x in hi]], fmt="o-",
                        color="#4c72b0", capsize=3)
            ax.set_xticks(range(len(models)), [m if len(m) <= 18 else "..." + m[-15:] for m in models],
                          rotation=20, fontsize=7)
            ax.set_xlim(-0.5, len(models) - 0.5)
            ax.set_title(f"{name}: {next(iter(recs.values()))['metric']}", fontsize=9)
    return path


def _e(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return html.escape("-" if x is None else str(x), quote=True)


def _table(records: list[dict]) -> str:
    head = "".join(f"<th>{c}</th>" for c in ("evaluation", "model", "metric", "value", "interval", "n"))
    body = []
    from alignlab.eval.lc import with_lc_rows

    for r in with_lc_rows(records):  # the length-controlled win rate beside each raw one
        interval = f"[{_e(r.get('low'))}, {_e(r.get('high'))}]" if r.get("low") is not None else "-"
        body.append("<tr>" + "".join(f"<td>{v}</td>" for v in (
            _e(r["evaluation"]), _e(r["model"]), _e(r["metric"]), _e(r["value"]), interval, _e(r.get("n")))) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _details(r: dict) -> str:
    """A model's judged examples as a visible table, then its raw details (collapsed)."""
    d = dict(r.get("details", {}))
    examples = d.pop("examples", [])
    d.pop("outcomes", None)
    parts = [f"<h4>{_e(r['model'])}</h4>"]
    if examples:
        head = "".join(f"<th>{c}</th>" for c in ("#", "prompt", f"answer A ({_e(r['model'])})",
                                                 f"answer B ({_e(d.get('baseline'))})", "outcome", "judge"))
        body = "".join(
            f"<tr><td>{k + 1}</td><td><pre>{_e(ex.get('prompt'))}</pre></td><td><pre>{_e(ex.get('answer_a'))}</pre>"
            f"</td><td><pre>{_e(ex.get('answer_b'))}</pre></td><td>{_outcome(ex.get('outcome'))}</td>"
            f"<td><pre>{html.escape(_verdict(ex.get('judge')))}</pre></td></tr>"
            for k, ex in enumerate(examples))
        parts.append(f"<p>Judged examples (outcome for A: 1 win, 0.5 tie, 0 loss)</p>"
                     f"<table class='examples'><tr>{head}</tr>{body}</table>")
    parts.append(f"<details><summary>all details</summary><pre>{html.escape(json.dumps(d, indent=1, default=str))}"
                 "</pre></details>")
    return "".join(parts)


def _outcome(x: Any) -> str:
    names = {1.0: "A wins", 0.5: "tie", 0.0: "B wins"}
    return _e(names.get(x, x) if isinstance(x, (int, float)) else x)


def _verdict(judge: Any) -> str:
    """The judge's raw replies, one per order, shortened: what it said, not a JSON dump."""
    if isinstance(judge, dict):
        text = "\n".join(f"{k}: {v}" for k, v in judge.items())
    else:
        text = "" if judge is None else str(judge)
    return text if len(text) <= 600 else text[:600] + " ..."


_STYLE = """body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
pre{background:#f6f6f6;padding:8px;white-space:pre-wrap;word-break:break-word;max-height:24em;overflow:auto}
img{max-width:100%}table.examples td{vertical-align:top;max-width:20em}
table.examples pre{max-height:12em;margin:0}"""


def _img(name: str, png: bytes | None) -> str:
    return f'<img alt="{_e(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">' if png else ""


def render_html(payload: dict, images: dict[str, bytes], overview: bytes | None = None) -> str:
    """The report page; `images` maps evaluation name -> PNG bytes, `overview` is the all-checkpoints plot
    (both embedded as data URIs)."""
    results = payload.get("results", [])
    sections = [f"<h2>all checkpoints</h2>{_img('all checkpoints', overview)}"] if overview else []
    for name in dict.fromkeys(r["evaluation"] for r in results):
        recs = [r for r in results if r["evaluation"] == name]
        tag = _img(name, images.get(name))
        sections.append(f"<h2>{_e(name)} ({_e(recs[0]['kind'])})</h2>{tag}{''.join(_details(r) for r in recs)}")
    config = html.escape(json.dumps(payload.get("config", {}), indent=1, default=str))
    seconds = payload.get("seconds")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>alignlab eval</title>"
            f"<style>{_STYLE}</style></head><body><h1>alignlab eval</h1>"
            f"<p>{len(results)} results in {_e(seconds)} s.</p>{_table(results)}{''.join(sections)}"
            f"<h2>config</h2><pre>{config}</pre></body></html>")


def write_report(payload: dict, out_dir: str | Path) -> Path:
    """Write `out_dir/plots/<evaluation>.png` and `out_dir/report.html`; returns the HTML path."""
    out = Path(out_dir)
    images: dict[str, bytes] = {}
    results = payload.get("results", [])
    for name in dict.fromkeys(r["evaluation"] for r in results):
        recs = [r for r in results if r["evaluation"] == name]
        if any(r.get("value") is not None for r in recs):
            from alignlab.eval.lc import with_lc_rows

            images[name] = plot_evaluation(name, with_lc_rows(recs), out / "plots" / f"{_slug(name)}.png").read_bytes()
    overview = plot_checkpoints(results, out / "plots" / "all_checkpoints.png")
    page = redact(render_html(payload, images, overview.read_bytes() if overview else None),
                  secret_values(payload.get("config", {})))
    from alignlab.files import write_text_atomic

    return write_text_atomic(out / "report.html", page)


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def print_table(results: list[dict], console: Any = None) -> None:
    """The results as a rich table: evaluation, model, metric, value, interval, n, undecided judge replies."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="alignlab eval")
    for col in ("evaluation", "model", "metric", "value", "interval", "n", "malformed"):
        # fold, not ellipsis: a truncated checkpoint path or evaluation name would be useless
        table.add_column(col, justify="right" if col in ("value", "n", "malformed") else "left", overflow="fold")
    from alignlab.eval.lc import with_lc_rows

    for r in with_lc_rows(results):  # the length-controlled win rate beside each raw one
        interval = f"[{_fmt(r['low'])}, {_fmt(r['high'])}]" if r["low"] is not None else "-"
        bad = r["details"].get("malformed")
        table.add_row(r["evaluation"], r["model"], r["metric"], _fmt(r["value"]), interval, _fmt(r["n"]),
                      _fmt(sum(bad.values())) if isinstance(bad, dict) else "-")
    (console or Console()).print(table)
