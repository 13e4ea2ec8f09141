"""Span attention with grouped-query attention (issue 16): sdpa's enable_gqa instead of repeated K/V copies."""

import pytest
import torch

from alignlab.data.layout import packed_plan, prefix_plan
from alignlab.models.attention import _native_gqa, span_attention


def _repeat(x, groups):
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, groups, t, d).reshape(b, h * groups, t, d)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["packed", "prefix"])
def test_gqa_spans_equal_repeated_kv(dtype, layout):
    """Outputs are those of K/V repeated per query head, bit for bit; gradients (K/V's the sum over a key head's
    query heads, in another order; the short spans' explicit backward groups the products differently) agree to
    rounding. Rows: packed sequences of 5 and 7 tokens; prefix-shared pairs (prompt 4, chosen 3, rejected 2) and
    (2, 2, 3)."""
    torch.manual_seed(7)
    width = 16  # row 0's two pairs: 9 + 7 positions
    plan = packed_plan([[5, 7], [6]], width) if layout == "packed" else prefix_plan([[(4, 3, 2), (2, 2, 3)], [(3, 1, 2)]],
                                                                                    width)
    groups = 3
    q = torch.randn(2, 6, width, 8).to(dtype).requires_grad_(True)
    k = torch.randn(2, 2, width, 8).to(dtype).requires_grad_(True)
    v = torch.randn(2, 2, width, 8).to(dtype).requires_grad_(True)
    g = torch.randn(2, 6, width, 8).to(dtype)
    native = span_attention(q, k, v, plan)
    dq_n, dk_n, dv_n = torch.autograd.grad((native * g).sum(), (q, k, v))
    repeated = span_attention(q, _repeat(k, groups), _repeat(v, groups), plan)
    dq_r, dk_r, dv_r = torch.autograd.grad((repeated * g).sum(), (q, k, v))
    assert torch.equal(native, repeated)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(dq_n, dq_r, atol=tol, rtol=tol)
    torch.testing.assert_close(dk_n, dk_r, atol=tol, rtol=tol)
    torch.testing.assert_close(dv_n, dv_r, atol=tol, rtol=tol)


def test_native_gqa_only_on_cpu():
    assert _native_gqa(torch.zeros(1)) == (tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5))
    assert not _native_gqa(torch.zeros(1, device="meta"))


def test_a_no_grad_pass_gives_the_differentiated_passes_bits():
    """A frozen reference runs span attention without a gradient, the policy with one: on the same weights and
    batch they must agree bit for bit (DPO's first loss log 2, GRPO's first KL 0), short spans and long. (A
    kernel chosen by grad mode, sdpa's math one for differentiated short spans, broke this.)"""
    torch.manual_seed(11)
    width = 700
    plan = prefix_plan([[(20, 25, 15), (300, 200, 140)]], width)
    q = torch.randn(1, 9, width, 64).bfloat16()
    k, v = torch.randn(1, 3, width, 64).bfloat16(), torch.randn(1, 3, width, 64).bfloat16()
    with torch.no_grad():
        frozen = span_attention(q, k, v, plan)
    trained = span_attention(q.requires_grad_(True), k.requires_grad_(True), v.requires_grad_(True), plan)
    assert torch.equal(frozen, trained.detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_equal_shaped_spans_in_one_call_give_the_separate_calls_bits(dtype):
    """Spans of one shape run stacked in one call; each must come out exactly as its own call would give it,
    forward and backward. The layout of a prompt-shared GRPO row (rl/shared_prompt.py): prompt 5 with four answers
    of 4 tokens (three siblings of one shape), prompt 3 with answers of 4 and 2 tokens."""
    import torch.nn.functional as F

    from alignlab.data.layout import Span
    from alignlab.models.attention import _explicit_backward, _explicit_span

    torch.manual_seed(5)
    spans = [Span(0, 0, 9, ((0, 9),)), Span(0, 9, 13, ((0, 5), (9, 13))), Span(0, 13, 17, ((0, 5), (13, 17))),
             Span(0, 17, 21, ((0, 5), (17, 21))), Span(0, 21, 28, ((21, 28),)), Span(0, 28, 30, ((21, 24), (28, 30)))]
    width = 30
    q = torch.randn(1, 6, width, 8).to(dtype).requires_grad_(True)
    k = torch.randn(1, 2, width, 8).to(dtype).requires_grad_(True)
    v = torch.randn(1, 2, width, 8).to(dtype).requires_grad_(True)
    g = torch.randn(1, 6, width, 8).to(dtype)
    grouped = span_attention(q, k, v, spans)
    grads = torch.autograd.grad((grouped * g).sum(), (q, k, v))

    def keys(t, s):
        return torch.cat([t[:, :, a:b] for a, b in s.keys], dim=2)

    def one(q, k, v):  # one span's own call: bf16 spans take the explicit backward, float32 flash's
        if _explicit_backward(q, k, v, 0.0):
            return _explicit_span(q, k, v, None)
        lq, lk = q.shape[2], k.shape[2]
        mask = None if lq == lk else torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)

    # one call per span, as before grouping
    separate = torch.cat([one(q[:, :, s.q0:s.q1], keys(k, s), keys(v, s)) for s in spans], dim=2)
    assert torch.equal(grouped, separate)
    for a, b in zip(grads, torch.autograd.grad((separate * g).sum(), (q, k, v))):
        assert torch.equal(a, b)


