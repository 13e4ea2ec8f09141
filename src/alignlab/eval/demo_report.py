"""The demo's outputs: results.json, plots/training.png, a self-contained report.html, a rich summary table.

Text from models is escaped everywhere (completions are untrusted output); the plot is embedded as a data
URI so report.html can be moved or mailed alone.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from alignlab.eval.report import png_figure


def results_dict(cfg: Any, cmp: dict[str, Any], result: Any, seconds: float) -> dict[str, Any]:
    """The numbers of the run (results.json): rewards, win rate with its interval, KL, training curve."""
    base, trained, wr = cmp["base"], cmp["trained"], cmp["win_rate"]
    return {
        "model": cfg.model,
        "base": {"mean_reward": base.reward, "reward_se": base.reward_se, "n": len(base.rewards),
                 "rewards": base.rewards},
        "trained": {"mean_reward": trained.reward, "reward_se": trained.reward_se, "n": len(trained.rewards),
                    "kl_k1": trained.kl.k1, "kl_k1_se": trained.kl.k1_se, "kl_k3": trained.kl.k3,
                    "kl_k3_se": trained.kl.k3_se, "rewards": trained.rewards},
        "win_rate": wr.to_dict(),
        "lc_win_rate": cmp["lc_win_rate"].to_dict() if cmp.get("lc_win_rate") else None,
        "train": {"steps": result.step, "seconds": result.train_runtime,
                  "evals": [{k: v for k, v in e.items() if k in ("step", "eval_reward", "eval_kl", "eval_kl_k1")}
                            for e in result.evals]},
        "seconds": seconds,
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
    }


def plot_training(evals: list[dict], path: Path) -> Path:
    """Held-out mean reward and KL to the base over training steps, two y axes."""
    steps = [e["step"] for e in evals]
    with png_figure(path, (6.4, 3.4)) as (fig, ax):
        ax.plot(steps, [e["eval_reward"] for e in evals], "o-", color="#2a7", label="mean reward (VADER)")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("mean reward", color="#2a7")
        ax2 = ax.twinx()
        ax2.plot(steps, [e["eval_kl"] for e in evals], "s--", color="#c44", label="KL to base (k3, nats)")
        ax2.set_ylabel("KL(policy || base), nats", color="#c44")
        ax.set_title("held-out progress prompts during DPO")
    return path


def _examples(cmp: dict[str, Any], k: int = 6) -> str:
    base, trained, prompts = cmp["base"], cmp["trained"], cmp["prompts"]
    rows = []
    for i in range(min(k, len(prompts))):
        rows.append(f"<tr><td>{html.escape(prompts[i])}</td>"
                    f"<td>{html.escape(base.texts[i])}<br><small>reward {base.rewards[i]:+.3f}</small></td>"
                    f"<td>{html.escape(trained.texts[i])}<br><small>reward {trained.rewards[i]:+.3f}</small></td></tr>")
    return ("<table><tr><th>prompt</th><th>base model</th><th>after DPO</th></tr>" + "".join(rows) + "</table>")


_STYLE = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;
vertical-align:top}img{max-width:100%}pre{background:#f6f6f6;padding:8px;white-space:pre-wrap}"""


def _numbers(r: dict[str, Any]) -> str:
    b, t, w = r["base"], r["trained"], r["win_rate"]
    rows = [
        ("mean reward, base", f"{b['mean_reward']:.3f} &plusmn; {b['reward_se']:.3f} (n={b['n']})"),
        ("mean reward, after DPO", f"{t['mean_reward']:.3f} &plusmn; {t['reward_se']:.3f} (n={t['n']})"),
        ("win rate of trained over base (reward judge)",
         f"{w['rate']:.3f}, {int(w['confidence'] * 100)}% bootstrap interval [{w['low']:.3f}, {w['high']:.3f}] "
         f"({w['wins']} wins, {w['ties']} ties, {w['losses']} losses)"),
        *([("length-controlled win rate (AlpacaEval 2 GLM)",
            f"{lc['rate']:.3f} [{lc['low']:.3f}, {lc['high']:.3f}]; mean length difference "
            f"{lc['mean_length_diff']:+.1f} characters, phi {lc['phi']:.2f}")] if (lc := r.get("lc_win_rate")) else []),
        ("KL(trained || base), k3", f"{t['kl_k3']:.3f} &plusmn; {t['kl_k3_se']:.3f} nats per completion"),
        ("KL(trained || base), k1", f"{t['kl_k1']:.3f} &plusmn; {t['kl_k1_se']:.3f} nats per completion"),
        ("training", f"{r['train']['steps']} steps in {r['train']['seconds']:.0f} s; whole demo {r['seconds']:.0f} s"),
    ]
    return "<table>" + "".join(f"<tr><th>{a}</th><td>{b}</td></tr>" for a, b in rows) + "</table>"


def write_report(cfg: Any, results: dict[str, Any], cmp: dict[str, Any], evals: list[dict], credits: list,
                 out: Path) -> Path:
    """results.json, plots/training.png and report.html in `out`; returns the report's path."""
    from alignlab.eval.credit import render_html

    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    png = plot_training(evals, out / "plots" / "training.png").read_bytes()
    credit_prompts = [cmp["prompts"][i] for i in range(len(credits))]
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>alignlab demo</title><style>{_STYLE}</style>"
        f"</head><body><h1>alignlab demo: DPO on controlled sentiment generation</h1>"
        f"<p>{html.escape(cfg.model)} continues openings of movie reviews; the reward is VADER's compound "
        f"sentiment in [-1, 1]. Preference pairs are the best and worst of {cfg.samples_per_prompt} base-model "
        f"samples per prompt; LoRA-DPO (beta {cfg.beta}) trains on them with the base model (adapter off) as "
        f"reference. Numbers below are on {cfg.eval_prompts} held-out prompts x {cfg.eval_samples} samples.</p>"
        f"{_numbers(results)}<h2>Reward and KL over training</h2>"
        f"<img alt='training curve' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        f"<h2>Completions before and after</h2>{_examples(cmp)}"
        f"<h2>Per-token implicit reward</h2><p>beta * log pi(token) / pi_ref(token) of completions of the trained "
        f"policy (Rafailov et al. 2024, 'From r to Q*'); the tokens of a row sum to its DPO implicit reward.</p>"
        f"{render_html(credits, credit_prompts)}"
        f"<h2>config</h2><pre>{html.escape(json.dumps(results['config'], indent=1))}</pre></body></html>"
    )
    from alignlab.files import write_text_atomic

    return write_text_atomic(out / "report.html", page)


def print_summary(results: dict[str, Any], path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    b, t, w = results["base"], results["trained"], results["win_rate"]
    table = Table(title="alignlab demo: held-out prompts")
    for col in ("", "base", "after DPO"):
        table.add_column(col)
    table.add_row("mean reward", f"{b['mean_reward']:.3f}", f"{t['mean_reward']:.3f}")
    table.add_row("win rate vs base", "", f"{w['rate']:.3f} [{w['low']:.3f}, {w['high']:.3f}]")
    if lc := results.get("lc_win_rate"):
        table.add_row("length-controlled win rate", "", f"{lc['rate']:.3f} [{lc['low']:.3f}, {lc['high']:.3f}]")
    table.add_row("KL to base (k3 / k1)", "0", f"{t['kl_k3']:.2f} / {t['kl_k1']:.2f} nats")
    table.add_row("wall time", "", f"{results['seconds']:.0f} s")
    console = Console()
    console.print(table)
    console.print(f"report: {path.resolve()}")
