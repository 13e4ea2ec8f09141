"""Kept bf16 weight casts (models/kept_casts.py): one cast per weight per optimizer step gives the per-forward casts'
losses and gradients bit for bit, across micro-batches, recomputation and optimizer steps; the sampler leaves the
kept-cast forward in place."""

import pytest
import torch
from test_models_checkpointing import SEQS, _Count, tiny_llama

from alignlab.data.collate import pack
from alignlab.models.checkpointing import enable_checkpointing
from alignlab.models.kept_casts import keep_weight_casts, kept_cast_forward, kept_casts, share_input_casts
from alignlab.models.lean_blocks import lean_blocks
from alignlab.ops.buffers import reused_buffers, weights_updated
from alignlab.train.steps import causal_lm_step


def _train(model, kept, checkpointing):
    """Two optimizer steps (fused AdamW, as the loop's) of two micro-batches each under bf16 autocast without its
    cache (as the loop's): every micro-batch's loss, each step's gradients, and the number of copy ops."""
    enable_checkpointing(model, checkpointing)
    if kept:
        assert keep_weight_casts(model) == 2 * 7 + 1  # per layer q, k, v, o, gate, up, down; the LM head
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    losses, grads, count = [], [], _Count()
    with reused_buffers(), count:
        for _ in range(2):
            for rows in (SEQS[:2], SEQS[1:]):
                with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
                    loss, _ = causal_lm_step(model, pack([{"input_ids": s, "labels": s} for s in rows]))
                loss.backward()
                losses.append(loss.detach())
            grads.append([p.grad.clone() for p in model.parameters()])
            opt.step()
            weights_updated()
            opt.zero_grad(set_to_none=True)
    return losses, grads, count.ops.get("_to_copy", 0) + count.ops.get("copy_", 0)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_kept_casts_give_the_per_forward_casts_numbers_bit_for_bit(checkpointing):
    plain_losses, plain_grads, plain_copies = _train(tiny_llama("spans").train(), False, checkpointing)
    losses, grads, copies = _train(tiny_llama("spans").train(), True, checkpointing)
    assert all(torch.equal(a, b) for a, b in zip(losses, plain_losses))
    for step, plain in zip(grads, plain_grads):
        assert all(torch.equal(a, b) for a, b in zip(step, plain))
    # per step each weight is cast once, not once per forward: the 14 in the layers run 2 micro-batches x2 when
    # recomputed, the LM head (outside the checkpointed layers) 2
    forwards = 2 * (2 if checkpointing else 1)
    assert plain_copies - copies == 2 * (14 * (forwards - 1) + 1)


def test_outside_bf16_autocast_or_reused_buffers_the_module_runs_its_own_forward():
    model, plain = tiny_llama("sdpa"), tiny_llama("sdpa")
    keep_weight_casts(model)
    assert keep_weight_casts(model) == 0  # idempotent
    ids = torch.tensor([SEQS[2]])
    assert torch.equal(model(input_ids=ids).logits, plain(input_ids=ids).logits)  # float32
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        assert torch.equal(model(input_ids=ids).logits, plain(input_ids=ids).logits)  # no reused_buffers
        with reused_buffers():
            with torch.inference_mode():  # a kept copy made here could not enter a training graph later
                model(input_ids=ids)
            model(input_ids=ids).logits.sum().backward()
    assert keep_weight_casts(tiny_llama("sdpa"), enabled=False) == 0


