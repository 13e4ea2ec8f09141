"""train.fsdp in one process: wrap unit, engine selection, and sharded training / checkpoint round trips.

A 1-rank gloo process group is enough for FSDP2 to wrap, run and gather (every shard is the whole
tensor), so the numerics below are checked against the unwrapped model exactly; the 2-rank runs are in
tests/integration/test_distributed_torchrun.py.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from alignlab.errors import AlignlabError
from alignlab.train import TrainConfig, build_optimizer, fsdp
from alignlab.train.checkpoint import save_checkpoint
from alignlab.train.steps import causal_lm_step


def tiny(tie: bool = True) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie))


def batches(n: int = 6) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 48, (2, 7), generator=g)
        out.append({"input_ids": ids, "labels": ids.clone()})
    return out


@pytest.fixture
def one_rank_group(tmp_path):
    import torch.distributed as dist

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # gloo + intra-op threads on a shared 2-core box spin: 10x slower
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    torch.set_num_threads(threads)


def full(model) -> dict[str, torch.Tensor]:
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
            for k, v in model.state_dict().items()}


def train_steps(model, optimizer, data: list[dict], accum: int = 2) -> None:
    """Optimizer steps of `accum` micro-batches each, gradient sync only on the last (as the loop does)."""
    for i in range(0, len(data), accum):
        for m, batch in enumerate(data[i:i + accum]):
            with fsdp.gradient_sync(model, m == accum - 1):
                loss, _ = causal_lm_step(model, batch)
                (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters()], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def test_wrap_unit_is_the_decoder_layer_through_peft():
    from alignlab.models.lora import LoraConfig, apply_lora

    assert fsdp.decoder_layer_classes(tiny()) == (LlamaDecoderLayer,)
    assert fsdp.decoder_layer_classes(apply_lora(tiny(), LoraConfig(r=2, alpha=4))) == (LlamaDecoderLayer,)
    with pytest.raises(AlignlabError, match="no transformer block class.*distributed=ddp"):
        fsdp.decoder_layer_classes(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_engine_selection_follows_config_then_accelerate(monkeypatch):
    for var in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(var, raising=False)
    assert fsdp.resolve_strategy("fsdp", 1) == "ddp"  # one process: nothing to shard
    assert fsdp.resolve_strategy("fsdp", 2) == "fsdp" and fsdp.resolve_strategy("ddp", 2) == "ddp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # `accelerate launch --use_fsdp`
    assert fsdp.resolve_strategy("ddp", 2) == "fsdp"
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(AlignlabError, match="DeepSpeed, which alignlab's training loop does not drive"):
        fsdp.resolve_strategy("ddp", 2)
    with pytest.raises(AlignlabError, match="DeepSpeed"):  # one process trained without it, silently
        fsdp.resolve_strategy("ddp", 1)


def test_online_rl_refuses_an_accelerate_config_it_would_ignore(monkeypatch):
    # grpo / ppo / online-dpo / distill trained plain DDP under a DeepSpeed or FSDP accelerate config
    from types import SimpleNamespace

    from alignlab.rl.config import PolicyGradientConfig
    from alignlab.rl.loop import build_state

    two_ranks = SimpleNamespace(size=2)
    for var, message in (("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_FSDP", "DDP only")):
        monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
        monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
        monkeypatch.setenv(var, "true")
        with pytest.raises(AlignlabError, match=message):
            build_state(PolicyGradientConfig(), two_ranks, reward_fn=None, reference=False, critic=False)


@pytest.mark.parametrize("tie", [True, False])
def test_sharded_training_matches_plain_and_resumes_from_a_full_checkpoint(one_rank_group, tmp_path, tie):
    """3 steps x 2 micro-batches on the sharded model == the same on the plain model (1e-6); the gathered
    full state is an HF checkpoint; a fresh sharded model resumed from it takes the same 4th step."""
    cfg = TrainConfig(learning_rate=1e-2, weight_decay=0.1)
    data = batches(8)
    plain = tiny(tie)
    plain_opt = build_optimizer(plain, cfg)
    sharded = fsdp.shard(tiny(tie))
    assert fsdp.is_sharded(sharded) and not fsdp.is_sharded(plain)
    sharded_opt = build_optimizer(sharded, cfg)  # after shard: the optimizer must hold the shards
    train_steps(plain, plain_opt, data[:6])
    train_steps(sharded, sharded_opt, data[:6])
    want = full(plain)
    for k, v in full(sharded).items():
        torch.testing.assert_close(v, want[k], atol=1e-6, rtol=0, msg=k)

    model_state, optim_state = fsdp.gather_full_state(sharded, sharded_opt)
    # A tied LM head is the embedding's parameter: written once, under its first name, as save_pretrained does.
    assert set(model_state) == set(want) - ({"lm_head.weight"} if tie else set())
    assert all(not hasattr(v, "full_tensor") for v in model_state.values())
    ckpt = save_checkpoint(tmp_path, 3, sharded, sharded_opt, {"note": "fsdp"}, model_state=model_state,
                           optimizer_state=optim_state)
    reloaded = LlamaForCausalLM.from_pretrained(ckpt)  # a plain HF folder
    for k, v in reloaded.state_dict().items():
        torch.testing.assert_close(v, want[k], atol=0, rtol=0, msg=k)

    resumed = fsdp.shard(tiny(tie))
    resumed_opt = build_optimizer(resumed, cfg)
    assert fsdp.load_checkpoint(ckpt, resumed, resumed_opt)["note"] == "fsdp"
    train_steps(plain, plain_opt, data[6:])
    train_steps(resumed, resumed_opt, data[6:])
    want = full(plain)
    for k, v in full(resumed).items():
        torch.testing.assert_close(v, want[k], atol=1e-6, rtol=0, msg=k)


def test_ddp_checkpoint_cannot_seed_an_fsdp_resume(one_rank_group, tmp_path):
    from alignlab.train.checkpoint import CheckpointError

    plain = tiny()
    opt = build_optimizer(plain, TrainConfig())
    train_steps(plain, opt, batches(2))
    ckpt = save_checkpoint(tmp_path, 1, plain, opt, {})
    sharded = fsdp.shard(tiny())
    with pytest.raises(CheckpointError, match="optimizer state is keyed by position"):
        fsdp.load_checkpoint(ckpt, sharded, build_optimizer(sharded, TrainConfig()))


def test_a_lora_scorer_checkpoint_maps_back_to_the_model_with_its_head():
    # peft saves the scorer head's modules_to_save copy as `score.weight`; only `.default.` was mapped back, so
    # every FSDP LoRA reward/value checkpoint was refused ("1 adapter tensors match no parameter of the model")
    import tempfile
    from pathlib import Path

    from alignlab.models.heads import load_scorer
    from alignlab.models.lora import LoraConfig, apply_lora
    from alignlab.train.checkpoint import save_model

    model = apply_lora(load_scorer("tiny-random"), LoraConfig(r=2, alpha=4, dropout=0.0))
    with tempfile.TemporaryDirectory() as d:
        save_model(model, Path(d))
        weights = fsdp._checkpoint_weights(model, Path(d))
    head = "base_model.model.score.modules_to_save.default.weight"
    assert torch.equal(weights[head], model.state_dict()[head])
    assert sum("lora_" in k for k in weights) == sum("lora_" in k for k in model.state_dict())
