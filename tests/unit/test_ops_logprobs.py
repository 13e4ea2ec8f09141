"""ops.logprobs: plain vs chunked log-probs (values and gradients), sequence reductions, entropy, memory."""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from alignlab.ops.logprobs import (
    chunked_token_logprobs,
    entropy_from_logits,
    sequence_logprobs,
    token_logprobs,
)


def test_token_logprobs_hand_values():
    """logits [0, ln 3] -> softmax [1/4, 3/4]; label 1 -> ln(3/4) = -0.287682; label -100 -> 0."""
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    labels = torch.tensor([[1, -100]])
    out = token_logprobs(logits, labels)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[math.log(0.75), 0.0]]))


def test_token_logprobs_bf16_upcasts():
    logits = torch.randn(3, 5, 11).to(torch.bfloat16)
    labels = torch.randint(0, 11, (3, 5))
    ref = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, labels), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_equals_plain_values_and_grads(chunk_size, with_bias):
    torch.manual_seed(0)
    n, h, v = 50, 16, 97
    hidden = torch.randn(n, h, dtype=torch.float64)
    weight = torch.randn(v, h, dtype=torch.float64) * 0.3
    bias = torch.randn(v, dtype=torch.float64) if with_bias else None
    labels = torch.randint(0, v, (n,))
    labels[::5] = -100
    upstream = torch.randn(n, dtype=torch.float64)

    def grads(fn):
        leaves = [t.clone().requires_grad_(True) for t in (hidden, weight) + ((bias,) if with_bias else ())]
        out = fn(*leaves)
        (out.double() * upstream).sum().backward()
        return out.detach(), [t.grad for t in leaves]

    def plain(hd, w, b=None):
        logits = hd @ w.t() + (b if b is not None else 0)
        return torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[:, None]).squeeze(-1) * (
            labels != -100
        )

    def chunked(hd, w, b=None):
        return chunked_token_logprobs(hd, w, labels, chunk_size=chunk_size, bias=b)

    v_plain, g_plain = grads(plain)
    v_chunk, g_chunk = grads(chunked)
    torch.testing.assert_close(v_chunk.double(), v_plain, atol=1e-6, rtol=0)
    assert (v_chunk[::5] == 0).all()
    for gp, gc in zip(g_plain, g_chunk):
        torch.testing.assert_close(gc.double(), gp, atol=1e-6, rtol=0)


def test_chunked_equals_token_logprobs_float32():
    torch.manual_seed(1)
    hidden = torch.randn(33, 8, requires_grad=True)
    weight = torch.randn(40, 8, requires_grad=True)
    labels = torch.randint(0, 40, (33,))
    a = token_logprobs(hidden @ weight.t(), labels)
    b = chunked_token_logprobs(hidden, weight, labels, chunk_size=10)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    ga = torch.autograd.grad(a.sum(), (hidden, weight))
    gb = torch.autograd.grad(b.sum(), (hidden, weight))
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-6)


def test_chunked_gradcheck():
    torch.manual_seed(2)
    hidden = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 4, -100, 2, 1, 3])
    # float64 inputs keep float64 accumulation, so the analytic backward must match finite differences.
    assert torch.autograd.gradcheck(
        lambda h, w, b: chunked_token_logprobs(h, w, labels, chunk_size=4, bias=b), (hidden, weight, bias)
    )


_MEMORY_PROBE = textwrap.dedent(
    """
    import sys, torch
    from alignlab.ops.logprobs import chunked_token_logprobs, token_logprobs
    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    torch.manual_seed(0)
    n, h, v = 2048, 32, 8192
    hidden = torch.randn(n, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    labels = torch.randint(0, v, (n,))
    if sys.argv[1] == "chunked":
        step = lambda: chunked_token_logprobs(hidden, weight, labels, chunk_size=256).sum().backward()
    else:
        step = lambda: token_logprobs(hidden @ weight.t(), labels).sum().backward()
    step()
    hidden.grad = weight.grad = None
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS mark (VmHWM)
    base = rss("VmRSS:")
    step()
    print(rss("VmHWM:") - base)
    """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_chunked_peak_memory_well_below_full_logits():
    """Forward+backward peak RSS growth, N=2048 tokens, V=8192: full float32 logits are N*V*4 = 67.1 MB.

    glibc's adaptive mmap threshold would keep freed chunks resident and blur the measure, so the
    probe runs with MALLOC_MMAP_THRESHOLD_ fixed: each big tensor is then mapped and unmapped.
    Measured here: chunked ~18 MB (two 8 MB chunk blocks alive at once), plain ~201 MB.
    """
    full = 2048 * 8192 * 4
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")

    def probe(kind):
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, kind], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        return int(out.stdout.split()[-1])

    chunked, plain = probe("chunked"), probe("plain")
    assert chunked < 0.4 * full, (chunked, full)
    assert plain > full, (plain, full)


