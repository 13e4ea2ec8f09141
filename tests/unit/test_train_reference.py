"""train/reference.py: which reference a policy gets and what is built (the one place that decides)."""

import gc
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignlab.errors import AlignlabError
from alignlab.models.prepare import is_peft
from alignlab.train.reference import (
    build_reference,
    choose_reference_kind,
    resolve_reference_kind,
    step_reference,
)

IDS = torch.tensor([[3, 17, 5, 40, 9, 2]])


def tiny(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def lora(model):
    peft = pytest.importorskip("peft")
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    out = peft.get_peft_model(model, cfg)
    with torch.no_grad():  # a trained-looking adapter: it changes the outputs
        for n, p in out.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    return out


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def test_resolve_auto_adapter_model_and_errors():
    plain, peft_policy = tiny(), lora(tiny())
    assert not is_peft(plain) and is_peft(peft_policy)
    assert resolve_reference_kind("auto", plain) == "model"
    assert resolve_reference_kind("auto", peft_policy) == "adapter"
    assert resolve_reference_kind("model", peft_policy) == "model"
    assert resolve_reference_kind("adapter", peft_policy) == "adapter"
    with pytest.raises(AlignlabError, match="adapter needs a LoRA policy"):
        resolve_reference_kind("adapter", plain)
    with pytest.raises(AlignlabError, match="auto, adapter or model"):
        resolve_reference_kind("cache", plain)


def test_build_model_reference_is_a_frozen_independent_copy():
    """The copy computes what the policy computed when it was built, in eval mode, with no gradients, and
    training the policy afterwards does not move it."""
    policy = tiny()
    ref = build_reference(policy, "model")
    assert ref is not policy and not ref.training
    assert not any(p.requires_grad for p in ref.parameters())
    before = logits(policy)
    torch.testing.assert_close(logits(ref), before, rtol=0, atol=0)
    with torch.no_grad():
        next(policy.parameters()).add_(1.0)
    assert not torch.equal(logits(policy), before)
    torch.testing.assert_close(logits(ref), before, rtol=0, atol=0)


def test_lora_policy_model_reference_folds_the_adapter_and_adapter_kind_builds_nothing():
    policy = lora(tiny())
    assert build_reference(policy, "adapter") is None
    ref = build_reference(policy, "model")
    assert not is_peft(ref)
    torch.testing.assert_close(logits(ref), logits(policy), rtol=1e-5, atol=1e-5)
    with pytest.raises(AlignlabError, match="LoRA"):
        build_reference(tiny(), "adapter")
    with pytest.raises(AlignlabError, match="kind"):
        build_reference(policy, "cache")


def test_source_model_and_bf16_linear_weights():
    """A copy of a given source model is the reference (not the policy; the source is left as given); bf16 stores
    Linear weights in bfloat16 and leaves the embeddings in float32."""
    policy, other = tiny(0), tiny(1)
    ref = build_reference(policy, "model", source=other, bf16=True)
    assert ref is not other and torch.equal(ref.get_input_embeddings().weight, other.get_input_embeddings().weight)
    assert other.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    assert ref.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert ref.get_input_embeddings().weight.dtype == torch.float32


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's mappings (/proc, Linux)")
def test_bf16_reference_from_a_checkpoint_releases_the_files_mapping(tmp_path):
    """transformers loads float32 tensors zero-copy out of the safetensors file's mapping; once the Linear weights
    are lowered, the kept embeddings and norms must not hold the whole file mapped (and resident) any more. Same
    outputs as the reference built before (its own copies hold the same values)."""
    tiny(0).save_pretrained(tmp_path / "ckpt")
    weights = str(tmp_path / "ckpt" / "model.safetensors")

    def mapped():
        return any(line.rstrip().endswith(weights) for line in open("/proc/self/maps"))

    plain = build_reference(tiny(0), "model", source=str(tmp_path / "ckpt"))
    assert mapped()  # what the release undoes: the float32 reference still lives in the file's mapping
    del plain
    gc.collect()
    assert not mapped()
    ref = build_reference(tiny(0), "model", source=str(tmp_path / "ckpt"), bf16=True)
    assert not mapped()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(logits(ref), logits(tiny(0).eval()), atol=0, rtol=0)


def test_choose_kind_and_step_reference_objects():
    plain = tiny()
    assert choose_reference_kind("auto", True, plain, has_ref_model=True) == "model"
    assert choose_reference_kind("model", True, lora(tiny()), has_ref_model=False) == "model"
    assert step_reference("none", plain).kind == "none"
    assert step_reference("cache", plain).kind == "cache"
    ref = step_reference("model", plain, source=tiny(3))
    assert ref.kind == "model" and ref.model is not plain
    with pytest.raises(AlignlabError, match="LoRA"):
        step_reference("adapter", plain)


def test_a_trained_adapter_at_the_start_of_training_gets_a_frozen_copy():
    # an in-memory LoRA SFT result given to dpo / grpo: its adapter switched off is the model BEFORE the SFT, so
    # the reference was not the starting policy (step-0 rewards 0.38 / 0.06, kl 0.19 before any update)
    from alignlab.train.reference import adapter_is_trained, start_reference_kind

    peft = pytest.importorskip("peft")
    fresh = peft.get_peft_model(tiny(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    trained = lora(tiny())
    assert not adapter_is_trained(fresh) and adapter_is_trained(trained)
    assert start_reference_kind("auto", fresh) == "adapter"  # B = 0: adapter off is the start, no second copy
    assert start_reference_kind("auto", trained) == "model"
    assert start_reference_kind("adapter", trained) == "adapter"  # asked for explicitly
    assert choose_reference_kind("auto", True, trained, has_ref_model=False) == "model"
    ref = build_reference(trained, "model")  # the starting policy, adapter folded in
    torch.testing.assert_close(logits(ref), logits(trained.eval()), atol=1e-5, rtol=0)
    assert resolve_reference_kind("auto", trained) == "adapter"  # explain: a trained adapter's own base
    # peft starts an embedding layer's adapter with A = 0 and B random: fresh, not trained (it built a second copy)
    emb = peft.get_peft_model(tiny(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "embed_tokens"]))
    assert not adapter_is_trained(emb) and start_reference_kind("auto", emb) == "adapter"
