"""Buffers the training loops keep across passes: scratch blocks and per-step weight casts.

On a CPU a fresh block of tens of MB is a new mapping the kernel zero-fills page by page on first touch, which
costs 5-10x the copy or matmul written into it (a [517, 49152] bf16 -> float32 upcast: 51 ms fresh, 4.4 ms into
a reused buffer; SmolLM2's [49152, 576] head cast: 32 ms against 5.6 ms; AMD EPYC, 1 thread). Inside
`reused_buffers` (the train and RL loops hold it for the whole run) such blocks are kept and written over:

- `scratch(slot, ...)`: an uninitialised block per slot, grown when a larger one is asked for;
- `kept_block(slot, shape, ...)`: the same for a tensor handed to autograd as a gradient;
- `kept_cast(weight, dtype)`: a trainable weight's low-precision copy, made once per optimizer step (not once
  per forward: grad_accum micro-batches share it) and written into the same block every step.

Same numbers as fresh tensors (tests). Weights change in an optimizer step without telling anyone (the fused AdamW
writes them without bumping their version counters), so the optimizer-step core calls `weights_updated()` after
each step; any other in-place change is caught by the weight's version counter.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_LOCAL = threading.local()
_GENERATION = [0]  # optimizer steps taken in this process (any optimizer, any thread)


@contextmanager
def reused_buffers() -> Iterator[None]:
    """Inside (this thread): scratch blocks and trainable weights' casts outlive a pass; freed on exit."""
    if getattr(_LOCAL, "buffers", None) is not None:  # nested: the outer scope owns them
        yield
        return
    _LOCAL.buffers = {}
    try:
        yield
    finally:
        _LOCAL.buffers = None


def active() -> bool:
    """True inside `reused_buffers` on this thread."""
    return getattr(_LOCAL, "buffers", None) is not None


def weights_updated() -> None:
    """Called after every optimizer step: kept casts of trainable weights are stale from here on."""
    _GENERATION[0] += 1


def scratch(slot: str, rows: int, cols: int, like: Any, dtype: Any) -> Any:
    """An uninitialised [rows, cols] tensor: a view of the slot's kept block inside `reused_buffers`, else new.
    Valid until the slot is asked for again."""
    kept = getattr(_LOCAL, "buffers", None)
    if kept is None:
        return like.new_empty(rows, cols, dtype=dtype)
    key = (slot, dtype, like.device)
    buf = kept.get(key)
    if buf is None or buf.numel() < rows * cols:
        buf = kept[key] = like.new_empty(rows * cols, dtype=dtype)
    return buf[: rows * cols].view(rows, cols)


def kept_block(slot: str, shape: tuple[int, ...], like: Any, dtype: Any) -> Any:
    """An uninitialised tensor of `shape`; inside `reused_buffers` the slot's kept tensor itself (not a view), so
    autograd, seeing this module's reference to it, never adopts it as a `.grad` (it copies it or adds it in)."""
    kept = getattr(_LOCAL, "buffers", None)
    if kept is None:
        return like.new_empty(shape, dtype=dtype)
    key = (slot, tuple(shape), dtype, like.device)
    if key not in kept:
        kept[key] = like.new_empty(shape, dtype=dtype)
    return kept[key]


def kept_cast(weight: Any, dtype: Any) -> Any:
    """`weight.detach().to(dtype)`; inside `reused_buffers` the same kept tensor until the next optimizer step
    or an in-place change of `weight`, recast into the same block after either. Outside: a fresh cast."""
    kept = getattr(_LOCAL, "buffers", None)
    if kept is None:
        return weight.detach().to(dtype)
    key = ("cast", id(weight), dtype)
    hit = kept.get(key)
    stamp = (_GENERATION[0], weight._version)
    if hit is not None and hit[0]() is weight:
        if hit[1] != stamp:
            hit[2].copy_(weight.detach())
            kept[key] = (hit[0], stamp, hit[2])
        return hit[2]
    low = weight.detach().to(dtype)
    kept[key] = (weakref.ref(weight), stamp, low)
    return low
