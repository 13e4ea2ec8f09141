"""`alignlab eval`: run a list of evaluations against one or more checkpoints; write eval.json + report.html.

Every result is one record `{evaluation, kind, model, metric, value, low, high, n, details}` so the
table, the JSON and the plots treat all measures alike; `details` holds each measure's full numbers
(judge replies counted by malformed kind, KL k1/k3 with standard errors, rating battles, ...).
Models are loaded once and answers generated once per (model, prompt set, sampling), then reused.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from alignlab.errors import AlignlabError
from alignlab.eval.context import EvalContext
from alignlab.eval.pairwise import JudgeConfig
from alignlab.eval.passk_eval import PassKSpec, passk_results
from alignlab.rollout.generate import SamplingConfig

__all__ = ["EvalConfig", "EvaluationSpec", "run"]

@dataclass
class EvaluationSpec:
    """One evaluation, run against every checkpoint (ratings: against all of them at once)."""

    kind: Literal["reward_accuracy", "dpo_accuracy", "win_rate", "ratings", "grade", "kl", "perplexity",
                  "mean_reward", "passk"]
    """reward_accuracy: a scorer ranks chosen above rejected; dpo_accuracy: DPO implicit reward does;
    win_rate: checkpoint vs baseline under a judge; ratings: Bradley-Terry ratings of all checkpoints (and
    the baseline) from round-robin battles; grade: mean 1-10 grade of each checkpoint's answers from an
    llm judge (MT-Bench single-answer grading); kl: KL(checkpoint || reference) from samples (k1, k3);
    perplexity: on SFT rows; mean_reward: of sampled answers under a reward function; passk: pass@k and maj@k
    of n sampled answers per problem under a verifiable reward (math, gsm8k, code), one result per metric
    labelled `<name>/pass@k`, `<name>/maj@k`."""
    data: str
    """File (or hub id) with the rows: preference pairs (accuracies), prompts (win_rate, ratings, kl,
    mean_reward), or SFT / text rows (perplexity)."""
    name: str | None = None
    """Label in the table and report; defaults to the kind."""
    format: str | None = None
    """Data format when detection is not enough (see `alignlab data inspect`)."""
    columns: dict[str, Any] | str | None = None
    """Column mapping for files in no known format, a mapping or the `prompt=COL,...` string (as for the
    training commands' `columns`)."""
    data_offset: int = 0
    """First record of the file used (0-based, counted in the file before bad records are skipped), as the
    training key of the same name: point past the records a run trained on (`alignlab eval` warns when a
    checkpoint's run trained on any scored record; it reads the split.json the run wrote)."""
    data_limit: int = 32
    """Records used from data_offset on (evaluation cost grows with it)."""
    on_bad_row: Literal["error", "skip"] = "skip"
    """A malformed record stops the evaluation (error) or is counted in the details and skipped (skip)."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """win_rate / ratings: the judge (llm over a local model or HTTP endpoint, reward_model, function)."""
    baseline: str | None = None
    """win_rate: model B (defaults to the top-level baseline)."""
    reference: str | None = None
    """kl / dpo_accuracy: the reference model (defaults to the top-level reference)."""
    scorer: str | None = None
    """reward_accuracy: scorer checkpoint; null scores with each checkpoint itself (a reward model)."""
    reward: str | None = None
    """mean_reward, passk: reward registry name (sentiment, gsm8k, math, code, format) or module.path:function."""
    reward_options: dict[str, Any] = field(default_factory=dict)
    """mean_reward, passk: options for the reward factory (e.g. timeout_s for code)."""
    beta: float = 0.1
    """dpo_accuracy: the beta the policy was trained with (scales the implicit reward, not the accuracy)."""
    samples: int = 1
    """kl: samples per prompt."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=64, seed=0))
    """How answers are sampled (win_rate, ratings, kl, mean_reward). KL estimates are unbiased only for
    temperature 1 and no top-p/top-k (samples from the policy itself)."""
    max_length: int = 512
    """Token budget per scored sequence (prompt + completion) for accuracies and perplexity."""
    passk: PassKSpec | None = None
    """passk only (null: its defaults): samples per problem (n), the k values, what counts as correct, columns."""

    def validate(self) -> None:
        if self.data_limit < 1 or self.data_offset < 0 or self.samples < 1:
            raise AlignlabError(f"evaluation {self.name or self.kind}: data_limit >= 1, data_offset >= 0, samples >= 1")
        if self.kind in ("mean_reward", "passk") and not self.reward:
            raise AlignlabError(f"evaluation {self.name or self.kind}: {self.kind} needs reward: <name>")
        if self.kind != "passk" and self.passk is not None:  # they would be ignored (the defaults' values were not refused)
            raise AlignlabError(f"evaluation {self.name or self.kind}: passk options are read by kind passk only")
        if self.kind == "grade" and self.judge.kind != "llm":
            raise AlignlabError(f"evaluation {self.name or self.kind}: grade needs an llm judge (judge.kind: llm)")


@dataclass
class EvalConfig:
    """`alignlab eval`: checkpoints, baseline / reference, and the evaluations to run."""

    checkpoints: list[str] = field(default_factory=list)
    """Models to evaluate: aliases (tiny-random, smollm2-135m-instruct), checkpoint dirs or hub ids."""
    evaluations: list[EvaluationSpec] = field(default_factory=list)
    """What to measure; see EvaluationSpec (each item is a mapping with at least kind and data)."""
    baseline: str | None = None
    """Model B for win_rate evaluations (also rated in ratings evaluations)."""
    reference: str | None = None
    """Reference model for kl and dpo_accuracy (usually the SFT model the policy started from)."""
    output_dir: str = "eval_out"
    """Where eval.json and report.html (with its PNG plots) are written."""
    device: str = "auto"
    """cpu, cuda, or auto (CUDA when present)."""
    n_boot: int = 1000
    """Bootstrap resamples for the intervals of accuracies, win rates, ratings and mean rewards (kl and passk
    report value +- 1.96 standard errors)."""
    seed: int = 0
    """Seed for the bootstrap (sampling has its own seed under each evaluation's sampling)."""
    batch_size: int = 8
    """Sequences per forward when scoring log-probs; comparisons per judge call."""
    report: bool = True
    """Write report.html and the PNG plots next to eval.json."""

    def validate(self) -> None:
        if not self.checkpoints:
            raise AlignlabError("eval: checkpoints is empty; name at least one model to evaluate")
        if not self.evaluations:
            raise AlignlabError("eval: evaluations is empty; add e.g. {kind: win_rate, data: prompts.jsonl}")
        if self.n_boot < 1 or self.batch_size < 1:
            raise AlignlabError(f"eval: n_boot and batch_size must be >= 1, got {self.n_boot} and {self.batch_size}")
        for spec in self.evaluations:
            if spec.kind == "win_rate" and not (spec.baseline or self.baseline):
                raise AlignlabError("eval: a win_rate evaluation needs a baseline (top level or in the item)")
            if spec.kind in ("kl", "dpo_accuracy") and not (spec.reference or self.reference):
                raise AlignlabError(f"eval: a {spec.kind} evaluation needs a reference (top level or in the item)")

    def rated(self, spec: EvaluationSpec) -> list[str]:
        """A ratings evaluation's models: the checkpoints and the baseline, each once."""
        return list(dict.fromkeys(self.checkpoints + [b for b in (spec.baseline or self.baseline,) if b]))


def _fields(rows: list) -> dict[str, list]:  # dataset columns rewards take, TRL's convention
    from alignlab.rollout.sampling import row_fields

    return row_fields(rows, 1)


def _record(spec: EvaluationSpec, model: str, metric: str, value: float, low: float | None = None,
            high: float | None = None, n: int | None = None, details: dict | None = None) -> dict[str, Any]:
    return {"evaluation": spec.name or spec.kind, "kind": spec.kind, "model": model, "metric": metric,
            "value": value, "low": low, "high": high, "n": n, "details": details or {}}


def _accuracy(spec: EvaluationSpec, ctx: EvalContext) -> list[dict]:
    from alignlab.eval import measures

    rows, info = ctx.rows(spec)
    out = []
    for name in ctx.cfg.checkpoints:
        if spec.kind == "reward_accuracy":
            from alignlab.rollout.rewards import get_reward

            scorer = get_reward("reward_model", path=spec.scorer or name, max_length=spec.max_length,
                                device=ctx.cfg.device, batch_size=ctx.cfg.batch_size)
            res = measures.reward_accuracy(scorer, rows, seed=ctx.cfg.seed, n_boot=ctx.cfg.n_boot)
        else:
            policy, tok = ctx.model(name)
            reference = ctx.reference(spec, name)
            res = measures.dpo_accuracy(policy, reference, tok, rows, beta=spec.beta, max_length=spec.max_length,
                                        batch_size=ctx.cfg.batch_size, seed=ctx.cfg.seed, n_boot=ctx.cfg.n_boot)
        out.append(_record(spec, name, "accuracy", res["accuracy"], res["low"], res["high"], res["n"],
                           {**res, **info}))
    return out


def _win_rate(spec: EvaluationSpec, ctx: EvalContext) -> list[dict]:
    from alignlab.eval.lc import lc_for_comparison
    from alignlab.eval.pairwise import compare_answers, comparison_examples

    rows, info = ctx.rows(spec)
    judge = ctx.judge(spec.judge)
    b = ctx.texts(baseline := spec.baseline or ctx.cfg.baseline, spec, rows)
    out = []
    for name in ctx.cfg.checkpoints:
        a = ctx.texts(name, spec, rows)
        before = judge.counters()
        res = compare_answers(judge, rows, a, b, batch_size=ctx.cfg.batch_size, n_boot=ctx.cfg.n_boot,
                              seed=ctx.cfg.seed, fields=_fields(rows))
        wr = res.win_rate
        lc = lc_for_comparison(res.outcomes, a, b, n_boot=ctx.cfg.n_boot, seed=ctx.cfg.seed)
        details = {**res.to_dict(), **info, "baseline": baseline, "judge": judge.stats(since=before),
                   "lc_win_rate": lc.to_dict() if lc else None, "examples": comparison_examples(rows, a, b, res)}
        out.append(_record(spec, name, "win_rate", wr.rate if wr else None, wr.low if wr else None,
                           wr.high if wr else None, wr.n if wr else 0, details))
    return out


def _ratings(spec: EvaluationSpec, ctx: EvalContext) -> list[dict]:
    from alignlab.eval.pairwise import round_robin
    from alignlab.eval.ratings import bradley_terry_ratings

    rows, info = ctx.rows(spec)
    judge = ctx.judge(spec.judge)
    names = ctx.cfg.rated(spec)
    answers = {name: ctx.texts(name, spec, rows) for name in names}
    before = judge.counters()
    battles, malformed = round_robin(judge, rows, answers, batch_size=ctx.cfg.batch_size, fields=_fields(rows))
    details = {**info, "battles": len(battles), "malformed": malformed, "judge": judge.stats(since=before)}
    if len({m for b in battles for m in b[:2]}) < 2:
        return [_record(spec, name, "rating", None, n=0, details=details) for name in names]
    table = bradley_terry_ratings(battles, n_boot=ctx.cfg.n_boot, seed=ctx.cfg.seed)
    rated = {r.model: r for r in table.ratings}
    return [_record(spec, name, "rating", rated[name].rating, rated[name].low, rated[name].high,
                    rated[name].battles, {**details, "score": rated[name].score}) if name in rated
            else _record(spec, name, "rating", None, n=0, details=details) for name in names]


def _grade(spec: EvaluationSpec, ctx: EvalContext) -> list[dict]:
    from collections import Counter
    from dataclasses import replace

    import numpy as np

    from alignlab.eval.winrate import bootstrap_mean_interval

    rows, info = ctx.rows(spec)
    judge = ctx.judge(replace(spec.judge, mode="single"))
    out = []
    for name in ctx.cfg.checkpoints:
        answers = ctx.texts(name, spec, rows)
        before = judge.counters()
        grades = judge.grade_batch(rows, answers)
        values = np.array([g for g, _ in grades if g is not None])
        malformed = dict(Counter(kind for _, kind in grades if kind))
        low, high = (bootstrap_mean_interval(values, n_boot=ctx.cfg.n_boot, seed=ctx.cfg.seed)
                     if values.size > 1 else (None, None))
        mean = float(values.mean()) if values.size else None
        details = {**info, "grades": [g for g, _ in grades], "malformed": malformed, "judge": judge.stats(since=before)}
        out.append(_record(spec, name, "grade", mean, low, high, int(values.size), details))
    return out


def _kl(spec: EvaluationSpec, ctx: EvalContext) -> list[dict]:
    from alignlab.eval.measures import kl_from_samples

    rows, info = ctx.rows(spec)
    out = []
    for name in ctx.cfg.checkpoints:
        policy, tok = ctx.model(name)
        reference = ctx.reference(spec, name)
        gen = ctx.generations(name, spec, rows, n=spec.samples)
        res = kl_from_samples(policy, reference, gen, batch_size=ctx.cfg.batch_size, pad_id=tok.pad_token_id or 0)
        se = res["k3_se"]  # nan with one sample: no interval
        low, high = (res["k3"] - 1.96 * se, res["k3"] + 1.96 * se) if se == se else (None, None)
        out.append(_record(spec, name, "kl_k3", res["k3"], low, high, res["n"], {**res, **info}))
    return out


def _perplexity(spec: EvaluationSpec, ctx: EvalContext) -> list[dict]:
    from alignlab.eval.measures import perplexity_on_rows

    rows, info = ctx.rows(spec)
    out = []
    for name in ctx.cfg.checkpoints:
        model, tok = ctx.model(name)
        res = perplexity_on_rows(model, tok, rows, max_length=spec.max_length, batch_size=ctx.cfg.batch_size)
        out.append(_record(spec, name, "perplexity", res["perplexity"], n=res["n"], details={**res, **info}))
    return out


def _mean_reward(spec: EvaluationSpec, ctx: EvalContext) -> list[dict]:
    from alignlab.eval.measures import mean_reward, prompt_arg
    from alignlab.rollout.rewards import get_reward

    rows, info = ctx.rows(spec)
    fn = get_reward(spec.reward, **spec.reward_options)
    out = []
    for name in ctx.cfg.checkpoints:
        res = mean_reward(fn, [prompt_arg(r) for r in rows], ctx.texts(name, spec, rows), seed=ctx.cfg.seed,
                          n_boot=ctx.cfg.n_boot, **_fields(rows))
        out.append(_record(spec, name, "mean_reward", res["mean"], res["low"], res["high"], res["n"],
                           {**res, **info, "reward": spec.reward}))
    return out


_RUNNERS = {"reward_accuracy": _accuracy, "dpo_accuracy": _accuracy, "win_rate": _win_rate, "ratings": _ratings,
            "grade": _grade, "kl": _kl, "perplexity": _perplexity, "mean_reward": _mean_reward,
            "passk": lambda spec, ctx: passk_results(spec, ctx, _fields)}


def run(cfg: EvalConfig, *, console: Any = None, models: dict[str, tuple[Any, Any]] | None = None,
        judge: Any = None) -> dict[str, Any]:
    """Run every evaluation, write `output_dir/eval.json` (+ report.html), print a table; return the payload.
    `models`: name -> in-memory (model, tokenizer) used instead of loading that name; `judge`: an in-memory
    eval.judges.Judge used by every evaluation that needs one (alignlab.evaluate)."""
    from alignlab.config import to_dict
    from alignlab.eval.pairwise import check_judge

    cfg.validate()
    for spec in cfg.evaluations:  # judges are checked before any model loads: a bad one would fail mid-run
        check_judge(spec, judge)
        if spec.kind == "ratings" and len(cfg.rated(spec)) < 2:  # as would ratings of one model
            raise AlignlabError(f"eval: a ratings evaluation needs two models or more, got {cfg.rated(spec)}")
    start = time.perf_counter()
    ctx = EvalContext(cfg, judge)
    ctx.models.update(models or {})
    ctx.check_inputs()  # every item's rows and every model name before any model loads
    results: list[dict] = []
    for i, spec in enumerate(cfg.evaluations, 1):  # one line each, terminal or not: evaluations take minutes
        print(f"eval {i}/{len(cfg.evaluations)}: {spec.name or spec.kind} ({time.perf_counter() - start:.0f}s)",
              file=sys.stderr, flush=True)
        results += _RUNNERS[spec.kind](spec, ctx)
    from alignlab.eval.leakage import leak_warnings

    warnings = leak_warnings(cfg, ctx.records)
    for line in warnings:
        print(line, file=sys.stderr, flush=True)
    payload = {"config": to_dict(cfg), "results": results, "warnings": warnings,
               "seconds": time.perf_counter() - start}
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    from alignlab.eval.report import json_text, redact, secret_values
    from alignlab.files import write_text_atomic

    write_text_atomic(out / "eval.json", redact(json_text(payload), secret_values(payload["config"])))
    if cfg.report:
        from alignlab.eval.report import write_report

        write_report(payload, out)
    from alignlab.eval.report import print_table

    print_table(results, console=console)
    return payload