def test_stacked_blocked_spans_give_the_separate_calls_bits():
    """The blocked form of the explicit backward (spans above SMALL_SPAN_SCORES) keeps stacking exact: two answers
    of 150 tokens, each over its own 30-token prompt (two query blocks each), in one call against one call each.
    (No keys are shared: a shared prompt's gradient sums its spans' parts in another order when they are stacked.)"""
    from alignlab.data.layout import Span
    from alignlab.models.attention import SMALL_SPAN_SCORES, _explicit_span

    torch.manual_seed(6)
    spans = [Span(0, 0, 30, ((0, 30),)), Span(0, 30, 180, ((0, 30), (30, 180))),
             Span(0, 180, 210, ((180, 210),)), Span(0, 210, 360, ((180, 210), (210, 360)))]
    assert 6 * 150 * 180 > SMALL_SPAN_SCORES
    q, k, v = (torch.randn(1, n, 360, 16).bfloat16().requires_grad_(True) for n in (6, 2, 2))
    g = torch.randn(1, 6, 360, 16).bfloat16()
    grouped = span_attention(q, k, v, spans)
    grads = torch.autograd.grad((grouped * g).sum(), (q, k, v))

    def keys(t, s):
        return torch.cat([t[:, :, a:b] for a, b in s.keys], dim=2)

    separate = torch.cat([_explicit_span(q[:, :, s.q0:s.q1], keys(k, s), keys(v, s), None) for s in spans], dim=2)
    assert torch.equal(grouped, separate)
    for a, b in zip(grads, torch.autograd.grad((separate * g).sum(), (q, k, v))):
        assert torch.equal(a, b)