@pytest.mark.parametrize("amx", [True, False], ids=["bf16-attention", "fp32-attention"])
def test_the_bf16_sampler_packs_kept_cast_linears_and_gives_their_forward_back(monkeypatch, amx):
    from alignlab.rollout import weights
    from alignlab.rollout.generate import SamplingConfig, sampling_forward

    monkeypatch.setattr(weights, "cpu_has_amx", lambda: amx)  # both attention dtypes on any CPU

    model = tiny_llama("spans")
    keep_weight_casts(model)
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    packed = weights.packed_linears(model, torch.bfloat16, lambda p: p.detach().bfloat16(), 4)
    if torch.backends.mkldnn.is_available() and weights.onednn_packs_bf16():  # else nothing is packed (AVX2 only)
        assert set(packed) == set(linears)
    from alignlab.rollout.kvcache import new_cache

    forward = sampling_forward(model, SamplingConfig(max_new_tokens=4, batch_size=2, weights_dtype="bfloat16"))
    cache = new_cache(model, dtype=forward.cache_dtype)[0]  # as the engine asks: float32 keys where no AMX
    with torch.inference_mode():
        forward(torch.tensor([SEQS[0]]), torch.ones(1, len(SEQS[0]), dtype=torch.long),
                torch.arange(len(SEQS[0]))[None], cache)
    assert all(kept_cast_forward(m) for m in linears)


@pytest.mark.parametrize(("keys", "kept"), [(["grad_accum=2"], {"weight", "input"}),
                                            (["gradient_checkpointing=true"], {"weight"}), ([], {"input"}),
                                            (["grad_accum=2", "compile=true"], set()),
                                            (["grad_accum=2", "bf16=false"], set())])
def test_the_training_loop_keeps_casts_where_a_step_casts_a_weight_more_than_once(keys, kept):
    """Weight casts where a step would cast a weight more than once; input casts shared where activations are
    held from forward to backward (no checkpointing); neither compiled or in float32."""
    from alignlab.config import load_config
    from alignlab.train.config import TrainConfig
    from alignlab.train.loop import _prepare_model
    from alignlab.train.world import World

    cfg = load_config(TrainConfig, None, ["model=m", "data=d", "device=cpu", "bf16=true", "batch_size=2", *keys])
    model = tiny_llama("spans")
    _prepare_model(cfg, model, World())
    assert kept_casts(model.model.layers[0].mlp.down_proj) == kept


def _shared_run(shared, lean):
    model = tiny_llama("spans").train()
    lean_blocks(model, lean)
    if shared:
        assert share_input_casts(model) == 2 * 7 + 1
    with _Count() as count, torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        loss, _ = causal_lm_step(model, pack([{"input_ids": s, "labels": s} for s in SEQS]))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()], count.ops.get("_to_copy", 0)


@pytest.mark.parametrize("lean", [False, True])
def test_shared_input_casts_give_the_plain_numbers_with_fewer_casts(lean):
    """q, k and v (gate and up) read one bf16 copy of their float32 input: the same loss and gradients bit for bit
    (each reader's gradient is cast back to float32 and summed there, as autocast's own casts do) and 3 fewer casts
    a layer in forward (that the readers hold that one copy for backward: the next test)."""
    loss, grads, copies = _shared_run(False, lean)
    loss_s, grads_s, copies_s = _shared_run(True, lean)
    assert torch.equal(loss, loss_s) and all(torch.equal(a, b) for a, b in zip(grads, grads_s))
    assert copies - copies_s == 2 * 3


def test_shared_input_casts_hold_one_copy_for_backward():
    model = tiny_llama("sdpa").train()
    share_input_casts(model)
    x = torch.randn(5, 32, requires_grad=True)
    attn = model.model.layers[0].self_attn
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        q, k = attn.q_proj(x), attn.k_proj(x)
        with torch.no_grad():
            x.add_(1.0)  # a changed input (its version moves) gets a new copy
        v = attn.v_proj(x)
    nodes = [t.grad_fn.next_functions[0][0] for t in (q, k, v)]  # mm(input, weight.t())
    assert all(type(n).__name__ == "_CastBackBackward" for n in nodes) and len(set(map(id, nodes))) == 3
    held = [t.grad_fn._saved_self.untyped_storage().data_ptr() for t in (q, k, v)]  # each its own node, one block
    assert held[0] == held[1] != held[2]  # the changed input got a copy of its own
    (q.sum() + k.sum() + v.sum()).backward()
    assert x.grad.dtype == torch.float32
