"""Model A against model B (or every model against every other) over a prompt set, under a judge.

`compare_answers` turns per-prompt judge results into outcomes and a bootstrap win rate (eval.winrate);
comparisons the judge could not decide are left out of the rate and counted, by kind, beside it.
`round_robin` plays every pair of models on every prompt and returns battles for
`eval.ratings.bradley_terry_ratings`. `JudgeConfig` + `build_judge` make any judge from config; the
config holds an API key's environment-variable NAME, never a key (an `api_key` key is rejected as unknown).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Literal

from alignlab.errors import AlignlabError
from alignlab.eval.judges import FunctionJudge, Judge, JudgeResult, LLMJudge, RewardModelJudge
from alignlab.eval.winrate import WinRate, win_rate

__all__ = ["JudgeConfig", "PairwiseResult", "build_judge", "compare_answers", "generate_answers", "round_robin"]


@dataclass
class JudgeConfig:
    """Which judge decides "is answer A better than answer B"."""

    kind: Literal["llm", "reward_model", "function"] = "llm"
    """llm: a language model asked to compare or grade; reward_model: a scalar scorer checkpoint;
    function: a Python reward (registry name such as sentiment or gsm8k, or module.path:function)."""
    mode: Literal["pairwise", "single"] = "pairwise"
    """llm only. pairwise: one prompt shows both answers (asked in both orders when both_orders);
    single: each answer graded 1-10 ("[[rating]]", MT-Bench style) and the higher grade wins."""
    both_orders: bool = True
    """llm pairwise: also ask with the answers swapped and average, cancelling position bias (doubles cost)."""
    model: str | None = None
    """llm: a local judge model (alias, dir or hub id) run in-process; reward_model: the scorer checkpoint."""
    base_url: str | None = None
    """llm: an OpenAI-compatible endpoint instead of a local model, e.g. http://127.0.0.1:8000/v1."""
    model_name: str = "alignlab"
    """llm over base_url: the `model` field sent with each request (the endpoint's model id)."""
    api_key_env: str | None = None
    """llm over base_url: NAME of the environment variable holding the API key (the key itself never goes in
    a config, log or report). null sends no Authorization header."""
    reward: str | None = None
    """function: the reward's registry name or module.path:function."""
    reward_options: dict[str, Any] = field(default_factory=dict)
    """function: keyword options for the reward factory (e.g. pattern for format)."""
    score_mode: Literal["soft", "hard"] | None = None
    """reward_model / function: soft = sigmoid((r_a - r_b) / scale), hard = win / tie / loss.
    null: soft for reward models, hard for functions."""
    scale: float = 1.0
    """Soft mode: score difference that moves the probability from 0.5 to sigmoid(1) = 0.73."""
    max_tokens: int = 256
    """llm: most tokens in one judge reply."""
    temperature: float = 0.0
    """llm: sampling temperature of the judge (0 = greedy, the usual choice for judging)."""
    timeout: float = 300.0
    """llm over base_url: seconds before one HTTP request is abandoned (then retried). Generous because a
    CPU judge is slow, and requests beyond the server's batch wait in its queue."""
    max_retries: int = 3
    """llm over base_url: retries on 429 / 5xx / connection errors, with exponential backoff."""
    concurrency: int = 4
    """llm over base_url: requests in flight at once."""

    def validate(self) -> None:
        if self.kind == "llm" and (self.model is None) == (self.base_url is None):
            raise AlignlabError("judge: an llm judge needs exactly one of model (local) or base_url (HTTP)")
        if self.kind == "reward_model" and not self.model:
            raise AlignlabError("judge: a reward_model judge needs model: <scorer checkpoint>")
        if self.kind == "function" and not self.reward:
            raise AlignlabError("judge: a function judge needs reward: <name or module.path:function>")
        if self.max_tokens < 1 or self.max_retries < 0 or self.timeout <= 0 or self.temperature < 0 \
                or self.concurrency < 1 or self.scale <= 0:
            raise AlignlabError("judge: max_tokens >= 1, max_retries >= 0, timeout > 0, temperature >= 0, "
                                "concurrency >= 1 and scale > 0 are required")


def build_judge(cfg: JudgeConfig, *, device: str = "cpu") -> Judge:
    """The judge a config describes (loads a local model or scorer when it names one)."""
    cfg.validate()
    if cfg.kind == "function":
        return FunctionJudge(cfg.reward, mode=cfg.score_mode or "hard", scale=cfg.scale, **cfg.reward_options)
    if cfg.kind == "reward_model":
        from alignlab.rollout.rewards import get_reward

        return RewardModelJudge(get_reward("reward_model", path=cfg.model, device=device), mode=cfg.score_mode or "soft",
                                scale=cfg.scale)
    if cfg.base_url:
        from alignlab.eval.backends import OpenAIBackend

        backend: Any = OpenAIBackend(cfg.base_url, cfg.model_name, api_key_env=cfg.api_key_env,
                                     max_tokens=cfg.max_tokens, temperature=cfg.temperature, timeout=cfg.timeout,
                                     max_retries=cfg.max_retries, concurrency=cfg.concurrency)
    else:
        from alignlab.eval.backends import LocalBackend
        from alignlab.models.load import load_model, load_tokenizer
        from alignlab.rollout.generate import SamplingConfig

        sampling = SamplingConfig(max_new_tokens=cfg.max_tokens, greedy=cfg.temperature == 0,
                                  temperature=cfg.temperature or 1.0)
        backend = LocalBackend(load_model(cfg.model, device=device), load_tokenizer(cfg.model), sampling)
    return LLMJudge(backend, mode=cfg.mode, both_orders=cfg.both_orders)


