"""Judges: "which of two answers to this prompt is better, with a probability", behind one interface.

`Judge.compare_batch(prompts, answers_a, answers_b) -> [JudgeResult]`, where `prob_a_better` is in
[0, 1] (1 = A better, 0.5 = tie) or None when the judge could not decide (a malformed reply, a failed
request, a reward function that raised). Undecided comparisons are counted by kind in
`judge.malformed` and reported; they never raise, so one bad reply cannot end an evaluation.

- `RewardModelJudge`: scores both answers with a scalar scorer; p = sigmoid((r_a - r_b) / scale), the
  Bradley-Terry probability a reward model is trained to (Ouyang et al. 2022, eq. 1), or a hard 1/0.5/0.
- `FunctionJudge`: any Python reward `fn(prompt, completion) -> float` (exact match, sentiment, ...),
  hard win/tie/loss by default.
- `LLMJudge` over a `ChatBackend` (a local model or an OpenAI-compatible endpoint), two protocols:
  * pairwise (AlpacaEval / MT-Bench pairwise style): the judge sees A then B, and again B then A; the
    two verdicts (mapped back to "is the first answer better") are averaged, so a judge that always
    prefers the first position yields exactly 0.5 instead of a spurious win (Zheng et al. 2023,
    "Judging LLM-as-a-judge", Sec. 3.4, swap positions). If only one order parses, that one is used.
  * single (MT-Bench single-answer grading): each answer is graded 1-10, "[[rating]]", and the higher
    grade wins (equal grades tie).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from alignlab.errors import AlignlabError
from alignlab.eval.backends import BackendError, ChatBackend

__all__ = [
    "FunctionJudge", "Judge", "JudgeResult", "LLMJudge", "RewardModelJudge", "parse_rating", "parse_verdict",
    "prompt_text",
]

MALFORMED_KINDS = ("empty", "no_verdict", "ambiguous", "out_of_range", "request_failed", "bad_response",
                   "bad_score", "function_error")


@dataclass
class JudgeResult:
    """One comparison. `error` is the malformed kind when the judge could not decide."""

    prob_a_better: float | None
    raw: Any = None
    error: str | None = None


def prompt_text(prompt: Any) -> str:
    """A prompt as text: a string as it is; chat messages (or a PromptRow) as a 'Role: content' transcript."""
    if hasattr(prompt, "prompt") and hasattr(prompt, "chat"):
        prompt = prompt.prompt
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence) and len(prompt) == 1 and isinstance(prompt[0], dict):
        return str(prompt[0].get("content", ""))
    if isinstance(prompt, Sequence) and all(isinstance(m, dict) for m in prompt):
        return "\n\n".join(f"{m.get('role', 'user').capitalize()}: {m.get('content', '')}" for m in prompt)
    raise AlignlabError(f"judge: a prompt must be text or chat messages, got {type(prompt).__name__}")


class Judge:
    """Base class: subclasses implement `compare_batch`. `malformed` counts undecided comparisons by kind."""

    name = "judge"

    def __init__(self) -> None:
        self.malformed: Counter[str] = Counter()
        self.comparisons = 0

    def compare(self, prompt: Any, answer_a: str, answer_b: str, **fields: Any) -> JudgeResult:
        return self.compare_batch([prompt], [answer_a], [answer_b], **{k: [v] for k, v in fields.items()})[0]

    def compare_batch(self, prompts: Sequence[Any], answers_a: Sequence[str], answers_b: Sequence[str],
                      **fields: Sequence[Any]) -> list[JudgeResult]:
        """`fields`: per-prompt dataset columns (e.g. answer=[...] for GSM8K) that reward functions take;
        LLM judges ignore them."""
        raise NotImplementedError

    def _check(self, prompts, answers_a, answers_b) -> None:
        if not len(prompts) == len(answers_a) == len(answers_b):
            raise AlignlabError(f"{self.name}: {len(prompts)} prompts but {len(answers_a)} answers A "
                                f"and {len(answers_b)} answers B")
        self.comparisons += len(prompts)

    def counters(self) -> dict[str, Counter]:
        """A snapshot of the running counts, for `stats(since=...)`."""
        return {"comparisons": Counter(n=self.comparisons), "malformed": Counter(self.malformed)}

    def stats(self, since: dict[str, Counter] | None = None) -> dict[str, Any]:
        """Counts for eval.json and the report; with `since` (a `counters()` snapshot) only what came after it, so
        one judge shared by several checkpoints reports each checkpoint's own comparisons."""
        c = self.counters()
        if since is not None:
            c = {k: v - since.get(k, Counter()) for k, v in c.items()}
        return {"judge": self.name, "comparisons": c["comparisons"]["n"], "malformed": dict(c["malformed"]),
                "malformed_total": int(sum(c["malformed"].values())), **self._extra_stats(c)}

    def _extra_stats(self, counts: dict[str, Counter]) -> dict[str, Any]:
        return {}


