"""Token and sequence log-probabilities: the one place that gathers label log-probs from logits.

Everything here computes in float32 whatever the model's dtype, because log-softmax over a 50k+
vocabulary in bf16 loses about two decimal digits and the DPO family takes differences of sums
of these numbers. Label shifting is the caller's job (labels[t] is the token predicted at t).

`chunked_token_logprobs` fuses the LM head with the log-softmax chunk by chunk. The full
`[N, V]` float32 logits are the largest tensor of a preference step (N tokens x 49k vocab x 4
bytes = 200 MB per 1k tokens for SmolLM2); here at most one `[chunk_size, V]` block exists at a
time, in the forward pass and in the backward pass. With a frozen head (LoRA) the hidden-state
gradient is formed in the forward while each chunk is at hand, so no logits are kept or
recomputed and the cost equals the plain path's. With a trainable head, backward recomputes each
chunk's logits from the saved hidden states (the trade of activation checkpointing: one extra
lm_head matmul per chunk, measured ~1.3-1.4x the plain lm_head+loss time on CPU, for O(chunk * V)
memory instead of O(N * V)).
Each pass writes its chunks' logits into one [chunk, V] buffer (and one for the low-precision matmul result),
takes the logsumexp in place, and the backward reuses the forward's cast of the head; a frozen head's cast is
kept across steps, a trainable head's for one optimizer step inside the loops' `reused_buffers` (ops/buffers.py).
Same numbers bit for bit as fresh tensors per chunk (tests/unit/test_ops_logprobs.py); the
head's forward+backward with a reference forward took 16% less CPU time for SmolLM2 (1,300 tokens, bf16
autocast, 1 thread, AMD EPYC, median of 8 interleaved runs: 3.35 s against 3.97 s).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from alignlab.ops.buffers import frozen_cast, kept_cast, scratch
from alignlab.ops.embedding import find_tie

IGNORE_INDEX = -100


def token_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """log p(labels) under `logits`, float32, with 0.0 where `labels == ignore_index`.

    Shapes: logits [..., V], labels [...] -> [...]. Computed as the negated fused cross-entropy
    (logsumexp minus the label's logit), which never builds the full log-softmax tensor and
    whose backward is the usual softmax-minus-one-hot.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    flat = logits.reshape(-1, logits.shape[-1])
    flat = flat.to(_acc_dtype(flat.dtype))
    nll = F.cross_entropy(flat, labels.reshape(-1), reduction="none", ignore_index=ignore_index)
    return (-nll).reshape(labels.shape)


def _head_weight(weight: torch.Tensor) -> torch.Tensor:
    # Under autocast, cast the [V, H] head once per pass: autocast caches casts of leaf weights but not of
    # the transposed view the matmul takes, so every chunk (and the backward) paid a full copy of it.
    device = weight.device.type
    if torch.is_autocast_enabled(device) and weight.dtype == torch.float32:
        dtype = torch.get_autocast_dtype(device)
        if not weight.requires_grad:
            return frozen_cast(weight, dtype)
        # A trainable head: one cast per optimizer step inside the loops' reused_buffers (ops/buffers.py), shared
        # by the step's micro-batches and kept in one block; elsewhere one per pass.
        return kept_cast(weight, dtype)
    return weight


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # float32 at least (bf16/fp16 are upcast); float64 stays float64 so gradient checks stay exact.
    return torch.promote_types(dtype, torch.float32)


class _HeadChunks:
    """The head's logits chunk by chunk, in the accumulation dtype, written into two buffers reused by every chunk.

    The numbers are those of the head's own `F.linear(hidden, weight, bias)` under the caller's autocast state,
    then upcast: the matmul runs in the (possibly autocast-lowered) weight's dtype with the bias cast to it, as
    autocast runs it; without autocast the bias is added in float32. Fresh [chunk, V] tensors per chunk (the matmul's result, its upcast, the
    logsumexp temporary) cost more than their arithmetic on a CPU: each is a new mapping the kernel zero-fills
    page by page (~0.2-0.5 s per 200 MB block on a busy core)."""

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, chunk_size: int,
                 w: torch.Tensor | None = None):
        self.hidden, self.bias = hidden, bias
        self.w = _head_weight(weight) if w is None else w
        self.low, self.acc = self.w.dtype, _acc_dtype(hidden.dtype)
        rows, vocab = min(chunk_size, hidden.shape[0]), self.w.shape[0]
        self.buf = scratch("logits", rows, vocab, hidden, self.acc)
        self.low_buf = scratch("low_logits", rows, vocab, hidden, self.low) if self.low != self.acc else None

    def h(self, sl: slice) -> torch.Tensor:
        return self.hidden[sl].to(self.low)

    def logits(self, sl: slice) -> torch.Tensor:
        """Float logits of rows `sl`: a view of the shared buffer, valid until the next call."""
        h = self.h(sl)
        m = h.shape[0]
        bias = self.bias
        with torch.autocast(h.device.type, enabled=False):  # operands are already in the matmul's dtype
            if self.low_buf is None:
                out = torch.mm(h, self.w.t(), out=self.buf[:m])
            elif bias is not None:  # as autocast's F.linear: the bias in the low dtype, in the product, one rounding
                low = torch.addmm(bias.to(self.low), h, self.w.t(), out=self.low_buf[:m])
                bias = None
                out = self.buf[:m].copy_(low)
            else:
                out = self.buf[:m].copy_(torch.mm(h, self.w.t(), out=self.low_buf[:m]))
        return out.add_(bias) if bias is not None else out

    def lowered(self, x: torch.Tensor) -> torch.Tensor:
        """x in the matmul dtype (the low buffer reused; x itself when no cast is needed)."""
        return x if self.low_buf is None else self.low_buf[: x.shape[0]].copy_(x)


