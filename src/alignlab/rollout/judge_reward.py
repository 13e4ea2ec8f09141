"""The `judge` reward: any judge from :mod:`alignlab.eval.judges` as an RL reward, with a cache.

- ``pointwise``: an LLM judge grades each completion alone, 1-10 (MT-Bench single grading), and the
  reward is ``(rating - 1) / 9`` in [0, 1]. (A reward-model or function scorer needs no judge around
  it: use the ``reward_model`` reward or the function itself.)
- ``pairwise``: the judge compares the completion (as answer A) with the row's reference answer
  (field ``reference`` by default); the reward is ``P(completion better)`` in [0, 1], 0.5 a tie.

A reply the judge cannot parse (or a failed request) gets ``failed_value`` and is not cached, so a
later identical completion is asked again; counts are in :attr:`JudgeReward.failures`. Identical
(prompt, completion, reference) triples are judged once, within a batch and across batches (an LRU
cache of ``cache_size`` entries).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

from alignlab.errors import AlignlabError
from alignlab.eval.judges import Judge, prompt_text

__all__ = ["JudgeReward", "make_judge_reward"]


class JudgeReward:
    """RewardFn over a Judge; see the module docstring."""

    __name__ = "judge"

    def __init__(self, judge: Judge, *, mode: Literal["pointwise", "pairwise"] = "pointwise",
                 reference_field: str = "reference", cache_size: int = 100_000, failed_value: float = 0.0):
        if mode not in ("pointwise", "pairwise"):
            raise AlignlabError(f"reward judge: mode must be 'pointwise' or 'pairwise', got {mode!r}")
        if mode == "pointwise" and not hasattr(judge, "grade_batch"):
            raise AlignlabError(
                f"reward judge: judge {judge.name!r} cannot grade one answer; use mode: pairwise, or use its "
                "scorer directly as the reward (reward_model, or the function's name)"
            )
        self.judge, self.mode, self.reference_field = judge, mode, reference_field
        self.cache_size, self.failed_value = cache_size, failed_value
        self._cache: OrderedDict[tuple, float] = OrderedDict()
        self.hits = self.misses = self.failures = 0

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **fields: Any) -> list[float]:
        refs = [None] * len(completions)
        if self.mode == "pairwise":
            refs = fields.get(self.reference_field)
            if refs is None:
                raise AlignlabError(f"reward judge: pairwise needs the rows' '{self.reference_field}' answers")
        keys = [(self.mode, prompt_text(p), c, None if r is None else str(r))
                for p, c, r in zip(prompts, completions, refs)]
        todo: dict[tuple, int] = {}
        known: dict[tuple, float] = {}  # read now: the batch's own new entries may evict them below
        for i, key in enumerate(keys):
            if key in self._cache:
                self._cache.move_to_end(key)
                known[key] = self._cache[key]
            elif key not in todo:
                todo[key] = i
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        fresh = dict(zip(todo, self._judge([prompts[i] for i in todo.values()],
                                           [completions[i] for i in todo.values()],
                                           [refs[i] for i in todo.values()]))) if todo else {}
        for key, value in fresh.items():
            if value is not None:
                self._cache[key] = value
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        out = []
        for key in keys:
            value = known.get(key, fresh.get(key))
            if value is None:
                self.failures += 1
                value = self.failed_value
            out.append(float(value))
        return out

    def _judge(self, prompts: list, completions: list[str], refs: list) -> list[float | None]:
        if self.mode == "pairwise":
            results = self.judge.compare_batch(prompts, completions, [str(r) for r in refs])
            return [r.prob_a_better for r in results]
        return [None if g is None else (g - 1.0) / 9.0 for g, _ in self.judge.grade_batch(prompts, completions)]


def make_judge_reward(judge: Judge | dict | None = None, mode: str = "pointwise", reference_field: str = "reference",
                      cache_size: int = 100_000, failed_value: float = 0.0) -> JudgeReward:
    """``judge``: a Judge object, or the options of :class:`alignlab.eval.pairwise.JudgeConfig` as a dict
    (e.g. ``{"kind": "llm", "base_url": "http://127.0.0.1:8000/v1", "mode": "single"}``)."""
    if judge is None:
        raise AlignlabError("reward judge: give judge: {kind: llm|reward_model|function, ...} (a JudgeConfig)")
    if isinstance(judge, dict):
        from alignlab.eval.pairwise import JudgeConfig, build_judge

        try:
            judge = build_judge(JudgeConfig(**judge))
        except TypeError as e:
            raise AlignlabError(f"reward judge: bad judge options {sorted(judge)}: {e}") from e
    return JudgeReward(judge, mode=mode, reference_field=reference_field, cache_size=cache_size,
                       failed_value=failed_value)
