"""Memory the training loops keep across passes: freed blocks, scratch blocks and per-step weight casts.

On a CPU a fresh block of memory is a new mapping the kernel zero-fills page by page on first touch, which costs
5-10x the copy or matmul written into it (a [517, 49152] bf16 -> float32 upcast: 51 ms fresh, 4.4 ms into a reused
buffer; SmolLM2's [49152, 576] head cast: 32 ms against 5.6 ms; AMD EPYC, 1 thread). glibc's malloc serves every
block above its mmap threshold (at most 32 MB) from a fresh mapping and unmaps it on free, so a training step paid
that again for each activation, gradient and temporary: `perf` on the DPO benchmark step put 17% of all samples in
the kernel's clear_page, and the process took ~230k page faults (~900 MB of zero-filled pages) per step. Inside
`reused_buffers` (the train and RL loops hold it for the whole run):

- glibc keeps freed blocks up to 32 MB in its heap and its heap mapped, so a step reuses the pages the previous
  one touched: DPO benchmark job (SmolLM2, bf16, 1 thread, AMD EPYC, 9 steps, two runs each way) page faults
  2.95-3.19M -> 1.70-1.75M, median step 6.64-7.14 s -> 6.31-6.35 s, peak RSS +40 MB (0.8%). Larger blocks (a
  [V, H] float32 gradient) still get fresh mappings. On exit glibc's trimming comes back and the heap is trimmed;
- `scratch(slot, ...)`: an uninitialised block per slot, grown when a larger one is asked for; `gradient_block`
  lends one as a gradient autograd never adopts (the LM head's block to the input embedding's backward, a tied
  head's gradient: ops/embedding.py);
- `kept_cast(weight, dtype)`: a trainable weight's low-precision copy, made once per optimizer step (not once
  per forward: grad_accum micro-batches share it) and written into the same block every step;
- `frozen_cast(weight, dtype)`: a frozen weight's (a reference's tied head) low-precision copy, kept in the process
  until the weight changes in place or a training loop opens or closes `reused_buffers` (the weight may have been
  trained in between: a fused optimizer step does not bump its version counter);
- `keep_gradients` / `reuse_gradient`: a gradient too large for the heap (SmolLM2's [V, H] embedding, 113 MB) whose
  backward asks for it back is kept when the step core sets `.grad` to None, and given back, zeroed, as that
  parameter's `.grad` by the input embedding's next backward (ops/embedding.py), so autograd adds into it in place
  instead of copying into a fresh mapping: ~28 ms against ~200 ms a step (Xeon, one thread). Only a block nothing else holds (no other reference,
  no view) is reused, so a gradient someone kept from an earlier step is never overwritten.

Same numbers as fresh tensors (tests). Weights change in an optimizer step without telling anyone (the fused AdamW
writes them without bumping their version counters), so the optimizer-step core calls `weights_updated()` after
each step, and the loop after its callbacks' evaluation and save events; any other in-place change is caught by
the weight's version counter, except a write through `.data`, which autograd does not see: call `weights_updated()`.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_LOCAL = threading.local()
_GENERATION = [0]  # optimizer steps taken in this process (any optimizer, any thread)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_KEEPING = [0]  # reused_buffers scopes open in this process (mallopt is process-wide)
_KEEP_LOCK = threading.Lock()
_MAX_HEAP_BLOCK = 32 * 2**20  # the mmap threshold set below: larger blocks are fresh mappings
_FROZEN_CASTS: dict[int, tuple[Any, int, Any, Any]] = {}  # id(weight) -> (weakref, version, dtype, cast)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL("libc.so.6")
        return lib if hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else None
    except OSError:  # musl and other C libraries: their own allocator policy stays
        return None


def _keep_freed_memory(keep: bool) -> None:
    """glibc: keep freed blocks for reuse (first scope opened) / trim again, and now (last one closed)."""
    lib = _glibc()
    if lib is None:
        return
    with _KEEP_LOCK:
        _KEEPING[0] += 1 if keep else -1
        if keep and _KEEPING[0] == 1:
            # Blocks up to 32 MB (the most glibc's own adaptive threshold reaches) from the heap, and the heap
            # shrunk only past 256 MB free at its top. Larger blocks keep their own mappings: served from the heap,
            # torch's 64-byte aligned requests fragment it (a 64 MB tensor allocated and freed in a loop held 12x
            # its size before reusing; an 8 MB one 9x, then steady).
            lib.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)
            lib.mallopt(_M_TRIM_THRESHOLD, 256 * 2**20)
        elif not keep and _KEEPING[0] == 0:
            lib.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)  # glibc's default
            lib.malloc_trim(0)


@contextmanager
def reused_buffers() -> Iterator[None]:
    """Inside: freed memory is kept for reuse (process-wide, glibc), and this thread's scratch blocks and trainable
    weights' casts outlive a pass; all given back on exit."""
    if getattr(_LOCAL, "buffers", None) is not None:  # nested: the outer scope owns them
        yield
        return
    _LOCAL.buffers = {}
    _FROZEN_CASTS.clear()  # frozen now, maybe trained before (by another run in this process)
    _keep_freed_memory(True)
    try:
        yield
    finally:
        _LOCAL.buffers = None
        _FROZEN_CASTS.clear()  # frozen in this run, maybe trained after it
        _keep_freed_memory(False)


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


