"""The three forward paths give the same per-sequence log-probs, losses and gradients.

The expected values come from the plainest computation there is: each prompt+completion run
ALONE through the full model (`model(ids).logits`, float32 log_softmax), summing the log-probs of
the completion tokens (token t predicted by the logits at t-1). Pairs have prompts and
completions of different lengths so padding, packing offsets and prefix sharing all matter.
"""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignlab.data.pairs import PairCollator
from alignlab.errors import AlignlabError
from alignlab.losses import combine
from alignlab.models.attention import enable_span_attention
from alignlab.train.preference import (
    AdapterReference,
    ModelReference,
    NoReference,
    PreferenceStep,
    sequence_logps,
)
from alignlab.train.reference import choose_reference_kind

VOCAB = 96
LAYOUTS = [("plain", None), ("packed", 10_000), ("packed", 24), ("packed", None), ("prefix", 10_000), ("prefix", 30),
           ("prefix", None)]


def tiny(attn="sdpa", seed=0, dtype=torch.float32):
    """attn: sdpa, eager, or spans (sdpa switched to span attention, as load_model does)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa" if attn == "spans" else attn
    model = LlamaForCausalLM(cfg).to(dtype)
    if attn == "spans":
        assert enable_span_attention(model)
    return model


def make_pairs(seed=1):
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(1, VOCAB, (n,), generator=g).tolist()

    shapes = [(5, 3, 7), (9, 6, 2), (2, 1, 4), (12, 4, 4), (1, 8, 3)]
    return [{"prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(r)} for p, c, r in shapes]


def direct_logps(model, pairs):
    """[2B] summed completion log-probs, each sequence on its own (chosen first, then rejected)."""
    out = []
    for key in ("chosen_ids", "rejected_ids"):
        for p in pairs:
            ids = torch.tensor([p["prompt_ids"] + p[key]])
            lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
            out.append(lp[len(p["prompt_ids"]) - 1:].sum())
    return torch.stack(out)


def collate(path, row_tokens, pairs):
    return PairCollator(0, path, row_tokens=row_tokens)(pairs)


@pytest.mark.parametrize("attn", ["sdpa", "eager", "spans"])
def test_all_paths_equal_direct_logps(attn):
    model, pairs = tiny(attn), make_pairs()
    with torch.no_grad():
        expected = direct_logps(model, pairs)
        for path, rows in LAYOUTS:
            got, _ = sequence_logps(model, collate(path, rows, pairs), chunk_size=7)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=f"{path} rows={rows}")


@pytest.mark.parametrize("attn", ["sdpa", "spans"])
def test_token_counts_and_packed_rows_have_no_cross_attention(attn):
    """Changing one pair's tokens must not move any other pair's log-probs in packed/prefix rows."""
    model, pairs = tiny(attn), make_pairs()
    other = [dict(p) for p in pairs]
    other[0] = {"prompt_ids": [7] * 11, "chosen_ids": [8] * 5, "rejected_ids": [9] * 6}
    with torch.no_grad():
        for path in ("packed", "prefix"):
            a, _ = sequence_logps(model, collate(path, 10_000, pairs))
            b, _ = sequence_logps(model, collate(path, 10_000, other))
            keep = [i for i in range(10) if i not in (0, 5)]
            torch.testing.assert_close(a[keep], b[keep], atol=1e-6, rtol=0)
    counts = collate("prefix", None, pairs)["token_counts"].tolist()
    assert counts == [3, 6, 1, 4, 8, 7, 2, 4, 4, 3]


def test_a_span_plan_builds_no_dense_mask_and_a_lost_plan_fails(monkeypatch):
    """With a plan, transformers builds no [T, T] mask for the one-row batch (its packed-sequence detection would:
    T^2 bytes a forward) and the log-probs are still each sequence's own; the placeholder mask it gets instead
    makes a forward that lost its plan fail rather than attend across pairs."""
    from transformers.masking_utils import AttentionMaskInterface

    from alignlab.models.attention import SPANS, planned_mask

    model, pairs, built = tiny("spans"), make_pairs(), []
    mask_fn = AttentionMaskInterface._global_mapping[SPANS]
    monkeypatch.setitem(AttentionMaskInterface._global_mapping, SPANS,
                        lambda *a, **k: built.append(1) or mask_fn(*a, **k))
    batch = PairCollator(0, "prefix", spans=True)(pairs)
    assert batch["input_ids"].shape[0] == 1
    with torch.no_grad():
        got, _ = sequence_logps(model, batch)
        assert not built
        torch.testing.assert_close(got, direct_logps(model, pairs), atol=1e-5, rtol=0)
        with pytest.raises(RuntimeError):
            model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                  attention_mask=planned_mask(batch["input_ids"]))


def _grads(model, batch, weights):
    model.zero_grad()
    logps, _ = sequence_logps(model, batch)
    (logps * weights).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("attn", ["sdpa", "spans"])
def test_gradients_equal_across_paths(attn):
    """d(sum_i w_i logp_i)/d(theta) is the same whichever layout computed the log-probs.

    In the prefix layout the prompt runs once and receives the gradient of BOTH completions;
    equality with the plain path (prompt run twice) shows the shared prompt gets the sum.
    """
    model, pairs = tiny(attn), make_pairs()
    w = torch.linspace(-1.0, 1.5, 10)
    ref = _grads(model, collate("plain", None, pairs), w)
    for path, rows in LAYOUTS[1:]:
        got = _grads(model, collate(path, rows, pairs), w)
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], atol=1e-5, rtol=1e-4, msg=f"{path} {name}")


@pytest.mark.parametrize("attn", ["sdpa", "spans"])
def test_a_rounded_row_width_gives_the_same_logps_and_gradients(attn):
    """pad_to_multiple_of (DPO's default 16) only lengthens the pad tail: float32 log-probs and gradients as
    unrounded; under bf16 autocast each gradient no further from float32's than the unrounded bf16 path's (1.5x)."""
    model, pairs = tiny(attn), make_pairs()
    w = torch.linspace(-1.0, 1.5, 10)
    for path in ("packed", "prefix"):
        plain = PairCollator(0, path)(pairs)
        rounded = PairCollator(0, path, pad_to_multiple_of=24)(pairs)
        assert rounded["input_ids"].shape[1] % 24 == 0 and rounded["input_ids"].shape[1] > plain["input_ids"].shape[1]
        with torch.no_grad():
            torch.testing.assert_close(sequence_logps(model, rounded)[0], sequence_logps(model, plain)[0],
                                       atol=1e-6, rtol=0)
        ref = _grads(model, plain, w)
        got = _grads(model, rounded, w)
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], atol=1e-6, rtol=1e-5, msg=f"{path} {name}")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low_plain, low_rounded = _grads(model, plain, w), _grads(model, rounded, w)
        for name in ref:
            err = (low_rounded[name] - ref[name]).norm()
            assert err <= 1.5 * (low_plain[name] - ref[name]).norm() + 1e-6 * ref[name].norm(), f"{path} {name}"


class DDPLike(torch.nn.Module):
    """Stands in for DistributedDataParallel: the model sits in `.module` and must be called whole."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.module(*args, **kwargs)


def test_wrapped_model_goes_through_the_wrappers_forward():
    model, pairs = tiny(), make_pairs()
    wrapped = DDPLike(model)
    with torch.no_grad():
        for path in ("plain", "packed", "prefix"):
            batch = collate(path, None, pairs)
            torch.testing.assert_close(sequence_logps(wrapped, batch)[0], sequence_logps(model, batch)[0],
                                       atol=1e-6, rtol=0)
    assert wrapped.calls == 3


def _lora(model):
    peft = pytest.importorskip("peft")
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], lora_dropout=0.0)
    lora = peft.get_peft_model(model, cfg)
    with torch.no_grad():  # non-zero B so the adapter changes the outputs
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    return lora