# ----------------------------------------------------------------------------- score-based judges


class RewardModelJudge(Judge):
    """Compare by a scalar score from a reward function `score_fn(prompts, completions) -> [float]`
    (alignlab.rollout.rewards' interface: a reward model's scorer, `sentiment`, `gsm8k`, ...).

    soft: p = sigmoid((r_a - r_b) / scale), the Bradley-Terry probability a reward model is trained to
    (Ouyang et al. 2022, eq. 1); hard: 1 / 0.5 / 0 with |r_a - r_b| <= tie_tolerance a tie.
    A batch that raises is retried one completion at a time, so only the failing ones are lost."""

    name = "reward_model"

    def __init__(self, score_fn: Callable[..., Sequence[float]], *, mode: Literal["soft", "hard"] = "soft",
                 scale: float = 1.0, tie_tolerance: float = 0.0):
        super().__init__()
        if mode not in ("soft", "hard"):
            raise AlignlabError(f"{self.name} judge: mode must be 'soft' or 'hard', got {mode!r}")
        if not scale > 0:
            raise AlignlabError(f"{self.name} judge: scale must be > 0, got {scale}")
        self.score_fn, self.mode, self.scale, self.tie_tolerance = score_fn, mode, scale, tie_tolerance

    @classmethod
    def from_checkpoint(cls, path: str, **kwargs: Any) -> RewardModelJudge:
        """A judge over a reward model checkpoint written by `alignlab rm` (or any HF scalar-head model)."""
        from alignlab.rollout.rewards import get_reward

        return cls(get_reward("reward_model", path=path), **kwargs)

    def _scores(self, prompts: list[Any], completions: list[str], fields: dict[str, list]) -> list[Any]:
        try:
            return [_number(x) for x in self.score_fn(prompts, completions, **fields)]
        except Exception:  # isolate the culprit(s): score one at a time
            pass
        out: list[Any] = []
        for i, (p, c) in enumerate(zip(prompts, completions)):
            try:
                out.append(_number(self.score_fn([p], [c], **{k: [v[i]] for k, v in fields.items()})[0]))
            except Exception as e:  # a user's scorer failing on one answer must not end the evaluation
                out.append(e)
        return out

    def compare_batch(self, prompts, answers_a, answers_b, **fields) -> list[JudgeResult]:
        self._check(prompts, answers_a, answers_b)
        texts = [_reward_prompt(p) for p in prompts]
        both = {k: list(v) + list(v) for k, v in fields.items()}
        scores = self._scores(texts + texts, list(answers_a) + list(answers_b), both)
        n = len(texts)
        if len(scores) != 2 * n:
            raise AlignlabError(f"{self.name} judge: scorer returned {len(scores)} values for {2 * n} answers")
        return [self._result(scores[i], scores[n + i]) for i in range(n)]

    def _result(self, ra: Any, rb: Any) -> JudgeResult:
        for r in (ra, rb):
            if isinstance(r, Exception):
                self.malformed["function_error"] += 1
                return JudgeResult(None, {"error": f"{type(r).__name__}: {r}"[:300]}, "function_error")
            if r is None or not math.isfinite(r):
                self.malformed["bad_score"] += 1
                return JudgeResult(None, {"score_a": ra, "score_b": rb}, "bad_score")
        raw = {"score_a": ra, "score_b": rb}
        diff = ra - rb
        if self.mode == "hard":
            p = 0.5 if abs(diff) <= self.tie_tolerance else (1.0 if diff > 0 else 0.0)
        else:  # sigmoid written to stay finite for large |diff|
            z = diff / self.scale
            p = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
        return JudgeResult(p, raw)


def _reward_prompt(prompt: Any) -> Any:
    """What a reward function takes (rollout.rewards): the text, or the chat messages of a chat row."""
    if hasattr(prompt, "prompt") and hasattr(prompt, "chat"):
        return prompt.prompt if prompt.chat else prompt_text(prompt)
    return prompt


def _number(x: Any) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