def test_only_low_precision_spans_take_the_explicit_backward():
    """The explicit backward wins over flash's only in bf16/fp16 (flash's CPU backward is the faster one in float32)
    and only up to EXPLICIT_BACKWARD_MAX_SCORES scores per head, with grad wanted and no more queries than keys."""
    from alignlab.models.attention import EXPLICIT_BACKWARD_MAX_SCORES, _explicit_backward

    def span(dtype, lq=32, lk=42, grad=True):
        return (torch.randn(1, 9, lq, 8, dtype=dtype).requires_grad_(grad), torch.randn(1, 3, lk, 8, dtype=dtype),
                torch.randn(1, 3, lk, 8, dtype=dtype))

    assert _explicit_backward(*span(torch.bfloat16), 0.0)
    assert not _explicit_backward(*span(torch.float32), 0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 inputs computed in bf16
        assert _explicit_backward(*span(torch.float32), 0.0)
    assert not _explicit_backward(*span(torch.bfloat16), 0.1)  # dropout
    assert not _explicit_backward(*span(torch.bfloat16, grad=False), 0.0)
    assert _explicit_backward(*span(torch.bfloat16, lq=32, lk=EXPLICIT_BACKWARD_MAX_SCORES // 32), 0.0)
    assert not _explicit_backward(*span(torch.bfloat16, lq=32, lk=EXPLICIT_BACKWARD_MAX_SCORES // 32 + 1), 0.0)
    assert not _explicit_backward(*span(torch.bfloat16, lq=5, lk=4), 0.0)  # queries without keys: not a span
    with torch.no_grad():
        assert not _explicit_backward(*span(torch.bfloat16), 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 9, 3, 32, 42, 16), (3, 6, 2, 5, 5, 16), (2, 4, 4, 7, 19, 16),
                                   (1, 9, 3, 1, 1, 16), (1, 6, 2, 24, 40, 24), (1, 9, 3, 100, 200, 16),
                                   (2, 6, 2, 300, 300, 16), (1, 6, 2, 200, 330, 24)])
def test_explicit_span_backward_is_the_flash_kernels_to_rounding(dtype, shape):
    """The explicit backward against sdpa's own (flash) backward on the same forward: outputs bit for bit;
    gradients in bf16 within two bf16 steps of the largest float64 gradient (flash's own are 9.8e-3 of it off on
    the last shape; ours at most 5.4e-3 here), and in float32 (every product then float32) to fp32 rounding.
    Shapes (batch, heads, key heads, queries, keys, head dim): a GRPO answer over its prompt, a causal square span,
    plain multi-head, one token, a head dim whose scale is no power of two (these five small: float32 products),
    then the blocked form: one query block, three (two spans stacked, square) and two (bottom-right, the scale no
    power of two)."""
    import torch.nn.functional as F

    from alignlab.models.attention import _explicit_span

    b, h, hkv, lq, lk, d = shape
    torch.manual_seed(3)
    q, k, v = (torch.randn(b, n, t, d).to(dtype).requires_grad_(True) for n, t in ((h, lq), (hkv, lk), (hkv, lk)))
    go = torch.randn(b, h, lq, d).to(dtype)
    mask = None if lq == lk else torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq)

    def flash(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=hkv != h)

    ours = _explicit_span(q, k, v, None)
    theirs = flash(q, k, v)
    assert torch.equal(ours, theirs)
    g_ours = torch.autograd.grad((ours * go).sum(), (q, k, v))
    g_flash = torch.autograd.grad((theirs * go).sum(), (q, k, v))
    if dtype == torch.float32:
        for a, c in zip(g_ours, g_flash):
            torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
        return
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    exact = torch.autograd.grad((flash(q64, k64, v64) * go.double()).sum(), (q64, k64, v64))
    for a, c, e in zip(g_ours, g_flash, exact):
        err_ours, err_flash = (a.double() - e).abs().max(), (c.double() - e).abs().max()
        assert err_ours <= 2 ** -7 * e.abs().max(), (err_ours, err_flash)


def test_fp16_spans_take_the_float32_form_at_any_size(monkeypatch):
    """The blocked form is bf16's (measured and tested there); an fp16 span above SMALL_SPAN_SCORES takes the float32
    whole-span form, its gradients fp16's rounding of float64's."""
    import alignlab.models.attention as attention

    calls = []
    small = attention._small_span_gradients
    monkeypatch.setattr(attention, "_small_span_gradients", lambda *a: calls.append(1) or small(*a))
    torch.manual_seed(4)
    q, k, v = (torch.randn(1, n, t, 16).half().requires_grad_(True) for n, t in ((9, 100), (3, 200), (3, 200)))
    go = torch.randn(1, 9, 100, 16).half()
    assert 9 * 100 * 200 > attention.SMALL_SPAN_SCORES
    grads = torch.autograd.grad((attention._explicit_span(q, k, v, None) * go).sum(), (q, k, v))
    assert calls == [1]
    mask = torch.ones(100, 200, dtype=torch.bool).tril(100)
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q64, k64, v64, attn_mask=mask, enable_gqa=True)
    exact = torch.autograd.grad((out * go.double()).sum(), (q64, k64, v64))
    for a, e in zip(grads, exact):
        assert (a.double() - e).abs().max() <= 2 ** -10 * e.abs().max()