def _logsumexp_(logits: torch.Tensor) -> torch.Tensor:
    # torch.logsumexp's own steps (max, shift, exp, sum, log, add back), in place in the chunk's buffer: the
    # same numbers bit for bit, without its [chunk, V] temporary. Destroys `logits`.
    m = logits.amax(-1, keepdim=True)
    m.masked_fill_(m.abs() == float("inf"), 0.0)
    return logits.sub_(m).exp_().sum(-1).log_().add_(m.squeeze(-1))


def _logsumexp_entropy_(logits: torch.Tensor, exp_buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # (logsumexp, entropy) of each row. The logsumexp takes _logsumexp_'s steps on the same values (bit for bit);
    # with s = z - max and e = exp(s) (in `exp_buf`), H = log sum e - sum(e * s) / sum e. Destroys `logits`.
    # A Linear head's logits are finite, so e * s has no 0 * inf.
    m = logits.amax(-1, keepdim=True)
    m.masked_fill_(m.abs() == float("inf"), 0.0)
    shifted = logits.sub_(m)
    e = torch.exp(shifted, out=exp_buf)
    total = e.sum(-1)
    log_total = total.log()
    return log_total + m.squeeze(-1), log_total - e.mul_(shifted).sum(-1) / total


def _logit_grad_(
    logits: torch.Tensor, lse: torch.Tensor, safe: torch.Tensor, g: torch.Tensor
) -> torch.Tensor:
    # d(logit_y - lse)/d logits = onehot(y) - softmax, each row scaled by g. In place: the one
    # [chunk, V] buffer becomes the softmax, then the logit gradient.
    dlogits = logits.sub_(lse[:, None]).exp_().mul_(-g[:, None])
    return dlogits.scatter_add_(-1, safe[:, None], g[:, None])


class _ChunkedLogprobs(torch.autograd.Function):
    """Fused lm_head + log-softmax + gather; saves its inputs and the per-token logsumexp.

    When the head is frozen (LoRA) only d/d hidden is needed, and since the incoming gradient only
    scales each row, (onehot - softmax) @ W is computed in the forward while the chunk's logits
    are at hand: backward is then a row scaling, with no logits recomputed (as many lm_head matmuls
    as the plain path). A trainable head needs the upstream gradient inside its [V, H] sum, so
    backward recomputes each chunk's logits instead (one extra matmul per chunk).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_size, ignore_index, entropy=False, predictions=None):
        n, acc = hidden.shape[0], _acc_dtype(hidden.dtype)
        out = hidden.new_empty(n, dtype=acc)
        lse = hidden.new_empty(n, dtype=acc)
        ent = hidden.new_empty(n, dtype=acc) if entropy else None
        valid = labels != ignore_index
        safe = labels.masked_fill(~valid, 0)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        eager_h = need_h and not need_w and not (need_b and bias is not None)
        unit_grad_h = hidden.new_empty(hidden.shape) if eager_h else None
        chunks = _HeadChunks(hidden, weight, bias, chunk_size)
        for start in range(0, n, chunk_size):
            sl = slice(start, start + chunk_size)
            logits = chunks.logits(sl)
            if predictions is not None:  # before the in-place logsumexp below destroys the logits
                torch.argmax(logits, -1, out=predictions[sl])
            picked = logits.gather(-1, safe[sl].unsqueeze(-1)).squeeze(-1)
            if unit_grad_h is None and ent is not None:
                lse[sl], ent[sl] = _logsumexp_entropy_(logits, scratch("exp", logits.shape[0], logits.shape[1],
                                                                       logits, logits.dtype))
            elif unit_grad_h is None:
                lse[sl] = _logsumexp_(logits)
            else:  # the logits are needed again for the unit gradient
                lse[sl] = torch.logsumexp(logits, dim=-1)
                if ent is not None:
                    ent[sl] = lse[sl] - (torch.softmax(logits, -1) * logits).sum(-1)
                dlogits = _logit_grad_(logits, lse[sl], safe[sl], valid[sl].to(acc))
                unit_grad_h[sl] = (chunks.lowered(dlogits) @ chunks.w).to(hidden.dtype)
            out[sl] = torch.where(valid[sl], picked - lse[sl], 0.0)
            del logits
        ctx.save_for_backward(hidden, weight, bias, safe, valid, lse, unit_grad_h)
        ctx.chunk_size = chunk_size
        # A head tied to a kept-gradient input embedding hands its weight gradient to that (ops/embedding.py).
        ctx.tie = find_tie(hidden, weight) if need_w else None
        # A trainable head's backward reuses the forward's cast of it (one [V, H] copy per step, not two).
        ctx.w = chunks.w if (need_w or need_h or need_b) and unit_grad_h is None else None
        device = hidden.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        if ent is None:
            return out
        ctx.mark_non_differentiable(ent)
        return out, ent

    @staticmethod
    def backward(ctx, grad_out, *_):  # the entropy output (if any) takes no gradient
        # Backward runs outside autocast; re-enter the forward's state so the recomputed logits are the
        # forward's logits bit for bit (the saved logsumexp belongs to them) and the matmuls keep its speed.
        device, enabled, dtype = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            return _ChunkedLogprobs._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        hidden, weight, bias, safe, valid, lse, unit_grad_h = ctx.saved_tensors
        acc = lse.dtype
        g = torch.where(valid, grad_out.to(acc), 0.0)
        if unit_grad_h is not None:
            return (unit_grad_h * g[:, None]).to(hidden.dtype), None, None, None, None, None, None, None
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = hidden.new_empty(hidden.shape) if need_h else None
        grad_w = None  # [V, H]: the first chunk's product, later chunks added (no zero-filled buffer)
        grad_b = torch.zeros_like(bias, dtype=acc) if (need_b and bias is not None) else None
        chunks = _HeadChunks(hidden, weight, bias, ctx.chunk_size, w=ctx.w)
        ctx.w = None
        # The weight gradient's matmul as autocast runs it (float32 operands lowered to its dtype; float64 never):
        # when that is the head's matmul dtype, on the dlogits already lowered for grad_h, not a second cast.
        device = hidden.device.type
        low_w = (torch.is_autocast_enabled(device) and acc == torch.float32
                 and torch.get_autocast_dtype(device) == chunks.low)
        tie, ctx.tie = ctx.tie, None
        block = tie.accumulator(hidden) if need_w and tie is not None and weight.dtype == acc else None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            sl = slice(start, start + ctx.chunk_size)
            dlogits = _logit_grad_(chunks.logits(sl), lse[sl], safe[sl], g[sl])
            d_low = chunks.lowered(dlogits) if (grad_h is not None or (need_w and low_w)) else None
            if grad_h is not None:
                grad_h[sl] = (d_low @ chunks.w).to(hidden.dtype)
            if need_w:
                h = chunks.h(sl) if low_w else hidden[sl].to(acc)
                d = d_low if low_w else dlogits
                with torch.autocast(device, enabled=False):  # operands are already in the matmul's dtype
                    part = torch.mm(d.t(), h, out=scratch("grad_w", d.shape[1], h.shape[1], h, h.dtype))
                if grad_w is None:
                    grad_w = part.to(acc, copy=True) if block is None else block.copy_(part)
                else:
                    grad_w.add_(part)
            if grad_b is not None:
                grad_b.add_(dlogits.sum(0))
            del dlogits, d_low
        if need_w and grad_w is None:  # no tokens at all
            grad_w = torch.zeros_like(weight)
        grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        if grad_w is not None and tie is not None and tie.deposit(grad_w):
            grad_w = None  # the tied embedding's backward adds it to its own
        grad_b = grad_b.to(bias.dtype) if grad_b is not None else None
        return grad_h, grad_w, grad_b, None, None, None, None, None


def chunked_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int = 1024,
    bias: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    entropy: bool = False,
    predictions: torch.Tensor | None = None,
) -> Any:
    """Same as `token_logprobs(hidden @ weight.T + bias, labels)` without the full logits.

    Shapes: hidden [N, H] (final hidden states, already shifted to align with labels),
    weight [V, H] (the lm_head / tied embedding), labels [N], bias [V] or None -> [N] float32
    (float64 for float64 inputs).
    Gradients flow to hidden, weight and bias; peak extra memory is O(chunk_size * V) floats.
    With `entropy`, (log-probs, entropy [N] of each row's softmax, `entropy_from_logits`'s value to rounding, no
    gradient) from the same chunks: one more [chunk, V] buffer, no more matmuls.
    `predictions`, an [N] int64 tensor, is filled with each row's argmax (the greedy token, for token accuracy) in
    the forward: one more read of each chunk's logits.
    """
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(
            f"hidden must be [N, H] and labels [N]; got {tuple(hidden.shape)}, {tuple(labels.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return _ChunkedLogprobs.apply(hidden, weight, bias, labels, chunk_size, ignore_index, entropy, predictions)


def scored_tokens(prompt_ids: list, completion_ids: list) -> int:
    """Completion tokens that get a log-prob: each needs a token before it, so with an empty prompt (all of it
    truncated away) the first completion token is not scored. 0 means the example trains nothing."""
    return max(len(completion_ids) - (0 if prompt_ids else 1), 0)


def lm_head_logprobs(model: Any, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int = 1024,
                     entropy: bool = False) -> Any:
    """log p(targets) [N] float32 from final hidden states [N, H]: THE way the LM head is applied.

    `model` is the unwrapped HF causal LM. Its head is applied as its own forward does: the Linear (+ bias),
    then `head_post` (Cohere multiplies logits by `logit_scale`, Granite divides them by `logits_scaling`, Gemma
    soft-caps them: tanh(l / c) * c). A plain Linear head with none of these uses the fused chunked path (`chunked_token_logprobs`,
    same numbers, no [N, V] logits); otherwise logits are formed chunk by chunk through the head module.
    With `entropy`: (log-probs, each position's entropy [N] without gradient).
    """
    head = model.get_output_embeddings()
    if type(head) is torch.nn.Linear and head_post(model.config) == (None, None, None):
        return chunked_token_logprobs(hidden, head.weight, targets, chunk_size=chunk_size, bias=head.bias,
                                      entropy=entropy)
    # A wrapped head (LoRA on lm_head), logit scaling or soft-capping: per-chunk logits through the module itself.
    out, ent = [], []
    for start in range(0, hidden.shape[0], chunk_size):
        logits = lm_head_logits(model, hidden[start : start + chunk_size])
        out.append(token_logprobs(logits, targets[start : start + chunk_size]))
        if entropy:
            ent.append(entropy_from_logits(logits.detach()))
    empty = hidden.new_zeros(0, dtype=torch.float32)
    lp = torch.cat(out) if out else empty
    return (lp, torch.cat(ent) if ent else empty) if entropy else lp


def head_post(config: Any) -> tuple[float | None, float | None, float | None]:
    """What a model's forward does to its head's output: (multiply by, divide by, soft-cap at), each None when
    absent: Cohere's `logit_scale` and Falcon-H1's `lm_head_multiplier` multiply, Granite's (and MiniCPM3's)
    `logits_scaling` divides but HyperCLOVAX's multiplies (1 is none), Gemma's `final_logit_softcapping`; read from
    the text config, where multimodal wrappers (Gemma 4's ForConditionalGeneration) keep them."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    factors = [getattr(text, k, None) for k in ("logit_scale", "lm_head_multiplier")]
    scaling = getattr(text, "logits_scaling", None)
    scaling = scaling if scaling not in (None, 1, 1.0) else None
    if scaling is not None and str(getattr(text, "model_type", "")).startswith("hyperclovax"):
        factors.append(scaling)  # "MuP: multiply logits by logits_scaling (cf. GraniteForCausalLM which divides)"
        scaling = None
    factors = [f for f in factors if f not in (None, 1, 1.0)]
    return (math.prod(factors) if factors else None, scaling, getattr(text, "final_logit_softcapping", None) or None)


def lm_head_logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Logits [..., V] from final hidden states [..., H] as the model's own forward forms them: its head module,
    then `head_post`'s scaling and soft-capping (see `lm_head_logprobs`)."""
    logits = model.get_output_embeddings()(hidden)
    scale, divide, softcap = head_post(model.config)
    if scale is not None:
        logits = logits * scale
    if divide is not None:
        logits = logits / divide
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def sequence_logprobs(token_lp: torch.Tensor, mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Per-sequence log-prob [B] from token log-probs [B, T] and a 0/1 completion mask [B, T].

    average=False: the sum over completion tokens (DPO, Rafailov et al. 2023: log pi(y|x)).
    average=True: the mean over completion tokens (IPO as in TRL, SimPO, ORPO, length-normalised
    DPO). A sequence with no completion tokens averages to 0 instead of NaN.
    """
    mask = mask.to(token_lp.dtype)
    total = (token_lp * mask).sum(-1)
    if not average:
        return total
    return total / mask.sum(-1).clamp(min=1.0)


def entropy_from_logits(logits: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim, float32, [..., V] -> [...].

    H = logsumexp(z) - sum softmax(z) * z. With `chunk_size`, rows are processed in blocks so the
    float32 copy of the logits exists one block at a time (useful for bf16 logits).
    """
    flat = logits.reshape(-1, logits.shape[-1])
    step = chunk_size or max(flat.shape[0], 1)
    parts = []
    for start in range(0, flat.shape[0], step):
        z = flat[start : start + step].float()
        p = torch.softmax(z, dim=-1)
        parts.append(torch.logsumexp(z, dim=-1) - (p * z).sum(-1))
    if not parts:
        return logits.new_zeros(logits.shape[:-1], dtype=torch.float32)
    return torch.cat(parts).reshape(logits.shape[:-1])
