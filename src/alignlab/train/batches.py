"""Which examples an optimizer step takes, and what its batches hold (train/loop.py's helpers).

Data order is a pure function of (seed, step): each epoch is a seeded permutation, an optimizer
step takes the next `batch_size` indices, micro-step m on rank r takes its slice. Resuming therefore
needs only the step; checkpoints still record the data position for readers.
"""

from __future__ import annotations

import math

from alignlab.errors import AlignlabError
from alignlab.train.config import TrainConfig
from alignlab.train.world import World


def total_steps(cfg: TrainConfig, num_examples: int) -> int:
    steps_per_epoch = num_examples // cfg.batch_size
    if steps_per_epoch == 0:
        raise AlignlabError(f"only {num_examples} training examples for batch_size {cfg.batch_size}")
    # rounded before the ceiling: 1.1 epochs of 100 steps is 110.00000000000001 in floats, not 111 steps
    return cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(round(cfg.epochs * steps_per_epoch, 9)))


def epoch_note(num_examples: int, batch_size: int, unit: str = "examples") -> str | None:
    """What a run says when the data do not fill whole batches: each epoch leaves the rest out (a different rest
    each epoch, each being its own shuffle), which a user expecting every example once per epoch should know."""
    rest = num_examples % batch_size
    if not rest:
        return None
    return (f"each epoch trains {num_examples - rest} of the {num_examples} {unit} (whole batches of {batch_size}); "
            f"the {rest} left over differ from epoch to epoch")


class Sampler:
    """Global sample j -> dataset index; epochs are seeded permutations, the partial last batch is dropped."""

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = num_examples, batch_size, seed
        self.per_epoch = (num_examples // batch_size) * batch_size
        self._epoch, self._perm = -1, None

    def _perm_of(self, epoch: int):
        import torch

        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g).tolist()
        return self._perm

    def step_indices(self, step: int) -> list[int]:
        """The `batch_size` dataset indices of optimizer step `step` (all ranks, all micro-steps)."""
        out = []
        for j in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, pos = divmod(j, self.per_epoch)
            out.append(self._perm_of(epoch)[pos])
        return out

    def micro_indices(self, step: int, grad_accum: int, world: World) -> list[list[int]]:
        """This rank's indices for each micro-step of optimizer step `step`."""
        idx = self.step_indices(step)
        chunk = len(idx) // grad_accum
        micro = chunk // world.size
        return [idx[m * chunk + world.rank * micro: m * chunk + (world.rank + 1) * micro] for m in range(grad_accum)]


def batch_weight(batch: dict) -> float:
    """How many loss units a batch holds: `num_items`, else trained tokens (labels shifted by one), else 1."""
    if "num_items" in batch:
        return float(batch["num_items"])
    labels = batch.get("labels")
    if labels is not None and hasattr(labels, "ne"):
        return float(labels[..., 1:].ne(-100).sum().item())
    return 1.0


def step_totals(batches: list[dict], units: float, world: World) -> None:
    """Give every micro-batch the optimizer step's totals over all micro-batches and ranks: `units` (what
    batch_weight counts) and each count a batch names in `totals`, as batch["step_totals"]. A step function
    whose loss has a term averaged over other units (the chosen-NLL of sft/RPO/ORPO mixes: chosen tokens, under
    a pair-weighted step) scales that term by them, so the step's gradient stays what one micro-batch holding
    the whole global batch gives, whatever grad_accum and world size are (HF's num_items_in_batch)."""
    names = sorted({k for b in batches for k in b.get("totals", {})})
    sums = {k: world.all_reduce_sum(sum(float(b.get("totals", {}).get(k, 0)) for b in batches)) for k in names}
    for b in batches:
        b["step_totals"] = {"units": units, **sums}


def count_tokens(batch: dict) -> int:
    """Real (non-pad) input tokens in a batch, for tokens/s."""
    if "num_tokens" in batch:
        return int(batch["num_tokens"])
    mask = batch.get("attention_mask")
    if mask is not None:
        return int(mask.sum().item())
    ids = batch.get("input_ids")
    return int(ids.numel()) if ids is not None else 0


def to_device(batch: dict, device: str) -> dict:
    return {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in batch.items()}
