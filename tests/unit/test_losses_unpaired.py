"""KTO against hand-computed values (TRL KTOTrainer.kto_loss conventions).

Three completions, beta = 0.1, SUMMED log-probs:
    policy = [-10, -12, -9], ref = [-11, -11, -9] -> r = [1, -1, 0]; labels [desirable, undesirable, desirable]
"""

import pytest
import torch

from alignlab.losses import combine
from alignlab.losses.unpaired import kto, kto_kl_estimate

POLICY = torch.tensor([-10.0, -12.0, -9.0])
REF = torch.tensor([-11.0, -11.0, -9.0])
LABELS = torch.tensor([True, False, True])


def close(actual, expected):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=1e-6, rtol=0)


def test_kl_estimate_is_clamped_and_detached():
    """Mismatched-pair diffs [1, -3] average -1 -> clamped to 0; diffs [1, 2] average 1.5, no gradient."""
    close(kto_kl_estimate(torch.tensor([-20.0, -22.0]), torch.tensor([-21.0, -19.0])), 0.0)
    p = torch.tensor([-20.0, -20.0], requires_grad=True)
    kl = kto_kl_estimate(p, torch.tensor([-21.0, -22.0]))
    close(kl, 1.5)
    assert not kl.requires_grad


def test_kto_with_positive_kl_and_weights():
    """z0 = 1.5, desirable_weight 1, undesirable_weight 1.33:
    desirable r=1:   1 - s(0.1 (1 - 1.5)) = 1 - s(-0.05) = s(0.05) = 0.512497
    undesirable r=-1: 1.33 (1 - s(0.1 (1.5 + 1))) = 1.33 s(-0.25) = 1.33 * 0.437823 = 0.582305
    desirable r=0:   1 - s(-0.15) = s(0.15) = 0.537430
    rewards beta r: chosen [0.1, 0.0], rejected [-0.1].
    """
    policy = POLICY.clone().requires_grad_(True)
    losses, chosen, rejected, kl = kto(
        policy,
        REF,
        LABELS,
        torch.tensor([-20.0, -20.0]),
        torch.tensor([-21.0, -22.0]),
        beta=0.1,
        undesirable_weight=1.33,
    )
    close(kl, 1.5)
    close(losses, [0.512497, 0.582305, 0.537430])
    close(chosen, [0.1, 0.0])
    close(rejected, [-0.1])
    losses.sum().backward()
    # Desirable completions are pushed up, the undesirable one down.
    assert policy.grad[0] < 0 and policy.grad[2] < 0 and policy.grad[1] > 0


def test_kto_with_zero_kl():
    """z0 = max(0, mean([1, -3])) = 0: desirable r=1: 1 - s(0.1) = 0.475021; undesirable r=-1: 1 - s(0.1) = 0.475021;
    desirable r=0: 1 - s(0) = 0.5.
    """
    losses, _, _, kl = kto(
        POLICY, REF, LABELS, torch.tensor([-20.0, -22.0]), torch.tensor([-21.0, -19.0]), beta=0.1
    )
    close(kl, 0.0)
    close(losses, [0.475021, 0.475021, 0.5])


def test_kto_through_registry_mix():
    mix = combine("kto", params={"kto": {"undesirable_weight": 1.33}})
    assert not mix.paired and mix.needs_reference and mix.needs_summed and not mix.needs_averaged
    out = mix.compute_unpaired(
        POLICY, REF, LABELS, torch.tensor([-20.0, -20.0]), torch.tensor([-21.0, -22.0]), beta=0.1
    )
    close(out.losses, [0.512497, 0.582305, 0.537430])
    close(out.terms["kl"], 1.5)


def test_kto_mismatched_pairs_never_score_a_completion_under_its_own_prompt():
    """A paired file read as unpaired puts chosen and rejected of each prompt side by side (A A B B C C): rolling
    by one inside micro-batches of 2 would score A's rejected answer under A. Each example's KL completion comes
    from the nearest earlier example with another prompt: in its micro-batch if there is one, else anywhere."""
    from alignlab.data.pairs import unpaired_as_pairs

    prompts = ["A", "A", "B", "B", "C", "C"]
    examples = [{"prompt_ids": [ord(p)], "completion_ids": [100 + i], "label": i % 2 == 0}
                for i, p in enumerate(prompts)]
    for group in (2, 3, 4, 6):
        out = unpaired_as_pairs(examples, group)
        donors = [o["rejected_ids"][0] - 100 for o in out]
        assert all(prompts[d] != prompts[i] for i, d in enumerate(donors)), (group, donors)
    assert [o["rejected_ids"][0] - 100 for o in unpaired_as_pairs(examples, 4)] == [3, 3, 1, 1, 3, 3]
    assert [o["rejected_ids"][0] - 100 for o in unpaired_as_pairs(examples, 2)] == [5, 5, 1, 1, 3, 3]
    one = [{**e, "prompt_ids": [1]} for e in examples[:4]]  # one prompt throughout: the neighbour, as before
    assert [o["rejected_ids"][0] - 100 for o in unpaired_as_pairs(one, 2)] == [1, 0, 3, 2]


def test_a_borrowed_completion_is_cut_to_what_fits_after_the_prompt():
    """The KL row joins one example's prompt to another's completion, which was cut against its own prompt: rows
    ran to 125 tokens under max_length 96 (TRL cuts its KL inputs to max_length), and a learned-position model
    raised IndexError."""
    from alignlab.data.pairs import unpaired_as_pairs

    examples = [{"prompt_ids": [1] * 50, "completion_ids": [2] * 10, "label": True},
                {"prompt_ids": [3] * 5, "completion_ids": [4] * 55, "label": False}]
    out = unpaired_as_pairs(examples, 2, max_length=60)
    assert [len(o["prompt_ids"]) + len(o["rejected_ids"]) for o in out] == [60, 15]
    assert out[0]["rejected_ids"] == [4] * 10 and out[1]["chosen_ids"] == [4] * 55  # own completions untouched
    assert len(unpaired_as_pairs(examples, 2)[0]["rejected_ids"]) == 55  # no max_length: as given


def test_kto_needs_one_class_weighted_and_its_margin_comes_from_the_reduced_means():
    """Both weights 0 made the loss 0 and training a no-op; a single 0 drops one class and stays allowed. The margin
    was a per-micro-batch value averaged over the micro-batches holding both labels: at eval batch 2 it read
    +0.258 where chosen - rejected was -0.154. The step leaves it to the loop, which takes the difference."""
    from alignlab.errors import AlignlabError
    from alignlab.train.preference import UnpairedStep
    from alignlab.train.step import add_margins

    with pytest.raises(AlignlabError, match="both 0"):
        combine("kto", params={"kto": {"desirable_weight": 0.0, "undesirable_weight": 0.0}})
    combine("kto", params={"kto": {"desirable_weight": 0.0}})
    assert add_margins({"rewards/chosen": 0.1, "rewards/rejected": 0.3})["rewards/margins"] == pytest.approx(-0.2)
    assert add_margins({"rewards/chosen": 1.0, "rewards/rejected": 0.0, "rewards/margins": 5.0})["rewards/margins"] == 5.0

    out = combine("kto").compute_unpaired(POLICY, REF, LABELS, torch.tensor([-20.0, -20.0]),
                                          torch.tensor([-21.0, -22.0]), beta=0.1)
    assert "rewards/margins" not in UnpairedStep._metrics(out, POLICY, LABELS)
