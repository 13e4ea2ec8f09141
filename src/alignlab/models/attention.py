"""Span attention: exact attention for packed and prefix-shared rows, computing only the blocks a token sees.

sdpa given a 4D mask (the block-diagonal mask of a packed row, or the prefix-shared mask of
`data.pairs`) computes the full T x T score matrix of a row and throws most of it away; only a
plain causal row lets the kernel skip the upper triangle. Here a row is cut into spans: a
contiguous range of queries and the key ranges those queries see, the queries being the last keys
(so inside a span the mask is causal, aligned bottom-right). Each span is one sdpa call:

- a packed sequence, or the [prompt | chosen] part of a prefix-shared pair: queries = keys, a
  square causal span, `is_causal=True` (the kernel skips the upper triangle);
- the rejected part of a prefix-shared pair: queries R, keys prompt + R, with a small explicit
  [R, P + R] mask (every prompt key, then causal).

Score entries per prefix-shared pair drop from (its row's T)^2 to about (P + C)^2 / 2 + R (P + R),
and a packed row of n equal sequences pays 1/n of the row's T^2. The numbers are those of the
masked forward (same softmax over the same keys; only the summation order differs, ~1e-7).
Spans of one shape run stacked in one call, and a differentiated bf16 span keeps the flash kernel's forward but
takes an explicit backward (`span_gradients`): flash attention's bf16 CPU backward costs ~1.3 ms per short span
whatever its size and up to 1.6x the explicit one's on spans of 100-200 tokens (about equal from 300).

Use: `enable_span_attention(model)` switches an sdpa model to the registered implementation
(`SPANS`), which behaves exactly like sdpa unless the forward gets `attn_spans=plan` (built by
`data.layout.packed_plan` / `prefix_plan`: the plans are pure geometry and live with the collators that
make them, so the data layer never imports models). transformers passes unknown forward kwargs down to the attention
function, and does not save the implementation in config.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alignlab.data.layout import Span

SPANS = "alignlab_spans"


def _ranges(pieces: dict[int, Any], cuts: list[int], where: dict[int, int], ranges) -> Any:
    """The concatenation of `ranges` [(a, b), ...] of a row cut into `pieces` (keyed by start) at `cuts`."""
    import torch

    parts = [pieces[c] for a, b in ranges if b > a for c in cuts[where[a]:where[b]]]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


def span_attention(query: Any, key: Any, value: Any, plan: Sequence[Span], *, scaling: float | None = None,
                   dropout: float = 0.0) -> Any:
    """Attention output [B, H, T, D] of query [B, H, T, D] and key/value [B, Hkv, T, D] under `plan`; Hkv divides H
    (grouped-query attention through sdpa's enable_gqa: no repeated copies of K and V)."""
    import torch
    import torch.nn.functional as F

    gqa = {"enable_gqa": True} if key.shape[1] != query.shape[1] else {}  # the keyword exists from torch 2.5
    by_row: dict[int, list[Span]] = {}
    for s in plan:
        by_row.setdefault(s.row, []).append(s)
    # Each row is split once at every span boundary and the spans take its pieces: the backward then writes each
    # gradient once (split's backward is one cat), where a slice per span allocated and summed a zeroed gradient
    # of the whole tensor per span (O(spans x T) per layer: 5% of a GRPO update with 16 responses to a row).
    split = [t.split(1, dim=0) for t in (query, key, value)]
    rows: dict[int, list[Any]] = {}
    width = query.shape[2]
    for row, spans in by_row.items():
        cuts = sorted({0, width} | {p for x in spans for r in ((x.q0, x.q1), *x.keys) for p in r})
        if cuts[0] < 0 or cuts[-1] > width:
            raise ValueError(f"attention plan reaches positions {cuts[0]}..{cuts[-1]} of row {row}; it has {width}")
        where = {c: i for i, c in enumerate(cuts)}
        sizes = [b - a for a, b in zip(cuts, cuts[1:])]
        qp, kp, vp = (dict(zip(cuts, t[row].split(sizes, dim=2))) for t in split)
        parts = [(_ranges(qp, cuts, where, ((s.q0, s.q1),)), _ranges(kp, cuts, where, s.keys),
                  _ranges(vp, cuts, where, s.keys)) for s in spans]
        # Spans of one shape run as one call, stacked on the batch axis: a GRPO group's sibling answers (prompt +
        # answer keys, equal answer lengths) or a packed row's equal sequences. Each batch entry is computed on its
        # own, so outputs and gradients are the separate calls' bit for bit (test); the explicit backward
        # (below) then runs fewer, larger products: a GRPO row's attention forward + backward per layer
        # 38 -> 18 ms together with it (SmolLM2, 4 prompts x 4 answers of 32 tokens, bf16, one thread).
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (q, k, _) in enumerate(parts):
            groups.setdefault((q.shape[2], k.shape[2]), []).append(i)
        outs: list[Any] = [None] * len(parts)
        for (lq, lk), members in groups.items():
            q, k, v = (ts[0] if len(ts) == 1 else torch.cat(ts, dim=0) for ts in zip(*(parts[i] for i in members)))
            if _explicit_backward(q, k, v, dropout):
                out = _explicit_span(q, k, v, scaling)
            elif lq == lk:
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, **gqa)
            else:  # bottom-right causal: query i sees keys 0 .. lk - lq + i
                mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(diagonal=lk - lq)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                                     **gqa)
            for i, o in zip(members, out.split(1, dim=0) if len(members) > 1 else (out,)):
                outs[i] = o
        rows[row] = outs
    if sorted(rows) != list(range(query.shape[0])):
        raise ValueError(f"attention plan covers rows {sorted(rows)}, the batch has {query.shape[0]}")
    out = torch.cat([torch.cat(rows[r], dim=2) for r in range(query.shape[0])], dim=0)
    if out.shape[2] != query.shape[2]:
        raise ValueError(f"attention plan covers {out.shape[2]} positions per row, the batch has {query.shape[2]}")
    return out