def gradient_block(rows: int, cols: int, like: Any, dtype: Any, slot: str = "logits") -> Any:
    """An uninitialised [rows, cols] tensor to return as a gradient: inside `reused_buffers` a view of the slot's
    scratch block (by default "logits", the chunked LM head's, idle by the time an input embedding's backward runs:
    that backward needs the head's), the same view object every time. Autograd sees this module's reference to it
    and so never adopts it as a `.grad` (it adds it in, or copies it); a fresh view of the block would be adopted."""
    kept = getattr(_LOCAL, "buffers", None)
    if kept is None:
        return like.new_empty(rows, cols, dtype=dtype)
    view = scratch(slot, rows, cols, like, dtype)
    key = ("gradient_block", slot, rows, cols, dtype, like.device)
    if key not in kept or kept[key].data_ptr() != view.data_ptr():  # new, or the slot has grown since
        kept[key] = view
    return kept[key]


def frozen_cast(weight: Any, dtype: Any) -> Any:
    """`weight.detach().to(dtype)` for a frozen weight, the same tensor on every call until `weight` changes in place
    (its version counter) or a `reused_buffers` scope opens or closes: a reference's [V, H] head cast once, not per
    forward (~0.2 s a step for SmolLM2's 49k x 576 on one core). Dropped with the weight."""
    key = id(weight)
    hit = _FROZEN_CASTS.get(key)
    if hit is not None and hit[0]() is weight and hit[1] == weight._version and hit[2] == dtype:
        return hit[3]
    low = weight.detach().to(dtype)
    _FROZEN_CASTS[key] = (weakref.ref(weight, lambda _, k=key: _FROZEN_CASTS.pop(k, None)), weight._version,
                          dtype, low)
    return low


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


def keep_gradients(params: Any) -> None:
    """Inside `reused_buffers`: keep each gradient above the heap's block size that `reuse_gradient` has asked for
    (a backward that gives it back: the input embedding's). The step core calls it just before it sets the
    gradients to None. Any other kept gradient stayed alive through the next step beside its fresh one: a second
    copy of every large gradient (an untied head, a 7B model's matrices) at the peak."""
    kept = getattr(_LOCAL, "buffers", None)
    if kept is None:
        return
    wanted = kept.get("grad_wanted", {})
    for p in params:
        ref = wanted.get(id(p))
        if ref is None or ref() is not p:
            continue
        g = p.grad
        if g is not None and g.numel() * g.element_size() > _MAX_HEAP_BLOCK and g.is_contiguous() and not g.is_sparse:
            kept[("grad", id(p))] = (weakref.ref(p), g)


def reuse_gradient(param: Any) -> None:
    """Give `param` its kept gradient block back as a zeroed `.grad` if it has none yet this step and nothing but
    this module holds that block (autograd then accumulates into it in place)."""
    import torch

    kept = getattr(_LOCAL, "buffers", None)
    if kept is None:
        return
    kept.setdefault("grad_wanted", {})[id(param)] = weakref.ref(param)  # keep_gradients keeps this one from now on
    if param.grad is not None:
        return
    hit = kept.pop(("grad", id(param)), None)
    if hit is None or hit[0]() is not param:
        return
    grad = hit[1]
    del hit
    # Held here only (this name and getrefcount's argument), and its storage by this tensor alone (the count
    # includes the temporary storage object): no one's earlier gradient gets overwritten. A torch without the
    # (private) storage count never reuses.
    uses = getattr(torch._C, "_storage_Use_Count", None)
    sole = uses is not None and sys.getrefcount(grad) == 2 and uses(grad.untyped_storage()._cdata) == 2
    if sole and grad.shape == param.shape and grad.dtype == param.dtype and grad.device == param.device:
        param.grad = grad.zero_()
