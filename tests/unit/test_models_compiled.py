"""`compile: true` (issue 16): compiled MLP/RMSNorm blocks give the plain path's loss and gradients (to rounding),
their no-grad forward is the differentiated one's bit for bit (also in bf16, where eager rounds otherwise), the
sampler's decode stays eager, and the trainers and references are wired to it."""

import pytest
import torch
from test_models_checkpointing import SEQS, tiny_llama
from torch._dynamo.utils import counters

from alignlab.data.collate import pack
from alignlab.models.checkpointing import enable_checkpointing
from alignlab.models.compiled import compile_blocks, eager_blocks, is_compiled
from alignlab.train.steps import causal_lm_step


def _loss_and_grads(model):
    model.zero_grad(set_to_none=True)
    loss, _ = causal_lm_step(model, pack([{"input_ids": s, "labels": s} for s in SEQS]))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("checkpointing", [False, "selective"])
def test_compiled_blocks_give_the_plain_numbers(checkpointing):
    plain = tiny_llama("spans").train()
    model = tiny_llama("spans").train()  # the same seed: the same weights
    for m in (plain, model):
        enable_checkpointing(m, checkpointing)
    assert compile_blocks(model) == 2 * 3 + 1  # per layer one MLP and two norms, and the final norm
    torch._dynamo.reset()  # compile afresh, so that the graph count below shows the compiled code ran
    graphs = counters["stats"]["unique_graphs"]
    loss, grads = _loss_and_grads(plain)
    assert counters["stats"]["unique_graphs"] == graphs
    loss_c, grads_c = _loss_and_grads(model)
    assert counters["stats"]["unique_graphs"] > graphs
    torch.testing.assert_close(loss_c, loss, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads_c, grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # a second call, other lengths: no recompilation per length (dynamic shapes) and still the plain numbers
    before = counters["stats"]["unique_graphs"]
    SEQS.append([7, 8, 9])
    try:
        loss, _ = _loss_and_grads(plain)
        loss_c, _ = _loss_and_grads(model)
    finally:
        SEQS.pop()
    assert counters["stats"]["unique_graphs"] == before
    torch.testing.assert_close(loss_c, loss, rtol=1e-6, atol=1e-6)


def _logits(model, grad):
    ids = torch.tensor([SEQS[2]])
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        return model(input_ids=ids).logits.detach().float()


def test_no_grad_forwards_are_the_grad_forward_bit_for_bit_and_eager_blocks_are_eager():
    """What DPO's reference, RL's old log-probs and evaluation rely on, under bf16 autocast (where compiled and
    eager blocks round differently): a compiled model's no-grad forward and a separate compiled reference's
    (build_reference with compiled=True: float32 weights) equal the policy's differentiated forward; inside
    eager_blocks the blocks run their eager code (the plain model's numbers)."""
    from alignlab.train.reference import build_reference

    plain, model = tiny_llama("spans").train(), tiny_llama("spans").train()
    compile_blocks(model)
    reference = build_reference(model, "model", source=tiny_llama("spans"), bf16=True, compiled=True)
    assert is_compiled(reference.model.layers[0].mlp) and reference.lm_head.weight.dtype == torch.float32
    trained = _logits(model, grad=True)
    assert torch.equal(_logits(model, grad=False), trained)
    assert torch.equal(_logits(reference, grad=False), trained)
    with eager_blocks():
        assert torch.equal(_logits(model, grad=False), _logits(plain, grad=False))
    assert not torch.equal(_logits(plain, grad=False), trained)  # what the compiled reference is there for


def test_compile_changes_only_the_instance():
    model, other = tiny_llama("sdpa"), tiny_llama("sdpa")
    keys = list(model.state_dict())
    compile_blocks(model)
    compile_blocks(model)  # idempotent
    mlp = model.model.layers[0].mlp
    assert is_compiled(mlp) and is_compiled(model.model.norm)
    assert not is_compiled(other.model.layers[0].mlp) and not is_compiled(model.model.layers[0].self_attn)
    assert list(model.state_dict()) == keys
    assert compile_blocks(other, enabled=False) == 0 and not is_compiled(other.model.norm)
    with pytest.raises(ValueError, match="no \\*MLP or \\*RMSNorm"):
        compile_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_trainers_apply_the_key():
    """`compile: true` reaches the offline loop's and online RL's model preparation, and medusa refuses it."""
    from alignlab.config import load_config
    from alignlab.rl.critic import without_dropout
    from alignlab.train.config import TrainConfig
    from alignlab.train.loop import _prepare_model
    from alignlab.train.world import World

    cfg = load_config(TrainConfig, None, ["model=m", "data=d", "compile=true", "device=cpu"])
    model = tiny_llama("spans")
    _prepare_model(cfg, model, World())
    assert is_compiled(model.model.layers[1].mlp)
    rl_model = without_dropout(tiny_llama("spans"), False, True)
    assert is_compiled(rl_model.model.layers[0].input_layernorm)

    from alignlab.errors import AlignlabError
    from alignlab.recipes.medusa import MedusaConfig

    with pytest.raises(AlignlabError, match="compile do not apply"):
        load_config(MedusaConfig, None, ["model=m", "data=d", "compile=true"]).validate()


def test_a_loaded_model_keeps_its_compiled_blocks_across_train_and_eval(tmp_path):
    """transformers >= 5.25 replaces hub-kernel-tagged modules' `forward` at from_pretrained and on each
    train()/eval() mode change (with the `kernels` package, one of its requirements): loads pass use_kernels=False
    (models/load.py NO_HUB_KERNELS), so compile_blocks' forward stays, and the plain torch forward stays under it."""
    from alignlab.models.load import load_model

    tiny_llama("sdpa").save_pretrained(tmp_path)
    model = load_model(str(tmp_path), device="cpu")
    assert not getattr(model, "use_kernels", False)
    compile_blocks(model)
    for mode in (True, False, True):
        model.train(mode)
        assert all(is_compiled(m) for m in (model.model.norm, model.model.layers[0].mlp,
                                            model.model.layers[1].post_attention_layernorm))
