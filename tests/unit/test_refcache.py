"""Precomputed reference log-probs: equal to the live reference, keyed by weights, data and settings."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignlab.data.pairs import PairCollator
from alignlab.losses import combine
from alignlab.train.preference import CachedReference, ModelReference, PreferenceStep
from alignlab.train.refcache import cache_key, load_or_compute

VOCAB = 64


def tiny(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def make_pairs(n=7, seed=1):
    g = torch.Generator().manual_seed(seed)

    def ids(k):
        return torch.randint(1, VOCAB, (k,), generator=g).tolist()

    return [{"prompt_ids": ids(2 + i % 4), "chosen_ids": ids(1 + i % 3), "rejected_ids": ids(3 + i % 2)}
            for i in range(n)]


class Exploding:
    """A reference that must not run (the cache should have answered)."""

    def logps(self, policy, batch):
        raise AssertionError("reference forward ran on a cache hit")


def test_cached_values_equal_live_reference_and_second_run_hits(tmp_path):
    ref_model, policy, pairs = tiny(3), tiny(0), make_pairs()
    collate = PairCollator(0, "prefix")
    first = load_or_compute(ModelReference(ref_model), policy, ref_model, pairs, collate, settings={"max_length": 64},
                            cache_dir=tmp_path, batch_size=3, progress=False)
    assert not first.hit and first.path.exists()
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temp file left behind
    second = load_or_compute(Exploding(), policy, ref_model, pairs, collate, settings={"max_length": 64},
                             cache_dir=tmp_path, progress=False)
    assert second.hit and torch.equal(second.values, first.values)

    # Batches of a different size and layout than the precompute: the live reference agrees to 1e-5.
    data = first.attach(pairs)
    live_step = PreferenceStep(combine("dpo"), ModelReference(ref_model), beta=0.1)
    cached_step = PreferenceStep(combine("dpo"), CachedReference(), beta=0.1)
    for path in ("plain", "packed"):
        batch = PairCollator(0, path)(data[1:6])
        live = ModelReference(ref_model).logps(policy, batch)
        torch.testing.assert_close(CachedReference().logps(policy, batch), live, atol=1e-5, rtol=0)
        with torch.no_grad():
            torch.testing.assert_close(cached_step(policy, batch)[0], live_step(policy, batch)[0], atol=1e-6, rtol=0)


def test_key_changes_with_weights_data_and_settings():
    model, pairs = tiny(), make_pairs()
    base = cache_key(model, pairs, {"max_length": 64})
    assert cache_key(model, pairs, {"max_length": 64}) == base  # deterministic
    assert cache_key(model, pairs, {"max_length": 32}) != base
    changed = [dict(p) for p in pairs]
    changed[4] = dict(changed[4], chosen_ids=changed[4]["chosen_ids"] + [5])
    assert cache_key(model, changed, {"max_length": 64}) != base
    assert cache_key(model, pairs[:-1], {"max_length": 64}) != base
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3
    assert cache_key(model, pairs, {"max_length": 64}) != base
    # a reference whose config.json changed (rope scaling, norm epsilon) in the same folder: its log-probs moved
    # (~1 nat a sequence for rms_norm_eps 0.5) but no tensor of its state_dict did (RoPE's inv_freq is not in it)
    for change in ({"rms_norm_eps": 0.5}, {"rope_theta": 100.0}):
        other = tiny()
        other.config.update(change)
        assert cache_key(other, pairs, {"max_length": 64}) != cache_key(tiny(), pairs, {"max_length": 64})
    scaled = LlamaForCausalLM(LlamaConfig(**{**tiny().config.to_dict(), "rope_scaling": {"rope_type": "linear",
                                                                                           "factor": 8.0}}))
    scaled.load_state_dict(tiny().state_dict())
    scaled.config = tiny().config  # the same config object's keys: only the inv_freq buffer differs
    assert cache_key(scaled, pairs, {"max_length": 64}) != cache_key(tiny(), pairs, {"max_length": 64})


def test_key_ignores_lora_adapter_weights():
    """The reference of a LoRA policy is its base: training the adapter must not invalidate the cache."""
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(tiny(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    pairs = make_pairs()
    before = cache_key(lora, pairs)
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_" in n:
                p.add_(0.5)
    assert cache_key(lora, pairs) == before


def test_corrupt_cache_file_is_recomputed(tmp_path):
    ref_model, pairs = tiny(3), make_pairs(4)
    collate = PairCollator(0, "plain")
    first = load_or_compute(ModelReference(ref_model), None, ref_model, pairs, collate, cache_dir=tmp_path,
                            progress=False)
    first.path.write_bytes(b"not a safetensors file")
    again = load_or_compute(ModelReference(ref_model), None, ref_model, pairs, collate, cache_dir=tmp_path,
                            progress=False)
    assert not again.hit and torch.equal(again.values, first.values)


def test_a_lora_runs_cache_under_bf16_holds_the_live_adapter_references_numbers(tmp_path):
    """bf16 with a LoRA policy: the reference is the policy with its adapter off, which the training step runs under
    bf16 autocast; the cache pass runs under the same autocast, so step 0's log-ratios are exactly 0, not bf16
    rounding (0.42 nats on SmolLM2 pairs when the cache was float32)."""
    peft = pytest.importorskip("peft")
    from alignlab.train.dpo import DPOConfig, cached_sets
    from alignlab.train.preference import AdapterReference

    policy = peft.get_peft_model(tiny(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    cfg = DPOConfig(model="tiny", bf16=True, reference="cache", ref_cache_dir=str(tmp_path), batch_size=4,
                    progress="none")
    collate = PairCollator(0, "prefix")
    (data,) = cached_sets(cfg, [make_pairs()], policy, collate, "cpu")
    batch = collate(data[:4])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        live = AdapterReference().logps(policy, batch)
    plain = AdapterReference().logps(policy, batch)
    assert not torch.equal(live, plain)  # bf16 and float32 differ here, so the equality below means something
    assert torch.equal(CachedReference().logps(policy, batch), live)
