"""Activation checkpointing, full and selective (issue 16): the plain path's numbers, and selective recomputes
the cheap ops but never a matrix product."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaConfig, LlamaForCausalLM

from alignlab.config import ConfigError, load_config
from alignlab.data.collate import pack
from alignlab.models.attention import enable_span_attention
from alignlab.models.checkpointing import enable_checkpointing
from alignlab.train.config import TrainConfig
from alignlab.train.steps import causal_lm_step

SEQS = [[5, 9, 13, 2, 7], [11, 4, 60], [3, 3, 8, 21, 40, 41, 90]]


def tiny_llama(attn):
    """Two layers, grouped-query heads; `spans`: sdpa switched to span attention, as load_model does."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    cfg._attn_implementation = "sdpa"
    model = LlamaForCausalLM(cfg)
    if attn == "spans":
        assert enable_span_attention(model)
    return model


class _Count(TorchDispatchMode):
    """Counts aten ops by name while active."""

    def __init__(self):
        super().__init__()
        self.ops: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops[name] = self.ops.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def _run(mode, attn, bf16):
    model = tiny_llama(attn).train()
    enable_checkpointing(model, mode)
    batch = pack([{"input_ids": s, "labels": s} for s in SEQS])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
        loss, _ = causal_lm_step(model, batch)
    with _Count() as backward:
        loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()], backward.ops


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("attn", ["sdpa", "spans"])
def test_checkpointing_gives_the_plain_numbers(attn, bf16):
    """Loss and every gradient equal the plain path's bit for bit (the dropped ops are recomputed exactly);
    in backward, full checkpointing runs the layers' matrix products again, selective does not, and both
    recompute the RMSNorm's elementwise ops (rsqrt) that the plain path kept."""
    loss, grads, ops = _run(False, attn, bf16)
    for mode in (True, "selective"):
        loss_m, grads_m, ops_m = _run(mode, attn, bf16)
        assert torch.equal(loss, loss_m)
        assert all(torch.equal(a, b) for a, b in zip(grads, grads_m))
        assert ops_m.get("rsqrt", 0) > ops.get("rsqrt", 0)
        matmuls = ("mm", "addmm", "bmm")
        if mode is True:
            assert sum(ops_m.get(k, 0) for k in matmuls) > sum(ops.get(k, 0) for k in matmuls)
        else:
            assert {k: ops_m.get(k, 0) for k in matmuls} == {k: ops.get(k, 0) for k in matmuls}


def test_config_takes_true_false_or_selective():
    assert load_config(TrainConfig, None, ["model=m", "data=d", "gradient_checkpointing=selective"]) \
        .gradient_checkpointing == "selective"
    assert load_config(TrainConfig, None, ["model=m", "data=d", "gradient_checkpointing=true"]) \
        .gradient_checkpointing is True
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        load_config(TrainConfig, None, ["model=m", "data=d", "gradient_checkpointing=partial"])