# A differentiated bf16/fp16 span takes the explicit backward (_explicit_span) up to EXPLICIT_BACKWARD_MAX_SCORES
# scores per head (queries x keys); longer ones keep flash's. Forward + backward of one SmolLM2 span (9 heads on 3, one
# thread, Intel Xeon with AMX, inside `reused_buffers`, median of 25 interleaved runs), explicit against flash, bf16:
# 42 x 42 queries x keys 0.53 against 1.63 ms, four stacked 32 x 42 answers 1.18 against 3.15, 100 x 200 1.98 against
# 3.97, 100 x 350 2.73 against 4.60, 256 x 256 4.25 against 5.45, 512 x 512 11.2 against 13.4; from 1024 x 1024 flash
# wins (31.6 against 37.7 ms). Timed in place on `make bench-dpo`'s SmolLM2 job, backward alone: 35-45% less than
# flash's at 100-200 tokens, about equal from 300 (cold caches cost the blocked form more); the whole step moved by
# less than the machine's drift. Spans of up to SMALL_SPAN_SCORES scores over all heads (a GRPO answer over its
# prompt) take float32 products over the whole span: the fewest calls (the blocked form was 3% slower on a GRPO
# update). In float32 flash's backward is the faster one (its per-block cost is the bf16 kernel's conversions), so
# float32 spans keep it.
EXPLICIT_BACKWARD_MAX_SCORES = 1 << 18
SMALL_SPAN_SCORES = 1 << 17
QUERY_BLOCK = 128  # queries per block of the blocked form: a block's scores stay in cache, causal blocks skipped


def _explicit_backward(q: Any, k: Any, v: Any, dropout: float) -> bool:
    import torch

    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else q.dtype
    return (q.device.type == "cpu" and dtype in (torch.bfloat16, torch.float16) and not dropout
            and torch.is_grad_enabled() and 0 < q.shape[2] <= k.shape[2]
            and (q.requires_grad or k.requires_grad or v.requires_grad)
            and q.shape[2] * k.shape[2] <= EXPLICIT_BACKWARD_MAX_SCORES)


