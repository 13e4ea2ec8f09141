"""What the evaluations of one `alignlab eval` run share: loaded models, generated answers, each item's rows."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from alignlab.errors import AlignlabError

if TYPE_CHECKING:
    from alignlab.eval.runner import EvalConfig, EvaluationSpec

# the rows each kind of evaluation reads (data.sources tasks)
TASKS = {"reward_accuracy": "preference", "dpo_accuracy": "preference", "win_rate": "prompt", "ratings": "prompt",
         "grade": "prompt", "kl": "prompt", "perplexity": "sft", "mean_reward": "prompt", "passk": "prompt"}


class EvalContext:
    """Loaded models and generated answers shared by every evaluation of one run."""

    def __init__(self, cfg: EvalConfig, judge: Any = None):
        self.cfg, self.judge_object = cfg, judge
        self.models: dict[str, tuple[Any, Any]] = {}
        self.answers: dict[tuple, Any] = {}
        self.records: dict[int, list[int]] = {}  # id(spec) -> record ids of the rows it scores
        self.loaded: dict[int, tuple[list, dict]] = {}  # id(spec) -> its rows and their counts

    def judge(self, spec_judge: Any) -> Any:
        """The run's judge: the in-memory Judge the Python API was given, else the one the spec configures."""
        from alignlab.eval.pairwise import build_judge

        return self.judge_object if self.judge_object is not None else build_judge(spec_judge, device=self.cfg.device)

    def model(self, name: str) -> tuple[Any, Any]:
        if name not in self.models:
            from alignlab.models.load import load_model, load_tokenizer

            self.models[name] = (load_model(name, device=self.cfg.device).eval(), load_tokenizer(name))
        return self.models[name]

    def reference(self, spec: EvaluationSpec, policy: str) -> Any:
        """The evaluation's reference model, checked to read the policy's token ids as the same tokens."""
        from alignlab.eval.measures import check_same_vocabulary

        name = spec.reference or self.cfg.reference
        return check_same_vocabulary(self.model(policy), self.model(name), policy, name)

    def generations(self, name: str, spec: EvaluationSpec, rows: list, n: int = 1) -> Any:
        # keyed on the prompts themselves: two evaluations of one file may read different columns or formats
        key = (name, hashlib.sha256(repr(rows).encode()).hexdigest(), repr(spec.sampling), n)
        if key not in self.answers:
            from alignlab.rollout.generate import generate

            model, tok = self.model(name)
            self.answers[key] = generate(model, tok, rows, spec.sampling, n=n)
        return self.answers[key]

    def texts(self, name: str, spec: EvaluationSpec, rows: list) -> list[str]:
        return [s.text for s in self.generations(name, spec, rows).samples]

    def check_inputs(self) -> None:
        """Every evaluation's rows and every model it names, before any model loads: a bad column mapping or a
        misspelt checkpoint failed only when its turn came, after the evaluations before it had run (and eval.json
        is written at the end)."""
        from alignlab.models.load import resolve_model

        for spec in self.cfg.evaluations:
            self.rows(spec)
            named = (*self.cfg.checkpoints, spec.baseline or self.cfg.baseline, spec.reference or self.cfg.reference,
                     spec.scorer)
            for name in named:
                if name and name not in self.models:
                    resolve_model(name)

    def rows(self, spec: EvaluationSpec) -> tuple[list, dict]:
        """The evaluation's rows of its kind's task: records [data_offset, data_offset + data_limit) of its file."""
        from alignlab.data.prepare import record_id, slice_records
        from alignlab.data.sources import load_rows

        if id(spec) in self.loaded:
            return self.loaded[id(spec)]
        task = TASKS[spec.kind]
        res = load_rows(spec.data, task=task, format=spec.format, columns=spec.columns or None,
                        on_bad_row=spec.on_bad_row)
        rows = slice_records(res.rows, spec.data_offset, spec.data_limit)
        if not rows:
            raise AlignlabError(f"evaluation {spec.name or spec.kind}: {spec.data} has no {task} rows in records "
                                f"{spec.data_offset}..{spec.data_offset + spec.data_limit - 1} (it has "
                                f"{len(res.rows)} rows)")
        self.records[id(spec)] = [record_id(r, spec.data_offset + i) for i, r in enumerate(rows)]
        self.loaded[id(spec)] = rows, {"rows": len(rows), "skipped_rows": dict(res.skipped)}
        return self.loaded[id(spec)]