class FunctionJudge(RewardModelJudge):
    """Compare by any Python reward: a registry name or "module:function" (see rollout.rewards), a batched
    callable `fn(prompts, completions) -> [float]`, or with `per_item=True` a plain `fn(prompt, completion)`
    (exact match, a regex, a sentiment score). Hard win / tie / loss by default."""

    name = "function"

    def __init__(self, fn: Any, *, per_item: bool = False, mode: Literal["soft", "hard"] = "hard",
                 scale: float = 1.0, tie_tolerance: float = 0.0, **reward_options: Any):
        if per_item:
            item_fn = fn
            fn = lambda ps, cs, **_: [item_fn(prompt_text(p), c) for p, c in zip(ps, cs)]  # noqa: E731
        elif isinstance(fn, str) or reward_options:
            from alignlab.rollout.rewards import get_reward

            fn = get_reward(fn, **reward_options)
        super().__init__(fn, mode=mode, scale=scale, tie_tolerance=tie_tolerance)


# ----------------------------------------------------------------------------- LLM judge: parsing

_VERDICT = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
_BARE_VERDICT = {"a": "A", "b": "B", "c": "C", "tie": "C"}
_RATING = re.compile(r"\[\[\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*10\s*)?\]\]")
_SINGLE_BRACKET_RATING = re.compile(r"(?<!\[)\[\s*(-?\d+(?:\.\d+)?)\s*\](?!\])")


def parse_verdict(text: Any) -> tuple[str | None, str | None]:
    """A pairwise reply -> ("A" | "B" | "C" (tie), None) or (None, malformed kind).

    The verdict is "[[A]]", "[[B]]" or "[[C]]"/"[[tie]]"; a reply that is nothing but the letter (after
    stripping quotes and punctuation) is accepted too, as AlpacaEval's one-token judges answer. Two
    different bracketed verdicts are 'ambiguous'; none is 'no_verdict'."""
    if not isinstance(text, str) or not text.strip():
        return None, "empty"
    found = {m.group(1).upper().replace("TIE", "C") for m in _VERDICT.finditer(text)}
    if len(found) > 1:
        return None, "ambiguous"
    if found:
        return found.pop(), None
    bare = text.strip().strip("\"'`*.:!()[] \n\t").lower()
    if bare in _BARE_VERDICT:
        return _BARE_VERDICT[bare], None
    return None, "no_verdict"


def parse_rating(text: Any, low: float = 1.0, high: float = 10.0) -> tuple[float | None, str | None]:
    """A single-answer grading reply -> (rating, None) or (None, malformed kind).

    "[[7]]" (MT-Bench) first, then "[7]", then a reply that is only a number; a rating outside
    [low, high] is 'out_of_range', several different ratings 'ambiguous'."""
    if not isinstance(text, str) or not text.strip():
        return None, "empty"
    values = {float(m.group(1)) for m in _RATING.finditer(text)}
    if not values:
        values = {float(m.group(1)) for m in _SINGLE_BRACKET_RATING.finditer(text)}
    if not values:
        bare = text.strip().strip("\"'`*.:!() \n\t")
        try:
            values = {float(bare)}
        except ValueError:
            return None, "no_verdict"
    if len(values) > 1:
        return None, "ambiguous"
    value = values.pop()
    if not (low <= value <= high) or not math.isfinite(value):
        return None, "out_of_range"
    return value, None


# ----------------------------------------------------------------------------- LLM judge: prompts

JUDGE_SYSTEM = "You are a careful, impartial judge of answers written by AI assistants."

PAIRWISE_TEMPLATE = """Compare the two answers to the user's question below and decide which is better: more \
helpful, correct, relevant and clear. The order of the answers and their length must not sway you.

[Question]
{prompt}

[Answer A]
{answer_a}

[Answer B]
{answer_b}

Explain briefly if you need to, then give your verdict in exactly this form: "[[A]]" if answer A is \
better, "[[B]]" if answer B is better, "[[C]]" for a tie."""

SINGLE_TEMPLATE = """Grade the answer to the user's question below for helpfulness, correctness, relevance \
and clarity on a scale of 1 (useless) to 10 (excellent).

[Question]
{prompt}

[Answer]
{answer}

Explain briefly if you need to, then give your grade in exactly this form: "[[rating]]", for example \
"Rating: [[5]]"."""

_SCORE = {"A": 1.0, "B": 0.0, "C": 0.5}


