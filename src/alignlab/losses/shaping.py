"""Batch shaping for RL from verifiable rewards: length-aware rewards and which samples train.

Pure functions on per-sample tensors (``n = groups * k`` samples, the ``k`` samples of one prompt
consecutive, as the rollout lays them out) plus :class:`GroupAccumulator`, the small state DAPO's
dynamic sampling keeps across resample rounds. Nothing here touches a model.

- :func:`overlong_penalty`: DAPO's soft overlong punishment (Yu et al. 2025, Eq. 13).
- :func:`kimi_length_penalty`: Kimi k1.5's length reward (Kimi Team 2025, Sec. 2.3.3).
- :func:`dynamic_sampling_keep` / :class:`GroupAccumulator`: DAPO's dynamic sampling (Sec. 3.2).
- :func:`truncation_mask`: drop truncated samples from the loss (``mask_truncated``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from alignlab.errors import AlignlabError

__all__ = [
    "GroupAccumulator",
    "dynamic_sampling_keep",
    "kimi_length_penalty",
    "overlong_penalty",
    "truncation_mask",
]


def _as_float(x: Tensor | Sequence[float]) -> Tensor:
    return x.to(torch.float64) if isinstance(x, Tensor) else torch.tensor(list(x), dtype=torch.float64)


def overlong_penalty(
    lengths: Tensor | Sequence[int], max_tokens: int, buffer: int, penalty: float = 1.0
) -> Tensor:
    """DAPO soft overlong punishment (Yu et al. 2025, "DAPO", Sec. 3.4, Eq. 13), to ADD to the rewards.

    With ``L_max = max_tokens`` and ``L_cache = buffer``, for a response of ``|y|`` tokens::

        0                                   if |y| <= L_max - L_cache
        ((L_max - L_cache) - |y|) / L_cache if L_max - L_cache < |y| <= L_max   (linear, 0 to -1)
        -1                                  if |y| > L_max

    times ``penalty`` (the paper's value is 1.0; DAPO uses L_max = 20480, L_cache = 4096).
    Returns a float64 tensor [n] of values in ``[-penalty, 0]``.
    """
    if buffer <= 0 or max_tokens <= buffer:
        raise AlignlabError(f"overlong: need 0 < buffer < max_tokens (got buffer={buffer}, max_tokens={max_tokens})")
    if penalty < 0:
        raise AlignlabError(f"overlong.penalty: must be >= 0 (got {penalty})")
    n = _as_float(lengths)
    soft_start = max_tokens - buffer
    ramp = (soft_start - n) / buffer
    out = torch.where(n <= soft_start, torch.zeros_like(n), torch.where(n <= max_tokens, ramp, -torch.ones_like(n)))
    return penalty * out


def kimi_length_penalty(
    rewards_correct_bool: Tensor | Sequence[bool], lengths: Tensor | Sequence[int], k: int
) -> Tensor:
    """Kimi k1.5 length reward (Kimi Team 2025, "Kimi k1.5", Sec. 2.3.3), to ADD to the rewards.

    Within each group of ``k`` answers to one prompt, with ``min_len``/``max_len`` the group's shortest
    and longest answer::

        lambda_i   = 0.5 - (len_i - min_len) / (max_len - min_len)
        len_reward = lambda_i          if answer i is correct
                     min(0, lambda_i)  if it is wrong

    so shorter correct answers gain up to +0.5, longer ones lose up to -0.5, and wrong answers are
    only ever penalised (for being longer than the group's midpoint). When every answer in a group
    has the same length the rule is undefined (0/0) and the reward is 0. The paper also warms this
    term up over training (a caller's schedule, not done here). Returns float64 [n].
    """
    correct = torch.as_tensor(
        rewards_correct_bool.tolist() if isinstance(rewards_correct_bool, Tensor) else list(rewards_correct_bool),
        dtype=torch.bool,
    )
    n = _as_float(lengths)
    groups = _grouped(n, k, "kimi_length_penalty")
    lo, hi = groups.min(-1, keepdim=True).values, groups.max(-1, keepdim=True).values
    span = hi - lo
    lam = torch.where(span > 0, 0.5 - (groups - lo) / span.clamp(min=1e-12), torch.zeros_like(groups)).reshape(-1)
    if correct.shape != lam.shape:
        raise AlignlabError(f"kimi_length_penalty: {correct.numel()} correctness flags for {lam.numel()} lengths")
    return torch.where(correct, lam, lam.clamp(max=0.0))


def _grouped(x: Tensor, k: int, who: str) -> Tensor:
    if k < 1 or x.dim() != 1 or x.numel() % k:
        raise AlignlabError(f"{who}: {tuple(x.shape)} values do not split into groups of k={k}")
    return x.reshape(-1, k)


def dynamic_sampling_keep(rewards: Tensor | Sequence[float], k: int) -> Tensor:
    """DAPO dynamic sampling (Yu et al. 2025, Sec. 3.2, the constraint of Eq. 11): a bool mask [n/k],
    True for the groups whose ``k`` rewards are not all equal. A group where every answer is right
    (or every one wrong) has zero group-normalised advantage and so no gradient: it only dilutes the batch.
    """
    g = _grouped(_as_float(rewards), k, "dynamic_sampling_keep")
    return (g.max(-1).values - g.min(-1).values) > 0


class GroupAccumulator:
    """Collects groups with reward spread across resample rounds until a batch is full (DAPO Sec. 3.2).

    Usage (the rollout calls it; ``items`` are whatever identifies a group, one per group)::

        acc = GroupAccumulator(target_groups=8, k=4, max_resample_rounds=3)
        while acc.needs_more():
            rewards, items = sample_more_prompts()
            acc.add(rewards, items)
        kept, stats = acc.take()

    The first ``add`` is the regular sampling round; at most ``max_resample_rounds`` further rounds
    follow. ``take`` returns at most ``target_groups`` items, in arrival order, never one whose
    rewards were all equal; when the rounds ran out first it returns fewer (possibly none) and says
    so in ``stats``. Stats: ``dynamic_sampling/dropped_groups`` (zero-spread groups discarded),
    ``.../kept_groups``, ``.../surplus_groups`` (spread groups beyond the target, discarded),
    ``.../rounds`` (sampling rounds used) and ``.../short_groups`` (target minus kept).
    """

    def __init__(self, target_groups: int, k: int, max_resample_rounds: int):
        if target_groups < 1 or k < 1 or max_resample_rounds < 0:
            raise AlignlabError(
                "dynamic_sampling: need target_groups >= 1, k >= 1, max_resample_rounds >= 0 "
                f"(got {target_groups}, {k}, {max_resample_rounds})"
            )
        self.target_groups, self.k, self.max_resample_rounds = target_groups, k, max_resample_rounds
        self._kept: list[Any] = []
        self._dropped = 0
        self._rounds = 0

    @property
    def full(self) -> bool:
        return len(self._kept) >= self.target_groups

    def needs_more(self) -> bool:
        """True while the batch is not full and a (re)sampling round is still allowed."""
        return not self.full and self._rounds <= self.max_resample_rounds

    def add(self, rewards: Tensor | Sequence[float], items: Sequence[Any]) -> None:
        """Add one round's groups: ``rewards`` [len(items) * k], group-major; keeps those with spread."""
        if not self.needs_more():
            raise AlignlabError("dynamic_sampling: add() after the batch is full or the rounds ran out")
        keep = dynamic_sampling_keep(rewards, self.k)
        if keep.numel() != len(items):
            raise AlignlabError(f"dynamic_sampling: {keep.numel()} groups of rewards for {len(items)} items")
        self._rounds += 1
        self._dropped += int((~keep).sum())
        self._kept.extend(item for item, ok in zip(items, keep.tolist()) if ok)

    def take(self) -> tuple[list[Any], dict[str, float]]:
        """The kept items (at most ``target_groups``) and the round's statistics."""
        kept = self._kept[: self.target_groups]
        stats = {
            "dynamic_sampling/dropped_groups": float(self._dropped),
            "dynamic_sampling/kept_groups": float(len(kept)),
            "dynamic_sampling/surplus_groups": float(len(self._kept) - len(kept)),
            "dynamic_sampling/rounds": float(self._rounds),
            "dynamic_sampling/short_groups": float(self.target_groups - len(kept)),
        }
        return kept, stats


_FINISHED = {"eos": 1.0, "stop": 1.0, "length": 0.0}


def truncation_mask(finish_reasons: Sequence[str]) -> Tensor:
    """``mask_truncated`` (DAPO Sec. 3.4's overlong filtering): float32 [n], 0.0 for samples cut at
    the token limit (finish reason "length"), 1.0 for those that ended ("eos", or a "stop" string).
    Multiply it into the response mask so truncated samples carry no loss."""
    bad = [(i, r) for i, r in enumerate(finish_reasons) if r not in _FINISHED]
    if bad:
        raise AlignlabError(
            f"truncation_mask: sample {bad[0][0]} has finish reason {bad[0][1]!r}; expected one of {sorted(_FINISHED)}"
        )
    return torch.tensor([_FINISHED[r] for r in finish_reasons], dtype=torch.float32)