def test_sequence_logprobs_sum_and_average():
    """Row 0: tokens [-1, -2, -3] mask [1, 1, 0] -> sum -3, mean -1.5. Row 1: mask all 0 -> 0 both ways."""
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    torch.testing.assert_close(sequence_logprobs(lp, mask), torch.tensor([-3.0, 0.0]))
    torch.testing.assert_close(sequence_logprobs(lp, mask, average=True), torch.tensor([-1.5, 0.0]))


def test_entropy_hand_values_and_chunking():
    """Uniform over 4 -> ln 4 = 1.386294; one-hot-ish (logit 100 vs 0) -> ~0."""
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    ent = entropy_from_logits(logits)
    assert abs(ent[0].item() - math.log(4)) < 1e-6
    assert ent[1].item() < 1e-6
    p = torch.softmax(logits[2], -1)
    assert abs(ent[2].item() - float(-(p * p.log()).sum())) < 1e-6
    torch.testing.assert_close(entropy_from_logits(logits, chunk_size=2), ent)


def test_chunked_bf16_matches_plain_bf16_autograd():
    """bf16 model: logits matmul in bf16 then float32 log-softmax, on both paths; grads come back in bf16."""
    torch.manual_seed(3)
    hidden = torch.randn(40, 16).to(torch.bfloat16).requires_grad_(True)
    weight = (torch.randn(64, 16) * 0.2).to(torch.bfloat16).requires_grad_(True)
    labels = torch.randint(0, 64, (40,))
    plain = token_logprobs(hidden @ weight.t(), labels)
    chunked = chunked_token_logprobs(hidden, weight, labels, chunk_size=16)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, plain, atol=1e-6, rtol=0)
    gp = torch.autograd.grad(plain.sum(), (hidden, weight))
    gc = torch.autograd.grad(chunked.sum(), (hidden, weight))
    for a, b in zip(gp, gc):
        assert b.dtype == torch.bfloat16
        torch.testing.assert_close(b.float(), a.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_chunked_peak_memory_cuda():
    """On a GPU the allocator reports the peak directly: chunked fwd+bwd stays well under N*V*4 bytes."""
    n, h, v = 4096, 64, 32768
    dev = torch.device("cuda")
    hidden = torch.randn(n, h, device=dev, requires_grad=True)
    weight = torch.randn(v, h, device=dev, requires_grad=True)
    labels = torch.randint(0, v, (n,), device=dev)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    chunked_token_logprobs(hidden, weight, labels, chunk_size=512).sum().backward()
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < 0.5 * n * v * 4


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-6)])
def test_chunked_frozen_head_grad_matches_plain(dtype, atol):
    """LoRA case: lm_head frozen, so the hidden-state gradient is formed in the forward pass; same numbers."""
    torch.manual_seed(4)
    hidden = torch.randn(37, 12, dtype=dtype)
    weight = torch.randn(50, 12, dtype=dtype) * 0.5  # requires_grad False: a frozen head
    labels = torch.randint(0, 50, (37,))
    labels[3] = -100
    upstream = torch.randn(37, dtype=dtype)
    h1, h2 = hidden.clone().requires_grad_(True), hidden.clone().requires_grad_(True)
    plain = token_logprobs(h1 @ weight.t(), labels)
    chunked = chunked_token_logprobs(h2, weight, labels, chunk_size=8)
    torch.testing.assert_close(chunked, plain, atol=atol, rtol=0)
    (plain * upstream).sum().backward()
    (chunked * upstream).sum().backward()
    torch.testing.assert_close(h2.grad, h1.grad, atol=atol, rtol=0)
    assert h2.grad[3].abs().max() == 0  # an ignored label sends no gradient


@pytest.mark.parametrize("frozen_head", [False, True])
def test_chunked_under_autocast_matches_plain_under_autocast(frozen_head):
    """float32 weights under bf16 autocast (mixed precision): the head matmuls run in bf16 forward AND
    backward, so backward recomputes exactly the forward's logits: the hidden-state gradient equals the plain path's,
    and the head's differs only by where bf16 rounds (per chunk here, once there), inside the gap between
    the autocast and the float32 gradients."""
    torch.manual_seed(4)
    hidden = torch.randn(50, 32, requires_grad=True)
    weight = (torch.randn(96, 32) * 0.2).requires_grad_(not frozen_head)
    labels, g = torch.randint(0, 96, (50,)), torch.randn(50)
    inputs = (hidden,) if frozen_head else (hidden, weight)

    def grads(fn, autocast):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = fn()
        return out, torch.autograd.grad((out * g).sum(), inputs)

    plain, gp = grads(lambda: token_logprobs(hidden @ weight.t(), labels), True)
    _, g32 = grads(lambda: token_logprobs(hidden @ weight.t(), labels), False)
    chunked, gc = grads(lambda: chunked_token_logprobs(hidden, weight, labels, chunk_size=16), True)
    torch.testing.assert_close(chunked, plain, atol=1e-6, rtol=0)
    if frozen_head:  # the unit gradient is formed in the forward and scaled after bf16 rounding
        torch.testing.assert_close(gc[0], gp[0], atol=2e-2, rtol=2e-2)
    else:
        torch.testing.assert_close(gc[0], gp[0], atol=1e-6, rtol=0)
        assert (gc[1] - gp[1]).norm() < 0.8 * (g32[1] - gp[1]).norm()


