"""Learning-rate schedule and AdamW parameter groups."""

import math

import pytest
import torch

from alignlab.train.config import TrainConfig
from alignlab.train.optim import build_optimizer, lr_at, param_groups, warmup_steps_for


def test_warmup_is_linear_from_first_step():
    """warmup 3, peak 1.0: steps 0,1,2 -> 1/4, 2/4, 3/4 (nanoGPT's (s+1)/(w+1))."""
    got = [lr_at(s, base_lr=1.0, total_steps=10, warmup_steps=3) for s in range(3)]
    assert got == pytest.approx([0.25, 0.5, 0.75])


def test_cosine_values():
    """warmup 2, total 7 -> decay over steps 2..6, span 5 (transformers' convention: the floor is reached just
    after the last step, which still learns); progress 0, .2, .4, .6, .8.

    cosine: (1 + cos(pi p)) / 2 = 1, 0.904508, 0.654508, 0.345492, 0.095492; with min_lr_ratio 0.1:
    0.1 + 0.9 * those = 1, 0.914058, 0.689058, 0.410942, 0.185942. Ending at the floor on the last step gave it
    learning rate 0: a run of N steps made N - 1 updates.
    """
    got = [lr_at(s, base_lr=1.0, total_steps=7, warmup_steps=2) for s in range(2, 7)]
    assert got == pytest.approx([1.0, 0.904508, 0.654508, 0.345492, 0.095492], abs=1e-6)
    floor = [lr_at(s, base_lr=1.0, total_steps=7, warmup_steps=2, min_lr_ratio=0.1) for s in range(2, 7)]
    assert floor == pytest.approx([1.0, 0.914058, 0.689058, 0.410942, 0.185942], abs=1e-6)
    from transformers import get_cosine_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=7)
    assert [hf.lr_lambdas[0](s) for s in range(2, 7)] == pytest.approx(got)


def test_linear_and_constant():
    """linear, no warmup, total 5: 1, .8, .6, .4, .2; constant stays at the peak after warmup."""
    lin = [lr_at(s, base_lr=1.0, total_steps=5, schedule="linear") for s in range(5)]
    assert lin == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    const = [lr_at(s, base_lr=2.0, total_steps=5, warmup_steps=1, schedule="constant") for s in range(3)]
    assert const == pytest.approx([1.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_at(3, base_lr=1.0, total_steps=5, schedule="step")


def test_warmup_ratio_rounds_up():
    """ratio 0.05 of 30 steps = 1.5 -> 2 warmup steps; explicit warmup_steps wins."""
    assert warmup_steps_for(TrainConfig(warmup_ratio=0.05), 30) == 2
    assert warmup_steps_for(TrainConfig(warmup_ratio=0.05, warmup_steps=7), 30) == 7
    assert math.isclose(lr_at(0, base_lr=1.0, total_steps=30, warmup_steps=2), 1 / 3)



def test_whole_products_are_not_rounded_up_past_themselves():
    """0.07 x 100 is 7.000000000000001 in floats: ceil gave 8 warmup steps, and 1.1 epochs of 100 steps 111."""
    from alignlab.train.batches import epoch_note, total_steps

    assert [warmup_steps_for(TrainConfig(warmup_ratio=r), n) for r, n in ((0.07, 100), (0.14, 100), (0.28, 25))] \
        == [7, 14, 7]
    assert [total_steps(TrainConfig(epochs=e, batch_size=1), 100) for e in (1.1, 2.2, 0.55)] == [110, 220, 55]
    # the examples past the last whole batch of an epoch are left out of it: the run says so
    assert epoch_note(15, 8) == ("each epoch trains 8 of the 15 examples (whole batches of 8); the 7 left over "
                                 "differ from epoch to epoch")
    assert epoch_note(16, 8) is None and epoch_note(10, 4, "prompts").startswith("each epoch trains 8 of the 10 prompts")


def test_param_groups_decay_only_matrices_and_skip_frozen():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2))
    model[2].weight.requires_grad_(False)
    groups = param_groups(model, weight_decay=0.1)
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.1 and [p.shape for p in decay["params"]] == [(3, 4)]
    assert no_decay["weight_decay"] == 0.0
    assert sorted(p.numel() for p in no_decay["params"]) == [2, 3, 3, 3]  # 3 biases/gains of 3, bias of 2
    opt = build_optimizer(model, TrainConfig(learning_rate=1e-3, weight_decay=0.1, adam_beta2=0.95))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.95)