def test_lora_model_paths_and_disabled_adapter_reference():
    """Through the peft wrapper all paths agree; the disabled adapter reproduces the base model."""
    base_copy = tiny()
    lora, pairs = _lora(tiny()), make_pairs()
    lora.train()
    with torch.no_grad():
        expected = direct_logps(lora, pairs)
        base_expected = direct_logps(base_copy, pairs)
        assert (expected - base_expected).abs().max() > 1e-3  # the adapter really matters
        for path, rows in LAYOUTS:
            batch = collate(path, rows, pairs)
            torch.testing.assert_close(sequence_logps(lora, batch)[0], expected, atol=1e-5, rtol=0)
            torch.testing.assert_close(AdapterReference().logps(lora, batch), base_expected, atol=1e-5, rtol=0)
    assert lora.training  # the reference forward ran in eval mode and handed train mode back


def _dpo_by_hand(pol, ref, beta, b):
    """-log sigmoid(beta * ((pc - pr) - (rc - rr))) averaged over pairs (Rafailov et al. 2023, Eq. 7)."""
    h = (pol[:b] - pol[b:]) - (ref[:b] - ref[b:])
    return torch.nn.functional.softplus(-beta * h).mean()


def test_dpo_step_equal_across_paths_with_model_reference():
    policy, ref_model, pairs = tiny(seed=0), tiny(seed=3), make_pairs()
    with torch.no_grad():
        pol, ref = direct_logps(policy, pairs), direct_logps(ref_model, pairs)
    expected = _dpo_by_hand(pol, ref, 0.1, 5)
    step = PreferenceStep(combine("dpo"), ModelReference(ref_model), beta=0.1)
    for path, rows in LAYOUTS:
        loss, metrics = step(policy, collate(path, rows, pairs))
        torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(metrics["logps/chosen"], pol[:5].mean(), atol=1e-5, rtol=0)
        rc, rr = 0.1 * (pol[:5] - ref[:5]), 0.1 * (pol[5:] - ref[5:])
        torch.testing.assert_close(metrics["rewards/margins"], (rc - rr).mean(), atol=1e-6, rtol=0)
        assert float(metrics["rewards/accuracies"]) == float((rc > rr).float().mean())