def test_lm_head_logprobs_honours_logit_scale_as_the_model_forward_does():
    """Issue 15 item 9: a Cohere-style model multiplies its logits by config.logit_scale; the DPO path (through
    lm_head_logprobs) must give the log-probs of the model's own logits, not of the unscaled head."""
    from transformers import CohereConfig, CohereForCausalLM

    from alignlab.ops.logprobs import lm_head_logprobs, token_logprobs

    torch.manual_seed(0)
    model = CohereForCausalLM(CohereConfig(vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, logit_scale=0.25))
    ids = torch.tensor([[3, 7, 11, 5, 9]])
    out = model(input_ids=ids, output_hidden_states=True)
    want = token_logprobs(out.logits[0, :-1], ids[0, 1:])
    got = lm_head_logprobs(model, out.hidden_states[-1][0, :-1], ids[0, 1:], chunk_size=2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    unscaled = token_logprobs(model.lm_head(out.hidden_states[-1][0, :-1]), ids[0, 1:])
    assert not torch.allclose(unscaled, want, atol=1e-3)  # the scale matters for this model


def test_scored_tokens_needs_a_token_before_each():
    from alignlab.ops.logprobs import scored_tokens

    assert scored_tokens([], [5]) == 0 and scored_tokens([], [5, 6]) == 1 and scored_tokens([1], [5]) == 1


def _per_chunk_reference(hidden, weight, labels, g, chunk, autocast):
    """The chunked head written out with fresh tensors per chunk (torch.logsumexp, casts where autocast puts
    them): what the buffer-reusing, in-place implementation must equal bit for bit."""
    values, grad_h, grad_w = [], [], None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        w = weight.to(torch.bfloat16) if autocast else weight
        for start in range(0, hidden.shape[0], chunk):
            h, y, gc = hidden[start:start + chunk], labels[start:start + chunk], g[start:start + chunk]
            valid = y != -100
            safe = y.masked_fill(~valid, 0)
            logits = (h @ w.t()).float()
            lse = torch.logsumexp(logits, -1)
            values.append(torch.where(valid, logits.gather(-1, safe[:, None]).squeeze(-1) - lse, 0.0))
            gv = torch.where(valid, gc, 0.0)
            d = (logits - lse[:, None]).exp() * -gv[:, None]
            d = d.scatter_add(-1, safe[:, None], gv[:, None])
            grad_h.append((d.to(w.dtype) @ w).to(h.dtype))
            part = d.t() @ h.float()
            grad_w = part.float() if grad_w is None else grad_w + part
    return torch.cat(values), torch.cat(grad_h), grad_w


@pytest.mark.parametrize("kept", [False, True])
@pytest.mark.parametrize("autocast", [False, True])
def test_chunked_reused_buffers_equal_fresh_tensors_bit_for_bit(autocast, kept):
    """Speed path of issue 16 (one [chunk, V] buffer per pass, logsumexp in place, dlogits lowered once, the
    head's cast kept from forward to backward; with `kept`, buffers and the cast kept across passes by
    reused_buffers): the same numbers as fresh tensors per chunk, exactly, over three passes with a fused AdamW
    step on the weight before the last (it changes the weight in place without bumping its version counter; the
    optimizer-step core says so with weights_updated, as here)."""
    from contextlib import nullcontext

    from alignlab.ops.buffers import _LOCAL, reused_buffers, weights_updated

    torch.manual_seed(5)
    hidden = torch.randn(45, 24, requires_grad=True)
    weight = (torch.randn(300, 24) * 0.3).requires_grad_(True)
    labels = torch.randint(0, 300, (45,))
    labels[::7] = -100
    g = torch.randn(45)
    with reused_buffers() if kept else nullcontext():
        for step in range(3):
            if step == 2:
                weight.grad = torch.ones_like(weight)
                torch.optim.AdamW([weight], lr=0.1, fused=True).step()
                weights_updated()
            want_v, want_h, want_w = _per_chunk_reference(hidden.detach(), weight.detach(), labels, g, 16, autocast)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                got = chunked_token_logprobs(hidden, weight, labels, chunk_size=16)
            got_h, got_w = torch.autograd.grad((got * g).sum(), (hidden, weight))
            assert torch.equal(got, want_v)
            assert torch.equal(got_h, want_h)
            assert torch.equal(got_w, want_w)
        if kept:
            assert _LOCAL.buffers and any(k[0] == "cast" for k in _LOCAL.buffers) == autocast
    assert getattr(_LOCAL, "buffers", None) is None  # freed on exit


def test_trainable_cast_is_kept_for_one_optimizer_step():
    """Inside reused_buffers a trainable weight is cast once per optimizer step (grad_accum micro-batches share
    it), into the same block every step; optimizer_step (fused AdamW: no version bump) and an in-place change
    (version bump) each make the next cast fresh. Outside, every call casts."""
    from alignlab.ops.buffers import kept_cast, reused_buffers
    from alignlab.train.step import optimizer_step

    weight = torch.randn(20, 8, requires_grad=True)
    opt = torch.optim.AdamW([weight], lr=0.1, fused=True)
    assert kept_cast(weight, torch.bfloat16) is not kept_cast(weight, torch.bfloat16)
    with reused_buffers():
        first = kept_cast(weight, torch.bfloat16)
        assert kept_cast(weight, torch.bfloat16) is first
        optimizer_step(opt, [lambda: ((weight ** 2).sum(), {})], [1.0], total=1.0)
        after = kept_cast(weight, torch.bfloat16)
        assert after is first and torch.equal(after, weight.detach().to(torch.bfloat16))
        with torch.no_grad():
            weight.mul_(3.0)
        assert torch.equal(kept_cast(weight, torch.bfloat16), weight.detach().to(torch.bfloat16))


def test_frozen_head_cast_is_kept_until_the_weight_changes():
    """A frozen head under autocast (a reference model's tied embedding) is cast once, not per forward; an
    in-place change of the weight (its version counter) recasts it."""
    from alignlab.ops.logprobs import _head_weight

    weight = torch.randn(20, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first, again = _head_weight(weight), _head_weight(weight)
        assert first is again and first.dtype == torch.bfloat16
        with torch.no_grad():
            weight.mul_(2.0)
        changed = _head_weight(weight)
    assert changed is not first and torch.equal(changed, weight.to(torch.bfloat16))
    trainable = torch.randn(20, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a trainable head changes every step: cast per pass
        assert _head_weight(trainable) is not _head_weight(trainable)


def test_chunked_bf16_head_with_bias_rounds_as_the_plain_head():
    """A head with a bias in low precision gives the head module's own numbers: F.linear adds the bias inside the
    bf16 product (one rounding), for a bf16 model and for a float32 head under bf16 autocast (which casts the
    bias); the log-softmax then runs in float32. (Adding a float32 bias after the bf16 product, as before, was up
    to 3e-2 off the module's log-probs.)"""
    import torch.nn.functional as F

    torch.manual_seed(6)
    hidden, weight = torch.randn(20, 16), torch.randn(64, 16) * 0.3
    bias, labels = torch.randn(64) * 3.0, torch.randint(0, 64, (20,))

    def plain(logits):
        logits = logits.float()
        return logits.gather(-1, labels[:, None]).squeeze(-1) - torch.logsumexp(logits, -1)

    low = [t.to(torch.bfloat16) for t in (hidden, weight, bias)]
    assert torch.equal(chunked_token_logprobs(*low[:2], labels, chunk_size=8, bias=low[2]), plain(F.linear(*low)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = chunked_token_logprobs(hidden, weight, labels, chunk_size=8, bias=bias)
        want = plain(F.linear(hidden, weight, bias))
    assert torch.equal(got, want)


@pytest.mark.parametrize("frozen", [False, True])
def test_chunked_entropy_is_the_softmax_entropy_and_leaves_the_log_probs_alone(frozen):
    """entropy=True returns each row's softmax entropy (entropy_from_logits to rounding) from the same chunks, with
    no gradient, and the log-probs and their gradients bit for bit as without it; a trainable and a frozen head."""
    from alignlab.ops.logprobs import chunked_token_logprobs, entropy_from_logits

    torch.manual_seed(5)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = (torch.randn(90, 16) * 0.5).requires_grad_(not frozen)
    labels = torch.randint(0, 90, (37,))
    labels[3] = -100
    lp, ent = chunked_token_logprobs(hidden, weight, labels, chunk_size=8, entropy=True)
    assert not ent.requires_grad
    torch.testing.assert_close(ent, entropy_from_logits((hidden @ weight.t()).detach()), atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(lp.sum(), [hidden] + ([] if frozen else [weight]))
    plain = chunked_token_logprobs(hidden, weight, labels, chunk_size=8)
    assert torch.equal(lp, plain)
    for a, b in zip(grads, torch.autograd.grad(plain.sum(), [hidden] + ([] if frozen else [weight]))):
        assert torch.equal(a, b)
