"""Loss registry: specs declare needs; LossMix combines losses as TRL combines loss_type lists."""

import pytest
import torch

from alignlab.errors import AlignlabError
from alignlab.losses import LOSSES, PairLogps, RunningMean, combine, get_loss_spec
from alignlab.losses import preference as P

SUMMED = PairLogps(
    torch.tensor([-10.0, -15.0]),
    torch.tensor([-12.0, -10.0]),
    torch.tensor([-11.0, -10.0]),
    torch.tensor([-11.0, -10.0]),
)
AVERAGED = PairLogps(
    torch.tensor([-1.0, -1.5]),
    torch.tensor([-1.2, -1.0]),
    torch.tensor([-1.1, -1.0]),
    torch.tensor([-1.1, -1.0]),
)


def test_get_loss_spec_unknown_lists_valid_names():
    with pytest.raises(AlignlabError) as err:
        get_loss_spec("dpoo")
    assert "'dpoo'" in str(err.value) and "dpo" in str(err.value) and "kto" in str(err.value)


def test_specs_declare_needs():
    """Reference-free: simpo, orpo, sft. Averaged logps: ipo, sigmoid_norm, simpo, orpo, sft. Unpaired: kto."""
    assert {n for n, s in LOSSES.items() if not s.needs_reference} == {"simpo", "orpo", "sft"}
    assert {n for n, s in LOSSES.items() if s.average_logps} == {
        "ipo",
        "sigmoid_norm",
        "simpo",
        "orpo",
        "sft",
    }
    assert {n for n, s in LOSSES.items() if not s.paired} == {"kto"}
    assert get_loss_spec("ipo").logp_kind == "averaged" and get_loss_spec("dpo").logp_kind == "summed"
    assert get_loss_spec("bco_pair").needs_reward_mean and get_loss_spec("orpo").uses_nll


def test_rpo_mix_is_dpo_plus_weighted_nll():
    """loss [dpo, sft], weights [1, 0.2], TRL batch NLL 1.5: dpo [0.598139, 0.974077] + 0.2 * 1.5 = +0.3.

    Rewards are the weighted sum (TRL): sft's are zero, so they equal DPO's [0.1, -0.5] / [-0.1, 0].
    """
    mix = combine(["dpo", "sft"], [1.0, 0.2])
    assert mix.needs_reference and mix.needs_summed and mix.needs_averaged and mix.uses_nll
    assert mix.logp_kinds == {"summed", "averaged"} and mix.names == ("dpo", "sft")
    out = mix.compute(SUMMED, AVERAGED, beta=0.1, nll=torch.tensor(1.5))
    torch.testing.assert_close(out.losses, torch.tensor([0.898139, 1.274077]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.1, -0.5]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.1, 0.0]))
    assert set(out.terms) == {"dpo", "sft"} and out.terms["sft"].item() == pytest.approx(1.5)
    assert out.loss.item() == pytest.approx((0.898139 + 1.274077) / 2, abs=1e-6)


def test_reference_free_mix_needs_no_reference():
    mix = combine("simpo")
    assert not mix.needs_reference and mix.needs_averaged and not mix.needs_summed
    assert mix.default_beta == 2.0 and dict(mix.params[0]) == {"gamma": 0.5, "label_smoothing": 0.0}
    # sft reads no beta: listed first, its 0.1 was simpo's (and sigmoid_norm's 5.0 became 0.1)
    assert combine(["sft", "simpo"]).default_beta == combine(["simpo", "sft"]).default_beta == 2.0
    out = mix.compute(None, PairLogps(AVERAGED.policy_chosen, AVERAGED.policy_rejected), beta=2.0)
    expected = P.simpo(AVERAGED.policy_chosen, AVERAGED.policy_rejected, beta=2.0, gamma=0.5)[0]
    torch.testing.assert_close(out.losses, expected)
    with pytest.raises(ValueError, match="averaged"):
        mix.compute(SUMMED, None, beta=2.0)


