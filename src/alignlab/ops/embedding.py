"""A trainable input embedding whose backward writes its dense gradient into a kept block, or into a tied head's.

The gradient of a [V, H] embedding is dense: aten zero-fills a fresh [V, H] tensor and adds each token's row
into it. For SmolLM2 that is 113 MB per backward, above glibc's largest mmap threshold (32 MB), so a new mapping
the kernel zero-fills page by page every micro-batch (~110 ms on one core of the AMD EPYC; an SFT profile at 2
threads: 2.05 s of 24 s over 16 micro-batches). Inside the training loops' `reused_buffers` the gradient is formed
in the chunked LM head's logits block instead (`buffers.gradient_block`: idle then, already mapped; it grows to
[V, H] if smaller, +35 MB for the SFT benchmark's micro-batches), with aten's additions in aten's order, so the
same numbers bit for bit (test). Autograd then adds it into the weight's gradient (a tied LM head's, or the
existing `.grad`) or copies it when there is none yet; it never adopts the block (the untied case of the test
fails if it did). Outside that scope, with a frozen weight, or without grad, it is exactly nn.Embedding.

A tied LM head (SmolLM2's) gives the same weight a second gradient, and autograd sums two gradients of one tensor
out of place: another fresh [V, H] float32 block per micro-batch (47-182 ms each on the Xeon, one thread, in a
dispatch-timed SFT benchmark step), on top of the head's own fresh upcast (40 ms). So the chunked head
(ops/logprobs.py), when the hidden states it is applied to were computed from such an embedding call on its own
weight (`find_tie` walks their graph, ~1 ms), hands its gradient to that call (`TiedGradient`: formed in one kept
block) instead of returning it, and the embedding's backward, which autograd runs after every head fed by its
output, adds its tokens' rows to it: the dense `G_emb + G_head` autograd formed, bit for bit (tests; the rows no
token touches are `0 + G_head`), through one gradient edge (hooks on the weight still fire once). A head whose tie
has been consumed (a second backward over a retained graph) returns its gradient as before. Only inside the loops'
scope, whose backward always reaches the embedding. Several embedding calls before one backward (not in the loops)
stay correct, to rounding: each call's two gradients are summed before autograd adds the calls' sums, and a call
whose gradient autograd must hold while another call's head runs hands it a copy rather than a kept block. With the step core's reuse of the [V, H] `.grad` block
(ops/buffers.py), `make bench-sft`'s alignlab side ran 4% faster in a paired in-process A/B (4 pairs, the same
final loss; DPO's job, one micro-batch a step, unchanged within noise).
"""

from __future__ import annotations

import threading
import types
import weakref
from typing import Any

import torch
import torch.nn.functional as F

from alignlab.ops.buffers import active, gradient_block, reuse_gradient

_LAST = threading.local()  # this thread's latest kept-gradient embedding weight, the kept block's tie, the open ties


def _open_ties() -> weakref.WeakSet:
    ties = getattr(_LAST, "open", None)
    if ties is None:
        ties = _LAST.open = weakref.WeakSet()
    return ties


class TiedGradient:
    """A tied head's float32 gradient waiting for the backward of the embedding call its hidden states came from."""

    def __init__(self, weight: torch.Tensor):
        self.weight, self.pending, self.open = weight, None, True
        _open_ties().add(self)  # until its backward runs or its graph is dropped

    def accumulator(self, like: torch.Tensor) -> torch.Tensor | None:
        """An uninitialised block shaped like the weight for the head to form its gradient in: the kept one when no
        other open tie holds it (already mapped: no page faults), else None (the head allocates its own)."""
        holder = getattr(_LAST, "holder", None)
        if not self.open or self.pending is not None or (holder is not None and holder is not self and holder.open):
            return None
        _LAST.holder = self
        return gradient_block(*self.weight.shape, like, self.weight.dtype, slot="tied_head_grad")

    def deposit(self, grad: torch.Tensor) -> bool:
        """Take the head's gradient (False: the tie was consumed already; the head returns it itself). A second
        head's gradient is added to the first's, as autograd would have summed them before the embedding's."""
        if not self.open:
            return False
        self.pending = grad if self.pending is None else self.pending.add_(grad)
        return True

    def take(self) -> tuple[torch.Tensor | None, bool]:
        """(the head's gradient or None, whether this was the last open embedding call on this thread)."""
        self.open = False
        _open_ties().discard(self)
        pending, self.pending = self.pending, None
        return pending, not _open_ties()


def find_tie(hidden: torch.Tensor, weight: torch.Tensor) -> TiedGradient | None:
    """The open tie of the kept-gradient embedding call on `weight` that `hidden` was computed from, if any."""
    if not active() or getattr(_LAST, "weight", None) is not weight or hidden.grad_fn is None:
        return None
    seen, stack = set(), [hidden.grad_fn]
    while stack:  # depth first: the embedding is at the bottom of the graph
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        tie = getattr(node, "tie", None)
        if isinstance(tie, TiedGradient) and tie.weight is weight:
            return tie if tie.open else None
        stack.extend(fn for fn, _ in node.next_functions)
    return None


class _KeptGradEmbedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, weight, padding_idx):
        ctx.save_for_backward(ids)
        ctx.rows, ctx.padding_idx = weight.shape[0], padding_idx
        ctx.tie = TiedGradient(weight)
        _LAST.weight = weight
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad_out):
        (ids,) = ctx.saved_tensors
        flat = ids.reshape(-1)
        grad = grad_out.reshape(flat.shape[0], grad_out.shape[-1])
        if ctx.padding_idx is not None:  # the padding row gets no gradient (aten skips those tokens)
            keep = flat != ctx.padding_idx
            flat, grad = flat[keep], grad[keep]
        head, last = ctx.tie.take()
        reuse_gradient(ctx.tie.weight)  # last step's [V, H] block as .grad: autograd adds in place (ops/buffers.py)
        if head is not None and head.dtype == grad.dtype:
            # (0 + the tokens' rows) + G_head, as the dense sum would give, formed only where tokens are: the other
            # rows of the dense sum are 0 + G_head = G_head (up to the sign of a zero, which AdamW's update ignores).
            # Each row's tokens are added in the same order as into the dense block (tests).
            rows, inv = flat.unique(return_inverse=True)
            part = grad.new_zeros(rows.shape[0], grad.shape[1]).index_add_(0, inv, grad)
            out = head.index_add_(0, rows, part)
        else:
            out = gradient_block(ctx.rows, grad_out.shape[-1], grad_out, grad_out.dtype).zero_().index_add_(0, flat, grad)
            out = out if head is None else out.add_(head)
        # Another embedding call's backward is still to come (several forwards before one backward): autograd may
        # hold this gradient until then while that call's head reuses the kept blocks, so hand it a copy.
        return None, out if last else out.clone(), None


def _forward(self: torch.nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    plain = (not active() or not torch.is_grad_enabled() or not self.weight.requires_grad or self.max_norm is not None
             or self.scale_grad_by_freq or self.sparse)
    if plain:
        return torch.nn.Embedding.forward(self, ids)
    return _KeptGradEmbedding.apply(ids, self.weight, self.padding_idx)


def keep_embedding_grad(model: Any) -> bool:
    """Give `model`'s input embedding (an nn.Embedding) the kept-block backward; False when it has none."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if get is not None else None
    if type(emb) is not torch.nn.Embedding:
        return False
    emb.forward = types.MethodType(_forward, emb)
    return True