def span_gradients(q: Any, k: Any, v: Any, out: Any, lse: Any, grad_out: Any, scale: float) -> tuple[Any, Any, Any]:
    """dQ, dK, dV of bottom-right causal attention (query i sees keys 0 .. Lk - Lq + i) from its forward's output
    and log-sum-exp.

    FlashAttention-2's backward (Dao 2023, Alg. 2): P = exp(S - L), dV = P^T dO, dS = P * (dP - D) with
    dP = dO V^T and D = rowsum(dO * O), dQ = scale dS K, dK = scale dS^T Q; grouped-query heads share their
    key/value head, so dK and dV sum over the group. A span of up to SMALL_SPAN_SCORES scores, and an fp16 one (the
    blocked form is measured and tested in bf16 only), takes it in float32 over the whole span
    (_small_span_gradients). A larger bf16 one takes a blocked form: S in float32, the four gradient
    products (dP, dV, dQ, dK) in bf16 with fp32 accumulation inside them; fast on a CPU, and nearer
    float64 than flash's own bf16 backward (tests; about the error of rounding exact gradients to bf16):
    - the subtractions happen inside the products, before any rounding: [scale Q, -L] [K, 1]^T = scale S - L in
      float32 (P = exp of a bf16-rounded S - L would be off by |S - L| 2^-9, 1% on a long row's typical entry), and
      [scale dO, -scale D] [V, 1]^T = scale (dP - D) with D as three bf16 parts (all its float32 bits), so no
      cancellation happens after rounding; dS is then formed in float32 from float32 P and rounded once;
    - rows are ordered (query, head) per key/value head, so a block of QUERY_BLOCK queries of all grouped heads
      shares one key range: blocks above the diagonal are never computed, a block's scores stay in cache, and dK,
      dV sum the group's heads inside their products (over blocks in float32)."""
    import torch

    (b, h, lq, d), hkv, lk = q.shape, k.shape[1], k.shape[2]
    if h * lq * lk <= SMALL_SPAN_SCORES or q.dtype == torch.float16:
        return _small_span_gradients(q, k, v, out, lse, grad_out, scale)
    g, n, off, dtype, dev = h // hkv, b * hkv, lk - lq, q.dtype, q.device
    rows = lq * g

    def by_query(t: Any) -> Any:  # [b, h, lq, x] -> [b * hkv, lq * g, x], rows (query, head)
        return t.reshape(b, hkv, g, lq, -1).transpose(2, 3).reshape(n, rows, -1)

    qr, dor, kf, vf = by_query(q), by_query(grad_out), k.reshape(n, lk, d), v.reshape(n, lk, d)
    # [scale Q, -L] [K, 1]^T = scale S - L in float32
    qa = torch.cat([qr.to(torch.float32, copy=True).mul_(scale), by_query(lse.unsqueeze(-1)).neg()], -1)
    ka_t = torch.cat([kf.float(), torch.ones(n, lk, 1, device=dev)], -1).transpose(1, 2).contiguous()
    # [scale dO, -scale D] [V, 1]^T = scale (dP - D) in bf16, D as three bf16 parts (all of its float32 bits)
    neg_d, parts = by_query((grad_out.float() * out).sum(-1, keepdim=True)).mul_(-scale), []
    for _ in range(3):
        parts.append(neg_d.to(dtype))
        neg_d = neg_d - parts[-1]
    da = torch.cat([dor * scale, *parts], -1)
    va_t = torch.cat([vf, torch.ones(n, lk, 3, dtype=dtype, device=dev)], -1).transpose(1, 2).contiguous()
    block = min(lq, QUERY_BLOCK)
    above = torch.ones(block, block, dtype=torch.bool, device=dev).triu_(1).repeat_interleave(g, dim=0)
    dq = torch.empty(n, rows, d, dtype=dtype, device=dev)
    one_block = block == lq  # else dK, dV summed over blocks in float32:
    dk, dv = (None, None) if one_block else (torch.zeros(n, lk, d, device=dev), torch.zeros(n, lk, d, device=dev))
    for i0 in range(0, lq, block):
        i1 = min(lq, i0 + block)
        end, r0, r1 = off + i1, i0 * g, i1 * g
        p32 = torch.bmm(qa[:, r0:r1], ka_t[:, :, :end]).exp_()
        p32[:, :, off + i0:].masked_fill_(above[:r1 - r0, :i1 - i0], 0.0)
        p = p32.to(dtype, copy=True)  # (a copy in float32 as well: p32 becomes dS next)
        ds = p32.mul_(torch.bmm(da[:, r0:r1], va_t[:, :, :end])).to(dtype)  # from float32 P, rounded once
        dq[:, r0:r1] = torch.bmm(ds, kf[:, :end])
        if one_block:
            dv, dk = torch.bmm(p.transpose(1, 2), dor), torch.bmm(ds.transpose(1, 2), qr)
        else:
            dv[:, :end] += torch.bmm(p.transpose(1, 2), dor[:, r0:r1])
            dk[:, :end] += torch.bmm(ds.transpose(1, 2), qr[:, r0:r1])
    dq = dq.view(b, hkv, lq, g, d).transpose(2, 3).reshape(b, h, lq, d)
    return dq, dk.view(b, hkv, lk, d).to(dtype), dv.view(b, hkv, lk, d).to(dtype)