def test_averaged_losses_use_token_counts_and_need_no_reference():
    """SimPO (reference-free): -log sigmoid(beta * (avg_c - avg_r) - gamma) with avg = sum / count."""
    policy, pairs = tiny(), make_pairs()
    with torch.no_grad():
        pol = direct_logps(policy, pairs)
    counts = torch.tensor([3, 6, 1, 4, 8, 7, 2, 4, 4, 3], dtype=torch.float32)
    avg = pol / counts
    expected = torch.nn.functional.softplus(-(2.0 * (avg[:5] - avg[5:]) - 0.5)).mean()
    step = PreferenceStep(combine("simpo"), NoReference(), beta=2.0)
    for path in ("plain", "prefix"):
        loss, _ = step(policy, collate(path, None, pairs))
        torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)


def test_choose_reference_kind_reads_the_specs_not_names():
    plain_model = tiny()
    assert choose_reference_kind("auto", False, plain_model, False) == "none"
    assert choose_reference_kind("auto", True, plain_model, False) == "model"
    assert choose_reference_kind("cache", True, plain_model, True) == "cache"
    peft = pytest.importorskip("peft")
    fresh = peft.get_peft_model(tiny(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    assert choose_reference_kind("auto", True, fresh, False) == "adapter"  # B = 0: adapter off is the start
    lora = _lora(tiny())  # an adapter holding training: a frozen copy of the starting policy
    assert choose_reference_kind("auto", True, lora, False) == "model"
    assert choose_reference_kind("auto", True, lora, True) == "model"
    with pytest.raises(AlignlabError, match="needs reference"):
        choose_reference_kind("none", True, plain_model, False)
    with pytest.raises(AlignlabError, match="LoRA"):
        choose_reference_kind("adapter", True, plain_model, False)
    with pytest.raises(AlignlabError, match="one of"):
        choose_reference_kind("frozen", True, plain_model, False)


def test_model_reference_with_bf16_linear_weights_equals_autocast_over_fp32():
    """A frozen reference stored with bf16 Linear weights gives exactly what autocast gives over fp32 weights."""
    model, pairs = tiny("spans", seed=3), make_pairs()
    batch = collate("prefix", None, pairs)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected, _ = sequence_logps(model, batch)
    ref = ModelReference(tiny("spans", seed=3), autocast_dtype=torch.bfloat16)
    assert ref.model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert ref.model.get_input_embeddings().weight.dtype == torch.float32
    torch.testing.assert_close(ref.logps(None, batch), expected, atol=0, rtol=0)


@pytest.mark.parametrize("loss,weights", [("ipo", None), ("sigmoid_norm", None), (["dpo", "sft"], [0.5, 1.0])])
def test_logged_rewards_are_beta_times_the_summed_log_ratio_whatever_the_loss(loss, weights):
    # TRL logs beta * the summed log-ratio for every loss type, unweighted (tests/parity/test_dpo_losses_trl.py):
    # ipo and sigmoid_norm logged their per-token averaged ratio, and a mixture weighted the rewards
    policy, ref_model, pairs = tiny(seed=0), tiny(seed=3), make_pairs()
    with torch.no_grad():
        pol, ref = direct_logps(policy, pairs), direct_logps(ref_model, pairs)
    step = PreferenceStep(combine(loss, weights), ModelReference(ref_model), beta=0.1)
    with torch.no_grad():
        _, metrics = step(policy, collate("prefix", None, pairs))
    rc, rr = 0.1 * (pol[:5] - ref[:5]), 0.1 * (pol[5:] - ref[5:])
    torch.testing.assert_close(metrics["rewards/chosen"], rc.mean(), atol=1e-5, rtol=0)
    torch.testing.assert_close(metrics["rewards/rejected"], rr.mean(), atol=1e-5, rtol=0)
