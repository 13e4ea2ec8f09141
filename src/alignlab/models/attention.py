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
        rows[row] = []
        for s in spans:
            q = _ranges(qp, cuts, where, ((s.q0, s.q1),))
            k, v = _ranges(kp, cuts, where, s.keys), _ranges(vp, cuts, where, s.keys)
            lq, lk = q.shape[2], k.shape[2]
            if lq == lk:
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, **gqa)
            else:  # bottom-right causal: query i sees keys 0 .. lk - lq + i
                mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(diagonal=lk - lq)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                                     **gqa)
            rows[row].append(out)
    if sorted(rows) != list(range(query.shape[0])):
        raise ValueError(f"attention plan covers rows {sorted(rows)}, the batch has {query.shape[0]}")
    out = torch.cat([torch.cat(rows[r], dim=2) for r in range(query.shape[0])], dim=0)
    if out.shape[2] != query.shape[2]:
        raise ValueError(f"attention plan covers {out.shape[2]} positions per row, the batch has {query.shape[2]}")
    return out


def _native_gqa(query: Any) -> bool:
    # On CPU (torch >= 2.5) sdpa's enable_gqa shares each key/value head with its query heads, without
    # repeat_kv's copies of K and V (SmolLM2: 9 query heads on 3): the same outputs and query gradients bit for
    # bit, K/V gradients summed over their query heads in another order. AMD EPYC, 1 thread, bf16: sdpa itself
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
    if plan is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1 and not _native_gqa(query):  # grouped-query attention: every query head gets its key/value head
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out = span_attention(query, key, value, plan, scaling=scaling, dropout=dropout)
    return out.transpose(1, 2).contiguous(), None


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
    """Switch an sdpa model (also inside peft/DDP wrappers) to span attention; False when it uses another kernel."""
    impl = _impl(model)
    if impl == SPANS:
        return True
    if impl != "sdpa":
        return False
    _register()
    getattr(model, "module", model).set_attn_implementation(SPANS)
    return True


def uses_spans(model: Any) -> bool:
    """True when the model's layers take an `attn_spans` plan."""
    return _impl(model) == SPANS