def _small_span_gradients(q: Any, k: Any, v: Any, out: Any, lse: Any, grad_out: Any,
                          scale: float) -> tuple[Any, Any, Any]:
    """span_gradients in float32 over the whole span: six batched products over all heads."""
    import torch

    (b, h, lq, d), hkv, lk = q.shape, k.shape[1], k.shape[2]
    g = h // hkv  # query heads per key/value head: rows (head-in-group, query) of one key head stack
    qf, do, of = (t.float().reshape(b, hkv, g * lq, d) for t in (q, grad_out, out))
    kf, vf = k.float(), v.float()
    s = torch.matmul(qf, kf.transpose(-1, -2)).mul_(scale).view(b, hkv, g, lq, lk)
    allowed = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(diagonal=lk - lq)
    p = s.sub_(lse.reshape(b, hkv, g, lq, 1)).exp_().masked_fill_(~allowed, 0.0).view(b, hkv, g * lq, lk)
    dv = torch.matmul(p.transpose(-1, -2), do)
    ds = torch.matmul(do, vf.transpose(-1, -2)).sub_((do * of).sum(-1, keepdim=True)).mul_(p)
    dq = torch.matmul(ds, kf).mul_(scale)
    dk = torch.matmul(ds.transpose(-1, -2), qf).mul_(scale)
    return dq.view(b, h, lq, d).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _explicit_span_cls():
    import torch

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

    class ExplicitSpan(torch.autograd.Function):
        """A span's attention: forward by sdpa's CPU flash kernel (the same op sdpa dispatches to, so the same bits
        as a frozen reference's no-grad call), backward by `span_gradients`.

        Why: flash attention's bf16 CPU backward runs a handful of small GEMM calls per (batch, head) block, ~1.3
        ms for one 9-head 32 x 42 span of a GRPO answer whatever its size, and 6-9x its own forward's time on
        longer spans; the explicit form is a few batched products over all heads (per block of queries)."""

        @staticmethod
        def forward(ctx, q, k, v, scale):
            lq, lk = q.shape[2], k.shape[2]
            mask = None
            if lq != lk:
                allowed = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(diagonal=lk - lq)
                mask = torch.zeros(lq, lk, dtype=q.dtype, device=q.device).masked_fill_(~allowed, float("-inf"))
            out, lse = op(q, k, v, is_causal=mask is None, attn_mask=mask, scale=scale)
            ctx.save_for_backward(q, k, v, out, lse)
            ctx.scale = scale
            return out

        @staticmethod
        @torch.autocast("cpu", enabled=False)  # the products in the dtypes chosen there even inside autocast
        def backward(ctx, grad_out):
            q, k, v, out, lse = ctx.saved_tensors
            scale = ctx.scale if ctx.scale is not None else q.shape[-1] ** -0.5
            return (*span_gradients(q, k, v, out, lse, grad_out, scale), None)

    return ExplicitSpan


_EXPLICIT_SPAN = None


def _explicit_span(q: Any, k: Any, v: Any, scale: float | None) -> Any:
    import torch

    global _EXPLICIT_SPAN
    _EXPLICIT_SPAN = _EXPLICIT_SPAN or _explicit_span_cls()  # built on first use: torch is imported lazily here
    if torch.is_autocast_enabled("cpu"):  # as autocast runs sdpa: every input in the autocast dtype
        dtype = torch.get_autocast_dtype("cpu")
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    return _EXPLICIT_SPAN.apply(q, k, v, scale)