def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[Any], sampling: Any = None) -> list[str]:
    """One answer per prompt from `model` (chat template for message prompts), via rollout.generate."""
    from alignlab.rollout.generate import generate

    return [s.text for s in generate(model, tokenizer, list(prompts), sampling).samples]


@dataclass
class PairwiseResult:
    """A against B on every prompt."""

    outcomes: list[float | None]
    """Per prompt: probability that A's answer is better (1 win, 0.5 tie, 0 loss), None if undecided."""
    results: list[JudgeResult]
    """The judge's full results (raw replies, scores)."""
    win_rate: WinRate | None
    """Bootstrap win rate over the decided prompts (None when the judge decided none)."""
    malformed: dict[str, int]
    """Undecided judge replies in this comparison, by kind (empty, no_verdict, ambiguous, ...)."""

    @property
    def undecided(self) -> int:
        return sum(o is None for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        return {"win_rate": self.win_rate.to_dict() if self.win_rate else None, "n_prompts": len(self.outcomes),
                "undecided": self.undecided, "malformed": dict(self.malformed),
                "outcomes": self.outcomes}


def compare_answers(judge: Judge, prompts: Sequence[Any], answers_a: Sequence[str], answers_b: Sequence[str],
                    *, batch_size: int = 16, n_boot: int = 2000, seed: int = 0,
                    fields: dict[str, Sequence[Any]] | None = None) -> PairwiseResult:
    """Judge A's answers against B's on every prompt; win rate of A with ties counted half.
    `fields`: per-prompt columns for reward-function judges (e.g. {"answer": [...]} for gsm8k)."""
    fields = fields or {}
    lengths = {"prompts": len(prompts), "answers_a": len(answers_a), "answers_b": len(answers_b),
               **{k: len(v) for k, v in fields.items()}}
    if len(set(lengths.values())) > 1:
        raise AlignlabError(f"compare_answers: one entry per prompt in each list, got lengths {lengths}")
    before = Counter(judge.malformed)
    results: list[JudgeResult] = []
    for i in range(0, len(prompts), batch_size):
        cut = slice(i, i + batch_size)
        results += judge.compare_batch(prompts[cut], answers_a[cut], answers_b[cut],
                                       **{k: list(v)[cut] for k, v in fields.items()})
    outcomes = [r.prob_a_better for r in results]
    decided = [o for o in outcomes if o is not None]
    rate = win_rate(decided, n_boot=n_boot, seed=seed) if decided else None
    malformed = Counter(judge.malformed)
    malformed.subtract(before)
    return PairwiseResult(outcomes, results, rate, {k: v for k, v in malformed.items() if v})


def round_robin(judge: Judge, prompts: Sequence[Any], answers: dict[str, Sequence[str]], *, batch_size: int = 16,
                fields: dict[str, Sequence[Any]] | None = None) -> tuple[list[tuple[str, str, float]], dict[str, int]]:
    """Every pair of models on every prompt -> (battles (model_a, model_b, A's score), malformed counts).
    Undecided comparisons are not battles; they are counted in the second value."""
    names = list(answers)
    if len(names) < 2:
        raise AlignlabError(f"ratings: need answers from at least two models, got {names}")
    battles: list[tuple[str, str, float]] = []
    malformed: Counter[str] = Counter()
    for a, b in combinations(names, 2):
        res = compare_answers(judge, prompts, answers[a], answers[b], batch_size=batch_size, n_boot=1, fields=fields)
        battles += [(a, b, o) for o in res.outcomes if o is not None]
        malformed.update(res.malformed)
    return battles, dict(malformed)


def check_judge(spec: Any, judge: Judge | None) -> None:
    """An evaluation's judge, checked before any work: the config's (when no judge object is given), or that a given
    object can grade single answers for a grade evaluation."""
    if spec.kind in ("win_rate", "ratings", "grade") and judge is None:
        spec.judge.validate()
    if spec.kind == "grade" and judge is not None and not hasattr(judge, "grade_batch"):
        raise AlignlabError(f"evaluation {spec.name or spec.kind}: grade needs an llm judge that grades single "
                            f"answers (eval.judges.LLMJudge); the judge given is a {type(judge).__name__}")


def comparison_examples(rows: Sequence[Any], a: Sequence[str], b: Sequence[str], result: Any, k: int = 3) -> list[dict]:
    """The first k comparisons as the report shows them: prompt, both answers (cut at 2,000 characters), the
    outcome and the judge's raw verdict."""
    from alignlab.eval.judges import prompt_text

    def cut(text: str, limit: int = 2000) -> str:  # examples illustrate; they must not bloat the report
        return text if len(text) <= limit else text[:limit] + f" [... {len(text) - limit} more characters]"

    return [{"prompt": cut(prompt_text(rows[i])), "answer_a": cut(a[i]), "answer_b": cut(b[i]),
             "outcome": result.outcomes[i], "judge": result.results[i].raw} for i in range(min(k, len(rows)))]
