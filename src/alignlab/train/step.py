"""The optimizer-step core every trainer shares: the offline loop (train/loop.py) and online RL (rl/update.py).

One optimizer step = a list of micro-batches, each a forward returning `(loss, metrics)` where `loss` is the
MEAN over that micro-batch's units (trained tokens, pairs, sequences) and `weight` the number of those units.
Each micro-batch's backward is scaled by `weight * world_size / total`, with `total` the units of the whole
global batch (summed over ranks), so the accumulated gradient is the global-batch mean whatever grad_accum
and world size are (DDP averages over ranks, hence the world-size factor; the gradient-accumulation fix HF
Trainer applies with `num_items_in_batch`).

Order of the guards matters: a non-finite loss stops before its backward, a non-finite gradient norm stops
BEFORE `optimizer.step()`, so the weights and AdamW moments on disk and in memory are never poisoned.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from alignlab.errors import AlignlabError

Forward = Callable[[], tuple[Any, dict[str, Any]]]


class NonFiniteStep(AlignlabError):
    """A loss or the gradient norm was NaN/inf; nothing was applied. `micro` is the micro-batch (None: the norm)."""

    def __init__(self, what: str, value: float, micro: int | None):
        super().__init__(f"{what} is {value}")
        self.what, self.value, self.micro = what, value, micro


@dataclass
class StepOutput:
    grad_norm: float
    """Global gradient norm before clipping."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Each micro-batch's `loss` and metrics weighted to this rank's share of the global-batch mean (sum them
    over ranks for the global mean)."""
    weights: dict[str, float] = field(default_factory=dict)
    """Per key, the share of the global batch it was measured on, on this rank (summed over ranks: 1 for a key
    every micro-batch reports). A metric some micro-batches leave out is its sum over this weight, not over 1; a
    `Weighted` one's weight is its own units' count."""


class Weighted(NamedTuple):
    """A metric that is a mean over units of its own, not the loss's (a token mean under a per-sequence loss): the
    step weighs it by `weight`, so its logged value is the mean over every unit of the global batch whatever the
    micro-batches and ranks (TRL all-reduces such metrics' sums and counts)."""

    value: Any
    weight: float

    @staticmethod
    def split(v: Any, default: float) -> tuple[Any, float]:
        """(value, weight) of a metric: its own weight when Weighted, else `default` (the batch's share)."""
        return (v.value, _float(v.weight)) if isinstance(v, Weighted) else (v, default)


def add_margins(row: dict[str, float]) -> dict[str, float]:
    """rewards/margins = rewards/chosen - rewards/rejected where the step left it out (KTO: its two means weigh
    different example counts, so only their reduced values give the margin); `row` itself, for chaining."""
    if "rewards/margins" not in row and "rewards/chosen" in row and "rewards/rejected" in row:
        row["rewards/margins"] = row["rewards/chosen"] - row["rewards/rejected"]
    return row


def _float(x: Any) -> float:
    return float(x.item()) if hasattr(x, "item") else float(x)


def optimizer_step(
    optimizer: Any,
    micro_batches: Sequence[Forward],
    weights: Sequence[float],
    *,
    total: float,
    world_size: int = 1,
    max_grad_norm: float = 0.0,
    sync: Callable[[bool], AbstractContextManager] | None = None,
    compute: Callable[[], AbstractContextManager] | None = None,
) -> StepOutput:
    """Accumulate the micro-batches' gradients, check, clip, step and zero the gradients.

    total: units in the global batch (all ranks). sync(is_last) is the gradient-sync context of a micro-batch
    (DDP's no_sync before the last one; FSDP's equivalent); compute() wraps each forward+backward (autocast).
    Raises NonFiniteStep before any update when a loss or the gradient norm is not finite."""
    import torch

    from alignlab.ops.buffers import keep_gradients, weights_updated

    params = [p for g in optimizer.param_groups for p in g["params"]]
    sums: dict[str, float] = {}
    shares: dict[str, float] = {}
    last = len(micro_batches) - 1
    for m, (forward, w) in enumerate(zip(micro_batches, weights)):
        scale = w * world_size / max(total, 1e-12)
        with (sync(m == last) if sync else nullcontext()), (compute() if compute else nullcontext()):
            loss, metrics = forward()
            if not torch.isfinite(loss.detach()):
                optimizer.zero_grad(set_to_none=True)
                raise NonFiniteStep("loss", float(loss.detach()), m)
            (loss * scale).backward()
        for k, v in {"loss": loss, **metrics}.items():
            v, share = Weighted.split(v, scale / world_size)
            sums[k] = sums.get(k, 0.0) + _float(v) * share
            shares[k] = shares.get(k, 0.0) + share
    max_norm = max_grad_norm if max_grad_norm > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteStep("gradient norm", grad_norm, None)
    optimizer.step()
    weights_updated()  # kept low-precision casts of the weights are stale now (ops/buffers.py)
    keep_gradients(params)  # a gradient too large for the heap is reused next step (ops/buffers.py)
    optimizer.zero_grad(set_to_none=True)
    return StepOutput(grad_norm, sums, shares)