@dataclass
class LLMJudge(Judge):
    """An LLM as judge over any `ChatBackend`; see the module docstring for the two protocols."""

    backend: ChatBackend
    mode: Literal["pairwise", "single"] = "pairwise"
    both_orders: bool = True
    system: str = JUDGE_SYSTEM
    pairwise_template: str = PAIRWISE_TEMPLATE
    single_template: str = SINGLE_TEMPLATE
    order_agreement: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        Judge.__init__(self)
        self.grades = 0  # answers graded alone (mode single, or the grade evaluation)
        if self.mode not in ("pairwise", "single"):
            raise AlignlabError(f"llm judge: mode must be 'pairwise' or 'single', got {self.mode!r}")
        self.name = f"llm_{self.mode}"

    def _conv(self, user: str) -> list[dict[str, str]]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": user}]

    def _ask(self, texts: list[str]) -> list[str | BackendError]:
        replies = self.backend.chat_many([self._conv(t) for t in texts])
        if len(replies) != len(texts):
            raise AlignlabError(f"{self.name}: backend returned {len(replies)} replies for {len(texts)} requests")
        return replies

    def _parsed(self, reply: str | BackendError, parse: Callable) -> tuple[Any, str | None, str]:
        if isinstance(reply, BackendError):
            self.malformed[reply.kind] += 1
            return None, reply.kind, str(reply)[:300]
        value, kind = parse(reply)
        if kind:
            self.malformed[kind] += 1
        return value, kind, reply

    def compare_batch(self, prompts, answers_a, answers_b, **fields) -> list[JudgeResult]:
        self._check(prompts, answers_a, answers_b)
        texts = [prompt_text(p) for p in prompts]
        if self.mode == "single":
            return self._compare_single(texts, list(answers_a), list(answers_b))
        return self._compare_pairwise(texts, list(answers_a), list(answers_b))

    def _compare_pairwise(self, texts, answers_a, answers_b) -> list[JudgeResult]:
        n = len(texts)
        asks = [self.pairwise_template.format(prompt=t, answer_a=a, answer_b=b)
                for t, a, b in zip(texts, answers_a, answers_b)]
        if self.both_orders:
            asks += [self.pairwise_template.format(prompt=t, answer_a=b, answer_b=a)
                     for t, a, b in zip(texts, answers_a, answers_b)]
        replies = self._ask(asks)
        out = []
        for i in range(n):
            v1, k1, r1 = self._parsed(replies[i], parse_verdict)
            scores, raw = [], {"ab": r1, "ab_verdict": v1}
            if v1:
                scores.append(_SCORE[v1])
            kinds = [k1]
            if self.both_orders:
                v2, k2, r2 = self._parsed(replies[n + i], parse_verdict)
                raw.update(ba=r2, ba_verdict=v2)
                kinds.append(k2)
                if v2:
                    scores.append(1.0 - _SCORE[v2])  # in the swapped order "A" is answer_b
                if v1 and v2:
                    self.order_agreement["agree" if _SCORE[v1] == 1.0 - _SCORE[v2] else "disagree"] += 1
            prob = sum(scores) / len(scores) if scores else None
            out.append(JudgeResult(prob, raw, None if scores else next(k for k in kinds if k)))
        return out

    def grade_batch(self, prompts: Sequence[Any], answers: Sequence[str]) -> list[tuple[float | None, str | None]]:
        """MT-Bench single-answer grades: [(rating or None, malformed kind or None)]."""
        self.grades += len(answers)
        asks = [self.single_template.format(prompt=prompt_text(p), answer=a) for p, a in zip(prompts, answers)]
        return [self._parsed(r, parse_rating)[:2] for r in self._ask(asks)]

    def _compare_single(self, texts, answers_a, answers_b) -> list[JudgeResult]:
        n = len(texts)
        grades = self.grade_batch(texts + texts, answers_a + answers_b)
        out = []
        for i in range(n):
            (ga, ka), (gb, kb) = grades[i], grades[n + i]
            raw = {"rating_a": ga, "rating_b": gb}
            if ga is None or gb is None:
                out.append(JudgeResult(None, raw, ka or kb))
            else:
                out.append(JudgeResult(1.0 if ga > gb else 0.5 if ga == gb else 0.0, raw))
        return out

    def counters(self) -> dict[str, Counter]:
        return {**super().counters(), "order_agreement": Counter(self.order_agreement),
                "grades": Counter(n=self.grades)}

    def _extra_stats(self, counts: dict[str, Counter]) -> dict[str, Any]:
        out: dict[str, Any] = {"grades": counts["grades"]["n"]} if counts["grades"]["n"] else {}
        total = sum(counts["order_agreement"].values())
        if total:  # how often the two orders agree: low values mean position bias or noise
            out["order_agreement"] = counts["order_agreement"]["agree"] / total
        return out
