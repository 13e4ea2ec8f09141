"""Score a policy on held-out prompts: mean reward of its samples and KL(policy || reference) from them.

`score_policy` is what the demo and the frontier experiment measure at every point (DPO paper, Sec. 6.1:
reward against sequence KL). Samples are drawn at temperature 1 by `rollout.generate`; the reward sees each
row's prompt (`prompt_text`) and, when the rows carry one, its `answer`; both log-probs for the KL come
from the same plain forward (eval/credit.py), and the KL estimators are those of eval/kl.py (k1, k3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


def prompt_text(row: Any) -> Any:
    """What a reward sees as the prompt: plain text for chat=False rows, the messages otherwise."""
    return "".join(m["content"] for m in row.prompt) if not row.chat else row.prompt


def score_rows(reward_fn: Callable, rows: Sequence[Any], texts: list[str], k: int) -> list[float]:
    """Reward of each completion; rows[i] is repeated k times to line up with its k samples."""
    from alignlab.rollout.rewards import score
    from alignlab.rollout.sampling import row_fields

    expanded = [r for r in rows for _ in range(k)]
    return score(reward_fn, [prompt_text(r) for r in expanded], texts, **row_fields(list(rows), k))


@dataclass
class PolicyScore:
    """Mean reward and KL to the reference of samples from one policy on held-out prompts."""

    reward: float
    reward_se: float
    kl: Any
    """eval.kl.KLEstimate (k1, k3 with standard errors), or None when the policy is the reference itself."""
    texts: list[str]
    rewards: list[float]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]


def score_policy(model: Any, tokenizer: Any, rows: Sequence[Any], reward_fn: Callable, *, n: int = 1,
                 max_new_tokens: int = 24, seed: int = 0, reference: Any = None, with_kl: bool = True,
                 batch_size: int = 64, temperature: float = 1.0) -> PolicyScore:
    """Sample n completions per row from `model`, score them, and estimate KL(model || reference) from the
    same samples (reference None: the disabled LoRA adapter). Both log-probs come from the same plain
    forward (eval/credit.py), so a policy equal to its reference gives exactly 0."""
    import math

    import torch

    from alignlab.eval.credit import completion_logps, reference_forward
    from alignlab.eval.kl import sequence_kl
    from alignlab.rollout.generate import SamplingConfig, generate

    sc = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, batch_size=batch_size)
    res = generate(model, tokenizer, list(rows), sc, n=n)
    texts = [s.text for s in res.samples]
    rewards = score_rows(reward_fn, list(rows), texts, n)
    prompts = [s.prompt_ids for s in res.samples]
    comps = [s.completion_ids for s in res.samples]
    kl = None
    if with_kl:
        pad = tokenizer.pad_token_id if isinstance(tokenizer.pad_token_id, int) else 0
        pol = completion_logps(model, prompts, comps, batch_size=batch_size, pad_id=pad)
        with reference_forward(model, reference) as ref_model:
            ref = completion_logps(ref_model, prompts, comps, batch_size=batch_size, pad_id=pad)
        width = max(len(c) for c in comps)

        def padded(xs: list[list[float]]) -> torch.Tensor:
            return torch.tensor([x + [0.0] * (width - len(x)) for x in xs], dtype=torch.float64)

        mask = padded([[1.0] * len(c) for c in comps])
        kl = sequence_kl(padded(pol), padded(ref), mask)
    mean = sum(rewards) / len(rewards)
    var = sum((r - mean) ** 2 for r in rewards) / max(len(rewards) - 1, 1)
    return PolicyScore(mean, math.sqrt(var / len(rewards)), kl, texts, rewards, prompts, comps)