def test_params_override_and_validation():
    mix = combine("cdpo", params={"cdpo": {"label_smoothing": 0.0}})
    torch.testing.assert_close(
        mix.compute(SUMMED, None, beta=0.1).losses, P.dpo(*vars(SUMMED).values(), beta=0.1)[0]
    )
    with pytest.raises(AlignlabError, match="label_smoothing"):
        combine("cdpo", params={"cdpo": {"eps": 0.1}})
    with pytest.raises(AlignlabError, match="not among"):
        combine("dpo", params={"ipo": {}})
    with pytest.raises(AlignlabError, match="loss_weights"):
        combine(["dpo", "sft"], [1.0])
    with pytest.raises(AlignlabError, match="unpaired"):
        combine(["dpo", "kto"])
    with pytest.raises(AlignlabError, match="twice"):
        combine(["dpo", "dpo"])
    # YAML 1.1 reads 5e-1 as text: SimPO crashed at its first step ('str' / 'float'), cDPO called 5e-2 out of range
    assert combine("simpo", params={"simpo": {"gamma": "5e-1"}}).params[0]["gamma"] == 0.5
    assert combine("cdpo", params={"cdpo": {"label_smoothing": "5e-2"}}).params[0]["label_smoothing"] == 0.05
    for bad, match in (({"simpo": {"gamma": "abc"}}, "simpo.gamma: expected a finite number, got 'abc'"),
                       ({"simpo": None}, "loss_params.simpo: expected a mapping")):
        with pytest.raises(AlignlabError, match=match):
            combine("simpo", params=bad)
    # a negative weight turned its loss around (sft at -0.5 lowered the chosen answer's likelihood)
    for weights in ([1.0, -0.5], [0.0, 0.0], [1.0, float("nan")]):
        with pytest.raises(AlignlabError, match="loss_weights: each must be finite and >= 0, and one > 0"):
            combine(["dpo", "sft"], weights)


def test_bco_running_mean_is_explicit_state():
    """Step 1: batch mean reward -0.125 -> mean -0.125 (TRL's count starts at 1e-24). Step 2 with
    batch mean 0.375: mean = -0.125 + (0.375 + 0.125) / 2 = 0.125, count 2.
    """
    mix = combine("bco_pair")
    out = mix.compute(SUMMED, None, beta=0.1)
    assert out.reward_mean.mean == pytest.approx(-0.125) and out.reward_mean.count == pytest.approx(1.0)
    torch.testing.assert_close(out.losses, torch.tensor([1.292687, 1.655722]), atol=1e-6, rtol=0)
    state = out.reward_mean.update(0.375)
    assert state == RunningMean(pytest.approx(0.125), pytest.approx(2.0))


@pytest.mark.parametrize("name", sorted(n for n, s in LOSSES.items() if s.paired))
def test_every_paired_loss_is_finite_on_random_logps(name):
    torch.manual_seed(0)
    summed = PairLogps(*(-torch.rand(4) * 50 for _ in range(4)))
    averaged = PairLogps(*(-torch.rand(4) * 3 - 0.01 for _ in range(4)))
    mix = combine(name)
    out = mix.compute(summed, averaged, beta=mix.default_beta)
    assert out.losses.shape == (4,) and torch.isfinite(out.losses).all()


@pytest.mark.parametrize("loss,key,value", [("cdpo", "label_smoothing", -0.5), ("cdpo", "label_smoothing", 1.5),
                                            ("simpo", "label_smoothing", 2.0), ("robust", "label_smoothing", 0.5),
                                            ("kto", "desirable_weight", -0.5), ("kto", "undesirable_weight", -1.0)])
def test_parameters_out_of_range_are_config_errors(loss, key, value):
    # cdpo with -0.5 was unbounded below, 1.5 reversed the labels; robust failed only at the first step
    with pytest.raises(AlignlabError, match=rf"loss_params\.{loss}\.{key}: must be in"):
        combine(loss, params={loss: {key: value}})
    combine(loss, params={loss: {key: 0.25 if "smoothing" in key else 2.0}})
