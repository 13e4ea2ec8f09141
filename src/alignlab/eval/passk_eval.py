"""The `passk` kind of `alignlab eval`: pass@k and maj@k of every checkpoint on a file of problems.

    evaluations:
      - kind: passk
        data: gsm8k/test.jsonl            # any prompt file; GSM8K's `answer` becomes the reference
        reward: math                      # math, gsm8k, code, or module.path:function
        passk: {n: 8, k: [1, 8]}
        sampling: {max_new_tokens: 256, temperature: 1.0, seed: 0}

Sampling, scoring and the estimators are eval/passk.py's `evaluate_passk` (Chen et al. 2021's unbiased
pass@k; maj@k by self-consistency voting over final answers). The reward receives the rows' reference
`answer` (when they have one) and any record columns named in `passk.fields` (e.g. `tests` for `code`), read
from the file by each row's record index. Each metric becomes one result, labelled `<name>/pass@k` and
`<name>/maj@k`, whose interval is mean +- 1.96 standard errors over problems (clipped to [0, 1]); the
details hold the whole summary (every metric and its `_se`, mean reward, samples per problem).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alignlab.errors import AlignlabError

__all__ = ["PassKSpec", "passk_results", "record_fields"]


@dataclass
class PassKSpec:
    """What a passk evaluation samples and counts."""

    n: int = 8
    """Answers sampled per problem (sampling's temperature should be > 0: pass@k needs distinct samples)."""
    k: list[int] = field(default_factory=lambda: [1, 8])
    """The k values reported, each in [1, n]."""
    threshold: float = 1.0
    """An answer is correct when its reward is >= threshold."""
    majority: bool = True
    """Also report maj@k, voting over final answers extracted as the math reward extracts them (\\boxed{},
    ####, the last number), answers the math reward calls equal ("1,000", "1000.0") counting as one; turn off
    for rewards whose answers are not final answers (code)."""
    fields: list[str] = field(default_factory=list)
    """Record columns the reward needs besides the reference `answer`, e.g. [tests] for code: each record must have
    them; the reward gets them by name with the rows' other columns."""

    def validate(self) -> None:
        if self.n < 1 or not self.k or any(not 1 <= k <= self.n for k in self.k):
            raise AlignlabError(f"passk: needs n >= 1 and every k in [1, n] (n={self.n}, k={self.k})")


def record_fields(rows: list, names: list[str], data: Any, where: str) -> dict[str, list]:
    """{column: [value of each row's record]} read from `data` by each row's record index (Origin.index);
    a record without the column is an error naming file, record and column."""
    if not names:
        return {}
    from alignlab.data.readers import read_records

    by_index = {rec.index: rec for rec in read_records(data).records}
    out: dict[str, list] = {name: [] for name in names}
    for row in rows:
        rec = by_index.get(row.origin.index) if row.origin is not None else None
        value = rec.value if rec is not None else None
        for name in names:
            if not isinstance(value, dict) or name not in value:
                got = sorted(value) if isinstance(value, dict) else type(value).__name__
                raise AlignlabError(f"{where}: {row.origin} has no column {name!r} for the reward (passk.fields); "
                                    f"it has {got}")
            out[name].append(value[name])
    return out


def _result(label: str, model: str, metric: str, summary: dict, details: dict) -> dict[str, Any]:
    value, se = summary[metric], summary[f"{metric}_se"]
    return {"evaluation": f"{label}/{metric}", "kind": "passk", "model": model, "metric": metric, "value": value,
            "low": max(0.0, value - 1.96 * se), "high": min(1.0, value + 1.96 * se), "n": int(summary["problems"]),
            "details": {"se": se, **details}}


def passk_results(spec: Any, ctx: Any, answer_fields: Callable[[list], dict]) -> list[dict]:
    """Result records of one passk EvaluationSpec for every checkpoint of the run context `ctx`
    (eval/runner.py's: its rows, models and config); `answer_fields(rows)` gives the reference column."""
    from alignlab.eval.measures import prompt_arg
    from alignlab.eval.passk import evaluate_passk
    from alignlab.rollout.rewards import get_reward
    from alignlab.rollout.verify_math import extract_final_answer, math_equal

    label, opts = spec.name or spec.kind, spec.passk or PassKSpec()  # None: the defaults
    rows, info = ctx.rows(spec)
    fields = {**answer_fields(rows), **record_fields(rows, opts.fields, spec.data, f"evaluation {label}")}
    reward_fn = get_reward(spec.reward, **spec.reward_options)
    metrics = [f"pass@{k}" for k in opts.k] + ([f"maj@{k}" for k in opts.k] if opts.majority else [])
    out = []
    for name in ctx.cfg.checkpoints:
        model, tok = ctx.model(name)
        summary = evaluate_passk(model, tok, rows, fields, reward_fn, n=opts.n, ks=opts.k,
                                 sampling=spec.sampling, threshold=opts.threshold,
                                 extract=extract_final_answer if opts.majority else None,
                                 same_answer=math_equal,
                                 reward_prompts=[prompt_arg(r) for r in rows])
        details = {**summary, **info, "reward": spec.reward}
        out += [_result(label, name, metric, summary, details) for metric in metrics]
    return out