def _native_gqa(query: Any) -> bool:
    # On CPU (torch >= 2.5) sdpa's enable_gqa shares each key/value head with its query heads, without
    # repeat_kv's copies of K and V (SmolLM2: 9 query heads on 3): the same outputs bit for bit, gradients to
    # rounding (K/V's summed over their query heads in another order). AMD EPYC, 1 thread, bf16: sdpa itself
    # 7-16% faster; a SmolLM2 decoder layer's forward+backward on a prefix-shared DPO batch 345 -> 325 ms (median
    # of 30 interleaved runs), a DPO step ~1.6%. Elsewhere K/V are repeated as before (CUDA's memory-efficient
    # kernel takes no GQA).
    import torch

    return query.device.type == "cpu" and tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


def span_attention_forward(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                           dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """transformers attention function: span attention with `attn_spans`, otherwise exactly sdpa."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    plan = kwargs.pop("attn_spans", None)
    if plan is not None:
        _PLANS_SEEN[0] += 1
    if plan is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1 and not _native_gqa(query):  # grouped-query attention: every query head gets its key/value head
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out = span_attention(query, key, value, plan, scaling=scaling, dropout=dropout)
    return out.transpose(1, 2).contiguous(), None


_PLANS_SEEN = [0]  # attention calls that received a plan (the probe in enable_span_attention counts them)


def _plan_reaches_every_layer(model: Any) -> bool:
    """A 2-token forward with a plan: every attention layer must receive it. StableLM, Falcon, Nemotron and Doge
    call their attention without the forward's keyword arguments, so the plan never arrived and sdpa ran with the
    planned (empty) mask: a shape error on every packed or prefix-shared batch."""
    import torch

    from alignlab.data.layout import packed_plan

    layers = getattr(model.config.get_text_config(decoder=True), "num_hidden_layers", None)
    try:
        device = next(model.parameters()).device
        ids = torch.ones((1, 2), dtype=torch.long, device=device)
        _PLANS_SEEN[0] = 0
        with torch.no_grad():
            model(input_ids=ids, attention_mask=planned_mask(ids), position_ids=torch.arange(2, device=device)[None],
                  attn_spans=packed_plan([[2]], 2), use_cache=False)
    except Exception:  # a layer ran sdpa with the planned mask, or the model takes no such forward
        return False
    return _PLANS_SEEN[0] == layers if layers else _PLANS_SEEN[0] > 0


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SPANS, span_attention_forward)
    # Without a plan the layer is plain sdpa, so it needs sdpa's masks (padding, KV-cache decoding).
    AttentionMaskInterface.register(SPANS, sdpa_mask)


def _impl(model: Any) -> str | None:
    # peft models forward attribute access to the transformers model; DDP keeps it in .module
    return getattr(getattr(getattr(model, "module", model), "config", None), "_attn_implementation", None)


def enable_span_attention(model: Any) -> bool:
    """Switch an sdpa model (also inside peft/DDP wrappers) to span attention; False when it uses another kernel
    or local (sliding-window, chunked) attention, whose masks span attention would drop: such a model keeps
    plain sdpa and the padded layouts."""
    impl = _impl(model)
    if impl == SPANS:
        return True
    from alignlab.models.layouts import local_attention, recurrent_mixing

    inner = getattr(model, "module", model)
    if impl != "sdpa" or local_attention(inner.config) or recurrent_mixing(inner):
        return False
    _register()
    inner.set_attn_implementation(SPANS)
    if not _plan_reaches_every_layer(inner):
        inner.set_attn_implementation("sdpa")
        return False
    return True


def uses_spans(model: Any) -> bool:
    """True when the model's layers take an `attn_spans` plan."""
    return _impl(model) == SPANS


def planned_mask(input_ids: Any) -> Any:
    """The `attention_mask` a forward with a span plan passes. transformers hands a 4D mask to the attention function
    as it is, so it builds none of its own: from the plan's restarting position ids it would build the packed row's
    whole [T, T] mask, T^2 bytes (67 MB for 8 x 1,024 tokens in one row, 4 GB for 64k) filled at every forward, that
    span attention never reads. Empty (no key columns): a layer that ran sdpa with it instead of the plan would fail,
    never attend wrongly."""
    import torch

    return torch.ones((input_ids.shape[0], 1, 1, 0), dtype=torch.bool, device=input_ids.device)
