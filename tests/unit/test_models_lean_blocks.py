"""Lean RMSNorm and SwiGLU (models/lean_blocks.py): the plain path's loss and gradients bit for bit, fewer bytes
kept for backward, and only the modules whose code they replicate."""

import pytest
import torch
from test_models_checkpointing import SEQS, tiny_llama

from alignlab.data.collate import pack
from alignlab.models.checkpointing import enable_checkpointing
from alignlab.models.lean_blocks import lean_blocks
from alignlab.train.steps import causal_lm_step


def _run(lean, attn, bf16, dtype=torch.float32, checkpointing=False):
    model = tiny_llama(attn).to(dtype).train()
    enable_checkpointing(model, checkpointing)
    assert lean_blocks(model, lean) == (2 * 2 + 1 + 2 if lean else 0)  # two norms and an MLP a layer, final norm
    batch = pack([{"input_ids": s, "labels": s} for s in SEQS])
    kept = []

    def pack_hook(t):
        kept.append(t.untyped_storage().nbytes() if not isinstance(t, torch.nn.Parameter) else 0)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
            loss, _ = causal_lm_step(model, batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()], sum(kept)


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("attn", ["sdpa", "spans"])
def test_lean_blocks_give_the_plain_numbers_and_keep_less(attn, bf16):
    """float32 weights, with and without bf16 autocast: the same loss and gradients bit for bit, and fewer
    bytes held for backward (the norms' normalised input and silu's output are recomputed)."""
    loss, grads, kept = _run(False, attn, bf16)
    loss_l, grads_l, kept_l = _run(True, attn, bf16)
    assert torch.equal(loss, loss_l)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_l))
    assert kept_l < kept


def test_lean_blocks_in_a_bf16_model_and_under_checkpointing():
    """bf16 weights (the norm's float32 path casts back once, as the plain graph does) and selective
    recomputation on top: the plain path's numbers."""
    loss, grads, _ = _run(False, "spans", False, dtype=torch.bfloat16)
    loss_l, grads_l, _ = _run(True, "spans", False, dtype=torch.bfloat16)
    assert torch.equal(loss, loss_l) and all(torch.equal(a, b) for a, b in zip(grads, grads_l))
    loss_s, grads_s, _ = _run(True, "spans", True, checkpointing="selective")
    loss_p, grads_p, _ = _run(False, "spans", True)
    assert torch.equal(loss_s, loss_p) and all(torch.equal(a, b) for a, b in zip(grads_s, grads_p))


def test_only_plain_llama_blocks_change_and_no_grad_runs_the_module():
    model = tiny_llama("sdpa")
    model.model.layers[0].mlp.register_forward_hook(lambda *a: None)  # a hooked module keeps its own forward
    assert lean_blocks(model) == 2 * 2 + 1 + 1
    assert "forward" not in model.model.layers[0].mlp.__dict__
    assert lean_blocks(model) == 0  # already replaced: never twice
    calls = []  # a hooked down_proj is called as a module (the fused SwiGLU-down path would skip its hooks)
    model.model.layers[1].mlp.down_proj.register_forward_hook(lambda *a: calls.append(1))
    model(input_ids=torch.tensor([SEQS[0]])).logits.sum().backward()
    assert calls == [1]
    x = torch.randn(3, 32)
    norm = model.model.norm
    with torch.no_grad():
        assert torch.equal(norm(x), type(norm).forward(norm, x))
