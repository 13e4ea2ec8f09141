"""generalized_jsd worked out by hand on two-token vocabularies."""

import math

import pytest
import torch

from alignlab.errors import AlignlabError
from alignlab.losses.distill import generalized_jsd


def logp(*probs):
    return torch.tensor(probs).log()


def test_ends_are_the_plain_kls():
    """P = (0.5, 0.5), Q = (0.9, 0.1). Forward KL(P||Q) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.510826;
    reverse KL(Q||P) = 0.9 ln(0.9/0.5) + 0.1 ln(0.1/0.5) = 0.368064."""
    p, q = logp(0.5, 0.5), logp(0.9, 0.1)
    assert float(generalized_jsd(q, p, 0.0)) == pytest.approx(0.510826, abs=1e-5)
    assert float(generalized_jsd(q, p, 1.0)) == pytest.approx(0.368064, abs=1e-5)


def test_half_is_the_jensen_shannon_divergence():
    """beta 0.5, M = (0.7, 0.3): 0.5 [0.5 ln(0.5/0.7) + 0.5 ln(0.5/0.3)] + 0.5 [0.9 ln(0.9/0.7) + 0.1 ln(0.1/0.3)]
    = 0.5 * 0.087177 + 0.5 * 0.116313 = 0.101745; identical distributions give 0."""
    p, q = logp(0.5, 0.5), logp(0.9, 0.1)
    expected = 0.5 * (0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3)) + \
        0.5 * (0.9 * math.log(0.9 / 0.7) + 0.1 * math.log(0.1 / 0.3))
    assert float(generalized_jsd(q, p, 0.5)) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.101745, abs=1e-5)
    assert float(generalized_jsd(p, p, 0.3)) == pytest.approx(0.0, abs=1e-7)


def test_the_gradient_moves_the_student_toward_the_teacher_and_beta_is_checked():
    q_logits = torch.tensor([2.0, 0.0], requires_grad=True)
    generalized_jsd(torch.log_softmax(q_logits, -1), logp(0.5, 0.5), 1.0).backward()
    assert q_logits.grad[0] > 0 > q_logits.grad[1]  # descending lowers the over-confident logit
    with pytest.raises(AlignlabError, match="beta"):
        generalized_jsd(logp(0.5, 0.5), logp(0.5, 0.5), 1.5)


def test_sampled_reverse_kl_value_and_gradient_by_hand():
    """Student softmax(z) with z = (ln 0.9, ln 0.1) -> p = (0.9, 0.1); teacher (0.5, 0.5); token 0 sampled.
    Value k1 = ln 0.9 - ln 0.5 = 0.587787. Gradient sg(k1) * d log p_0 / dz = k1 * (1 - 0.9, 0 - 0.1)
    = (0.0587787, -0.0587787)."""
    from alignlab.losses.distill import sampled_reverse_kl

    z = torch.tensor([math.log(0.9), math.log(0.1)], requires_grad=True)
    student = torch.log_softmax(z, -1)[0]
    value = sampled_reverse_kl(student, torch.tensor(math.log(0.5)))
    assert float(value) == pytest.approx(0.587787, abs=1e-6)
    value.backward()
    assert z.grad.tolist() == pytest.approx([0.0587787, -0.0587787], abs=1e-6)


def test_sampled_reverse_kl_is_unbiased_for_the_reverse_kl_and_its_gradient():
    """The expectation over the sampled token y ~ p_s (summed exactly over a 3-token vocabulary) of the value is
    KL(p_s || p_t), and of the gradient is the gradient of generalized_jsd(beta=1) (the full reverse KL)."""
    from alignlab.losses.distill import sampled_reverse_kl

    z = torch.tensor([0.3, -1.2, 0.8], dtype=torch.float64, requires_grad=True)
    teacher = torch.log_softmax(torch.tensor([1.0, 0.0, -0.5], dtype=torch.float64), -1)
    student = torch.log_softmax(z, -1)
    p = student.exp().detach()
    expected = sum(p[y] * sampled_reverse_kl(student[y], teacher[y]) for y in range(3))
    (grad_sampled,) = torch.autograd.grad(expected, z, retain_graph=True)
    full = generalized_jsd(student, teacher, 1.0)
    (grad_full,) = torch.autograd.grad(full, z)
    assert float(expected) == pytest.approx(float(full), abs=1e-6)  # both compute in float32
    assert torch.allclose(grad_sampled, grad_full, atol=1e-6)


@pytest.mark.parametrize("kl_estimator", ["full", "sampled"])
def test_held_out_divergence_of_a_student_equal_to_its_teacher_is_zero_under_bf16(kl_estimator):
    """eval_kl runs the teacher under the run's bf16 autocast; the student's held-out forward takes the same
    precision (the training forward gets it from optimizer_step), so identical weights give exactly 0."""
    import types

    from alignlab.data.rows import PromptRow
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.rl.config import DistillConfig
    from alignlab.rl.distill import held_out_divergence
    from alignlab.train.loop import autocast

    cfg = DistillConfig(model="tiny-random", teacher="tiny-random", bf16=True, max_new_tokens=8,
                        generation_batch_size=4, kl_estimator=kl_estimator)
    state = types.SimpleNamespace(cfg=cfg, policy=load_model("tiny-random").eval(),
                                  teacher=load_model("tiny-random").eval(), tokenizer=load_tokenizer("tiny-random"),
                                  device="cpu", compute=lambda cache: autocast(cfg, "cpu", cache=cache))
    rows = [PromptRow([{"role": "user", "content": t}]) for t in ("Hello there", "What is 2 + 3?")]
    assert held_out_divergence(state, rows)["eval_kl"] == 0.0
