"""pass@k and maj@k for verifiable tasks (math answers, code tests).

- :func:`pass_at_k`: the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models
  Trained on Code", Sec. 2.1, Eq. 1) from ``n >= k`` samples of which ``c`` are correct.
- :func:`maj_at_k`: majority voting (self-consistency, Wang et al. 2023): the most frequent final
  answer among ``k`` samples is the model's answer; it scores 1 when that answer is correct.
  :func:`group_equal` first makes equal answers written differently one candidate.
- :func:`mean_and_stderr`: the mean over problems with its standard error, for reports.
- :func:`passk_summary` (pure) and :func:`evaluate_passk` (sample with rollout.generate, score with a
  reward, summarise): what ``alignlab passk`` runs, and what an ``alignlab eval`` kind can call.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

from alignlab.errors import AlignlabError

__all__ = ["evaluate_passk", "group_equal", "maj_at_k", "mean_and_stderr", "pass_at_k", "passk_summary"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: ``1 - C(n - c, k) / C(n, k)`` (Chen et al. 2021, Eq. 1).

    The probability that at least one of ``k`` samples drawn without replacement from the ``n``
    generated is correct. Computed as ``1 - prod_{i = n - c + 1}^{n} (1 - k / i)``, the numerically
    stable product form of the paper's code (no huge binomials). Averaging it over problems gives
    an unbiased estimate of pass@k; the naive ``1 - (1 - c/n)^k`` is biased low.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise AlignlabError(f"pass@k: need 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def maj_at_k(answers: Sequence[Hashable | None], correct: Sequence[bool], k: int) -> float:
    """maj@k for one problem from its first ``k`` samples: 1.0 when the most frequent extracted answer
    is a correct one, else 0.0.

    ``answers[i]`` is sample i's final answer in a canonical form (equal answers must compare equal,
    e.g. a float or a normalised string); None (no answer extracted) never wins a vote. ``correct[i]``
    says whether sample i is right. A tie between answers goes to the one seen first (deterministic).
    No answer at all scores 0.
    """
    if len(answers) != len(correct):
        raise AlignlabError(f"maj@k: {len(answers)} answers but {len(correct)} correctness flags")
    if not 1 <= k <= len(answers):
        raise AlignlabError(f"maj@k: need 1 <= k <= {len(answers)} samples (got k={k})")
    counts: dict[Hashable, int] = {}
    first_correct: dict[Hashable, bool] = {}
    for ans, ok in zip(answers[:k], correct[:k]):
        if ans is None:
            continue
        counts[ans] = counts.get(ans, 0) + 1
        first_correct.setdefault(ans, bool(ok))
    if not counts:
        return 0.0
    best = max(counts, key=lambda a: counts[a])  # max keeps the first of equal counts (insertion order)
    return 1.0 if first_correct[best] else 0.0


def group_equal(answers: Sequence[Hashable | None], same: Any) -> list[Hashable | None]:
    """Each answer replaced by the first earlier answer ``same(a, b)`` calls equal to it (itself when none is), so
    that equal answers written differently ("1,000", "1000.0", "1000 apples" under ``verify_math.math_equal``)
    are one candidate in :func:`maj_at_k`'s vote. None stays None."""
    out: list[Hashable | None] = []
    heads: list[Hashable] = []  # the first answer of each group, in order
    for ans in answers:
        if ans is None:
            out.append(None)
            continue
        head = next((h for h in heads if h == ans or same(ans, h)), None)
        if head is None:
            heads.append(ans)
            head = ans
        out.append(head)
    return out


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean over problems and its standard error ``s / sqrt(m)`` (sample std, ddof=1; 0 for one value)."""
    m = len(values)
    if m == 0:
        raise AlignlabError("pass@k: no problems to average")
    mean = sum(values) / m
    if m == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (m - 1)
    return mean, math.sqrt(var / m)


def passk_summary(
    rewards: Sequence[Sequence[float]],
    ks: Sequence[int],
    *,
    answers: Sequence[Sequence[Hashable | None]] | None = None,
    threshold: float = 1.0,
) -> dict[str, float]:
    """pass@k (and maj@k when ``answers`` are given) over problems, each with its standard error.

    ``rewards[i][j]``: reward of sample j of problem i (every problem the same number n of samples);
    a sample is correct when its reward is >= ``threshold``. Keys: ``pass@k``, ``pass@k_se``,
    ``maj@k``, ``maj@k_se`` for every k, and ``n``, ``problems``.
    """
    if not rewards:
        raise AlignlabError("pass@k: no problems")
    n = len(rewards[0])
    if any(len(r) != n for r in rewards):
        raise AlignlabError("pass@k: every problem needs the same number of samples")
    if answers is not None and len(answers) != len(rewards):  # zip would score maj@k on the shorter list
        raise AlignlabError(f"pass@k: answers for {len(answers)} problems but rewards for {len(rewards)}")
    bad = next(((i, j, v) for i, row in enumerate(rewards) for j, v in enumerate(row) if not math.isfinite(v)), None)
    if bad is not None:  # NaN >= threshold is False: counted as wrong, silently
        raise AlignlabError(f"pass@k: non-finite reward {bad[2]} for problem {bad[0]}, sample {bad[1]}")
    correct = [[v >= threshold for v in row] for row in rewards]
    out: dict[str, float] = {"n": float(n), "problems": float(len(rewards))}
    for k in ks:
        out[f"pass@{k}"], out[f"pass@{k}_se"] = mean_and_stderr([pass_at_k(n, sum(c), k) for c in correct])
        if answers is not None:
            out[f"maj@{k}"], out[f"maj@{k}_se"] = mean_and_stderr(
                [maj_at_k(a, c, k) for a, c in zip(answers, correct)]
            )
    return out


def evaluate_passk(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    fields: dict[str, Sequence[Any]],
    reward_fn: Any,
    *,
    n: int,
    ks: Sequence[int],
    sampling: Any = None,
    extract: Any = None,
    same_answer: Any = None,
    threshold: float = 1.0,
    reward_prompts: Sequence[Any] | None = None,
) -> dict[str, float]:
    """Sample ``n`` completions per prompt with rollout.generate, score them with ``reward_fn`` (fields:
    per-prompt dataset columns, repeated for each sample) and summarise with :func:`passk_summary`.
    ``extract(text) -> answer`` enables maj@k (e.g. ``verify_math.extract_final_answer``); ``same_answer(a, b)``
    (e.g. ``verify_math.math_equal``) makes answers it calls equal one vote (:func:`group_equal`).
    ``reward_prompts``: the prompts as the reward sees them, when ``prompts`` are rows (default: prompts)."""
    from alignlab.rollout.generate import generate
    from alignlab.rollout.rewards import score

    if any(not 1 <= k <= n for k in ks):
        raise AlignlabError(f"pass@k: every k must be in [1, n={n}] (got {list(ks)})")
    result = generate(model, tokenizer, list(prompts), sampling, n=n)
    texts = [s.text for s in result.samples]  # prompt-major: sample j of prompt i at i * n + j
    expanded = {key: [v for v in values for _ in range(n)] for key, values in fields.items()}
    seen = prompts if reward_prompts is None else reward_prompts
    values = score(reward_fn, [p for p in seen for _ in range(n)], texts, **expanded)
    rewards = [values[i * n:(i + 1) * n] for i in range(len(prompts))]
    answers = None
    if extract is not None:
        answers = [[extract(t) for t in texts[i * n:(i + 1) * n]] for i in range(len(prompts))]
        if same_answer is not None:
            answers = [group_equal(a, same_answer) for a in answers]
    out = passk_summary(rewards, ks, answers=answers, threshold=threshold)
    out["mean_reward"] = sum(values) / len(values)
    out["tokens_per_second"] = result.tokens_per_second
    return out
