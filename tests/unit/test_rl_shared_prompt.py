"""The prompt-shared RL forward (rl/shared_prompt.py): its layout by hand, and the padded path's log-probs,
entropies and gradients through it."""

from types import SimpleNamespace

import pytest
import torch
from test_rollout_tiny import tiny_lm

from alignlab.data.layout import Span
from alignlab.models.attention import enable_span_attention
from alignlab.rl.rollout import pack_rollout, policy_logprobs
from alignlab.rl.shared_prompt import shared_prompt_batch


def _samples(spec):
    return [SimpleNamespace(prompt_ids=p, completion_ids=c) for p, c in spec]


def test_layout_shares_each_prompt_and_gathers_the_predicting_positions():
    ro = pack_rollout(_samples([([5, 6], [7, 8]), ([5, 6], [9]), ([4], [3])]), pad_id=0, device="cpu")
    batch, gather = shared_prompt_batch(ro, torch.arange(3))
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 4, 3]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 2, 0, 1]]
    assert batch["attn_spans"] == (Span(0, 0, 4, ((0, 4),)), Span(0, 4, 5, ((0, 2), (4, 5))),
                                   Span(0, 5, 7, ((5, 7),)))
    # token 0 from the prompt's last position, token t from the completion's token t-1; padding cells 0
    assert gather.tolist() == [[1, 2], [1, 0], [5, 0]]
    batch, gather = shared_prompt_batch(ro, torch.tensor([2, 1]))  # any subset, in the caller's order
    assert batch["input_ids"].tolist() == [[4, 3, 5, 6, 9]] and gather.tolist() == [[0, 0], [3, 0]]


def test_layout_rounds_its_width_up_with_a_pad_tail_of_its_own():
    """7 tokens, pad_to_multiple_of=4: a tail of one token 0 at position 0 in a span of its own; the rest and
    the gather index as unrounded."""
    ro = pack_rollout(_samples([([5, 6], [7, 8]), ([5, 6], [9]), ([4], [3])]), pad_id=0, device="cpu")
    plain, plain_gather = shared_prompt_batch(ro, torch.arange(3))
    ro.pad_to_multiple_of = 4
    batch, gather = shared_prompt_batch(ro, torch.arange(3))
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 4, 3, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 2, 0, 1, 0]]
    assert batch["attn_spans"] == plain["attn_spans"] + (Span(0, 7, 8, ((7, 8),)),)
    assert torch.equal(gather, plain_gather)
    ro.pad_to_multiple_of = 7  # already a multiple: no tail
    assert shared_prompt_batch(ro, torch.arange(3))[0]["input_ids"].shape == (1, 7)


