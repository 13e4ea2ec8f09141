"""What the optimizer steps since the last logged one add up to, and the metrics.jsonl row made of them.

A step's metrics come from train.step.optimizer_step as weighted sums with, per key, the share of the global
batch it was measured on: a metric a micro-batch does not report (KTO's rewards/rejected for a micro-batch of
desirable examples only) is averaged over the micro-batches and steps that did, never as if it were 0 (as
TRL's sum-and-count logging does). Sums and weights are added over ranks at logging time, over the union of
the keys any rank holds, so ranks that saw different keys still meet in the same collectives.

The window is part of a checkpoint (`state`, reduced over ranks and held by rank 0 after `restore`), so the
first row after a resume and `num_tokens` from then on equal an uninterrupted run's.
"""

from __future__ import annotations

from typing import Any

from alignlab.train.metrics import peak_memory_mb
from alignlab.train.step import add_margins
from alignlab.train.world import World


def reduce_keys(world: World, values: dict[str, float]) -> dict[str, float]:
    """Each key's sum over ranks, for the union of the ranks' keys (0 where a rank has none)."""
    keys = sorted({k for part in world.all_gather_objects(sorted(values)) for k in part}) if world.size > 1 \
        else sorted(values)
    return {k: world.all_reduce_sum(values.get(k, 0.0)) for k in keys}


class LogWindow:
    def __init__(self) -> None:
        self.seen_tokens = 0.0  # input tokens (no padding) since the run started, as TRL logs num_tokens
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.grad_norm, self.steps, self.tokens, self.seconds = 0.0, 0, 0.0, 0.0

    def add(self, metrics: dict[str, float], weights: dict[str, float]) -> None:
        """One step's weighted metric sums and each key's weight (train.step.StepOutput)."""
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.weights[k] = self.weights.get(k, 0.0) + weights[k]

    def end_step(self, grad_norm: float, seconds: float) -> None:
        self.grad_norm += grad_norm
        self.steps += 1
        self.seconds += seconds

    def row(self, world: World, *, lr: float, batch_size: int, unit: str, device: str) -> dict[str, float]:
        """Means over the window (task metrics over ranks; the grad norm is already global), then reset."""
        sums, weights = reduce_keys(world, self.sums), reduce_keys(world, self.weights)
        row = add_margins({k: v / weights[k] for k, v in sums.items() if weights[k] > 0})
        row["grad_norm"] = self.grad_norm / self.steps
        row["learning_rate"] = lr
        tokens = world.all_reduce_sum(self.tokens)
        self.seen_tokens += tokens
        row["tokens_per_second"] = tokens / max(self.seconds, 1e-9)
        row[f"{unit}_per_second"] = self.steps * batch_size / max(self.seconds, 1e-9)  # batch_size is global
        row["num_tokens"] = self.seen_tokens
        row["peak_memory_mb"] = peak_memory_mb(device)
        self._reset()
        return row

    def state(self, world: World) -> dict[str, Any]:
        """The window so far, over all ranks (a collective: every rank calls it), for a checkpoint."""
        return {"sums": reduce_keys(world, self.sums), "weights": reduce_keys(world, self.weights),
                "grad_norm": self.grad_norm, "steps": self.steps, "tokens": world.all_reduce_sum(self.tokens),
                "seconds": self.seconds, "seen_tokens": self.seen_tokens}

    def restore(self, state: dict[str, Any] | None, world: World) -> None:
        """Continue a checkpoint's window: rank 0 holds the global sums, the others start from 0 (their part is
        in rank 0's), so `row` adds up to what an uninterrupted run logs."""
        if not state:
            return
        self.seen_tokens = state["seen_tokens"]
        self.grad_norm, self.steps, self.seconds = state["grad_norm"], state["steps"], state["seconds"]
        if world.is_main:
            self.sums, self.weights, self.tokens = dict(state["sums"]), dict(state["weights"]), state["tokens"]
