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
    """Outputs and query gradients are those of K/V repeated per query head, bit for bit; K/V gradients (the sum
    over a key head's query heads, in another order) agree to rounding. Rows: packed sequences of 5 and 7 tokens;
    prefix-shared pairs (prompt 4, chosen 3, rejected 2) and (2, 2, 3)."""
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
    assert torch.equal(native, repeated) and torch.equal(dq_n, dq_r)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
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
