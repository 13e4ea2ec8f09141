"""A trainable input embedding whose backward writes its dense gradient into the LM head's idle block.

The gradient of a [V, H] embedding is dense: aten zero-fills a fresh [V, H] tensor and adds each token's row
into it. For SmolLM2 that is 113 MB per backward, above glibc's largest mmap threshold (32 MB), so a new mapping
the kernel zero-fills page by page every micro-batch (~110 ms on one core of the AMD EPYC; an SFT profile at 2
threads: 2.05 s of 24 s over 16 micro-batches). Inside the training loops' `reused_buffers` the gradient is formed
in the chunked LM head's logits block instead (`buffers.gradient_block`: idle then, already mapped; it grows to
[V, H] if smaller, +35 MB for the SFT benchmark's micro-batches), with aten's additions in aten's order, so the
same numbers bit for bit (test). Autograd then adds it into the weight's gradient (a tied LM head's, or the
existing `.grad`) or copies it when there is none yet; it never adopts the block (the untied case of the test
fails if it did). Outside that scope, with a frozen weight, or without grad, it is exactly nn.Embedding.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F

from alignlab.ops.buffers import active, gradient_block


class _KeptGradEmbedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, weight, padding_idx):
        ctx.save_for_backward(ids)
        ctx.rows, ctx.padding_idx = weight.shape[0], padding_idx
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad_out):
        (ids,) = ctx.saved_tensors
        flat = ids.reshape(-1)
        grad = grad_out.reshape(flat.shape[0], grad_out.shape[-1])
        if ctx.padding_idx is not None:  # the padding row gets no gradient (aten skips those tokens)
            keep = flat != ctx.padding_idx
            flat, grad = flat[keep], grad[keep]
        out = gradient_block(ctx.rows, grad_out.shape[-1], grad_out, grad_out.dtype).zero_()
        return None, out.index_add_(0, flat, grad), None


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