@pytest.mark.parametrize("temperature,entropy_grad", [(1.0, True), (0.7, True), (1.0, False)])
def test_shared_prompt_forward_gives_the_padded_log_probs_entropy_and_gradients(temperature, entropy_grad):
    """(1.0, False) is the fused chunked head (entropy as a metric only: ops/logprobs.py)."""
    model, _ = tiny_lm(seed=3)
    model.config._attn_implementation = "sdpa"
    assert enable_span_attention(model)
    g = torch.Generator().manual_seed(0)
    spec = []
    for plen in (5, 9, 3):  # three prompts of different lengths, 3 samples each of ragged lengths (one empty)
        prompt = torch.randint(3, 100, (plen,), generator=g).tolist()
        spec += [(prompt, torch.randint(3, 100, (n,), generator=g).tolist()) for n in (4, 7, 1 if plen != 3 else 0)]
    ro = pack_rollout(_samples(spec), pad_id=0, device="cpu")
    idx = torch.tensor([4, 0, 8, 1, 5, 3])  # a shuffled minibatch mixing groups
    outs = []
    for shared in (False, True):
        ro.shared_prompts = shared
        model.zero_grad()
        lp, ent = policy_logprobs(model, ro, idx, temperature, want_entropy=True, entropy_grad=entropy_grad)
        mask = ro.mask[idx]
        ((lp * mask).sum() + ((ent * mask).sum() if entropy_grad else 0)).backward()
        outs.append((lp.detach(), ent.detach() * mask, [p.grad.clone() for p in model.parameters()]))
    (lp0, ent0, g0), (lp1, ent1, g1) = outs
    assert torch.allclose(lp0, lp1, atol=1e-5) and torch.allclose(ent0, ent1, atol=1e-5)
    assert (lp1 == 0).sum() == (ro.mask[idx] == 0).sum()  # padding cells carry no log-prob
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_shared_prompt_critic_gives_the_padded_values_and_gradients():
    """PPO's critic (a scalar-head model, rl/critic.py) through the prompt-shared row: the padded rows' values at
    every response token and the same gradients of a masked sum."""
    from alignlab.models.heads import load_scorer
    from alignlab.rl.critic import critic_values

    torch.manual_seed(0)
    critic = load_scorer("tiny-random")
    g = torch.Generator().manual_seed(1)
    spec = []
    for plen in (6, 2):
        prompt = torch.randint(3, 100, (plen,), generator=g).tolist()
        spec += [(prompt, torch.randint(3, 100, (n,), generator=g).tolist()) for n in (5, 2, 3)]
    ro = pack_rollout(_samples(spec), pad_id=0, device="cpu")
    idx = torch.tensor([3, 0, 5, 1])  # a shuffled minibatch mixing the groups
    outs = []
    for shared in (False, True):
        ro.shared_prompts = shared
        critic.zero_grad()
        v = critic_values(critic, ro, idx)
        mask = ro.mask[idx]
        (v * mask * torch.arange(1.0, 1 + v.numel()).view_as(v)).sum().backward()
        outs.append((v.detach() * mask, [p.grad.clone() for p in critic.parameters()]))
    (v0, g0), (v1, g1) = outs
    assert mask.sum() == 5 + 5 + 3 + 2 and torch.allclose(v0, v1, atol=1e-5)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def _logprobs_and_grads(model, ro, idx, bf16):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
        lp, _ = policy_logprobs(model, ro, idx, 1.0)
    (lp * ro.mask[idx]).sum().backward()
    return lp.detach(), [p.grad.clone() for p in model.parameters()]


def test_a_rounded_width_gives_the_unrounded_log_probs_and_gradients():
    """float32: the same log-probs and gradients (the pad tail is neither attended to nor gathered); bf16 autocast:
    each gradient no further from float32's than the unrounded bf16 path's (1.5x), as for SFT's packed rows."""
    model, _ = tiny_lm(seed=3)
    model.config._attn_implementation = "sdpa"
    assert enable_span_attention(model)
    g = torch.Generator().manual_seed(1)
    spec = []
    for plen in (6, 4):
        prompt = torch.randint(3, 100, (plen,), generator=g).tolist()
        spec += [(prompt, torch.randint(3, 100, (n,), generator=g).tolist()) for n in (5, 2, 8)]
    ro = pack_rollout(_samples(spec), pad_id=0, device="cpu")  # 6 + 15 + 4 + 15 = 40 tokens: a tail of 8 at 16
    ro.shared_prompts, idx = True, torch.arange(6)
    runs = {}
    for multiple in (None, 16):
        ro.pad_to_multiple_of = multiple
        runs[multiple] = [_logprobs_and_grads(model, ro, idx, bf16) for bf16 in (False, True)]
    (lp, ref), (_, plain) = runs[None]
    (lp16, grads), (_, rounded) = runs[16]
    assert shared_prompt_batch(ro, idx)[0]["input_ids"].shape == (1, 48)
    torch.testing.assert_close(lp16, lp, rtol=1e-6, atol=1e-7)
    for a, r in zip(grads, ref):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-7)
    for a, p, r in zip(rounded, plain, ref):
        assert (a - r).norm() <= 1.5 * (p - r).norm() + 1e-6 * r.norm()
