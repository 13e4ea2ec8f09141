"""Online RL parts (rl/): rollout packing, log-probs vs the sampler, estimator wiring, micro-batch
weighting, prompt sets and their split, online-DPO pairing, config checks and the shipped configs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from alignlab.config import load_config
from alignlab.data import builtin as P
from alignlab.errors import AlignlabError
from alignlab.losses.advantages import get_estimator
from alignlab.losses.policy import FixedKLController, get_policy_loss
from alignlab.rl.config import OnlineDPOConfig, PPOConfig
from alignlab.rl.config import PolicyGradientConfig as OnlineConfig
from alignlab.rl.loop import RLState
from alignlab.rl.rollout import Rollout, pack_rollout, policy_logprobs
from alignlab.rl.update import advantages, policy_update, preference_pairs
from alignlab.train.world import World


def compute_advantages(cfg, ro, kl_coef):
    state = RLState(cfg, World(), None, None, None, None, [], kl_ctl=FixedKLController(kl_coef),
                    estimator=get_estimator(cfg.estimator))
    return advantages(state, ro)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@dataclass
class _S:  # the fields of rollout.generate.Sample that the packing reads
    prompt_ids: list
    completion_ids: list


def test_pack_rollout_layout():
    """Prompts [5, 6] and [7]; completions [8, 9, 2] and [3]. P = 2, T = 3:
    row 0 = [5, 6 | 8, 9, 2], row 1 = [0, 7 | 3, 0, 0] (pad 0); positions count real tokens only."""
    ro = pack_rollout([_S([5, 6], [8, 9, 2]), _S([7], [3])], pad_id=0, device="cpu")
    assert ro.prompt_len == 2 and ro.resp_len == 3
    assert ro.input_ids.tolist() == [[5, 6, 8, 9, 2], [0, 7, 3, 0, 0]]
    assert ro.attention_mask.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 0, 0]]
    assert ro.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 0, 1, 1, 1]]
    assert ro.response.tolist() == [[8, 9, 2], [3, -100, -100]]
    assert ro.mask.tolist() == [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]


@pytest.fixture(scope="module")
def tiny():
    from alignlab.models.load import load_model, load_tokenizer

    torch.manual_seed(0)
    return load_model("tiny-random").eval(), load_tokenizer("tiny-random")


def test_training_logprobs_equal_sampler_logprobs(tiny):
    """The packed training forward reproduces the sampler's per-token log-probs (same positions, same
    temperature), so `old_logprobs: sampler` gives ratio 1 before the first update."""
    from alignlab.rollout.generate import SamplingConfig, generate

    model, tok = tiny
    res = generate(model, tok, ["The film", "A long review of this movie"],
                   SamplingConfig(max_new_tokens=8, temperature=0.7, logprobs=True, seed=3), n=3)
    ro = pack_rollout(res.samples, tok.pad_token_id, "cpu")
    with torch.no_grad():
        lp, ent = policy_logprobs(model, ro, torch.arange(len(res.samples)), 0.7, want_entropy=True)
    for r, s in enumerate(res.samples):
        assert torch.allclose(lp[r, :len(s.logprobs)], torch.tensor(s.logprobs), atol=1e-4)
        assert torch.all(lp[r, len(s.logprobs):] == 0)
    assert torch.all(ent[ro.mask > 0] > 0)


def _rollout(rewards, mask, old=None, ref=None):
    n, t = mask.shape
    z = torch.zeros(n, t)
    return Rollout(torch.zeros(n, t + 1, dtype=torch.long), torch.ones(n, t + 1), torch.zeros(n, t + 1),
                   torch.zeros(n, t, dtype=torch.long), mask, 1, t, torch.tensor(rewards),
                   z if old is None else old, z if ref is None else ref, None)


def test_grpo_and_rloo_advantages_broadcast_over_tokens():
    """Group [1, 0] (K = 2): mean 0.5, Bessel std 0.7071 -> GRPO +-0.7071; RLOO: 1 - 0 = 1, 0 - 1 = -1.
    Each sequence's advantage sits on its response tokens only."""
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    cfg = OnlineConfig(estimator="grpo", num_generations=2)
    adv, ret = compute_advantages(cfg, _rollout([1.0, 0.0], mask), 0.05)
    assert ret is None
    assert torch.allclose(adv, torch.tensor([[0.70710, 0.70710], [-0.70710, 0.0]]), atol=1e-4)
    cfg.estimator = "rloo"
    adv, _ = compute_advantages(cfg, _rollout([1.0, 0.0], mask), 0.05)
    assert torch.allclose(adv, torch.tensor([[1.0, 1.0], [-1.0, 0.0]]))


def test_kl_shaped_into_grouped_reward():
    """kl_in_reward with k1: sequence 0 has log pi - log ref = 0.5 on each of its 2 tokens (KL 1.0),
    sequence 1 none. With beta 0.5 the rewards [1, 1] become [0.5, 1.0]; RLOO: [-0.5, 0.5]."""
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    old = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.5], [-1.0, -1.0]])
    cfg = OnlineConfig(estimator="rloo", num_generations=2, kl_in_reward=True, kl_estimator="k1")
    adv, _ = compute_advantages(cfg, _rollout([1.0, 1.0], mask, old, ref), 0.5)
    assert torch.allclose(adv, torch.tensor([[-0.5, -0.5], [0.5, 0.5]]))


def test_gae_wiring_gives_returns_for_the_critic():
    """One sequence, 2 tokens, reward 1, values [0.5, 0.25], gamma 1, lam 1, no KL: returns are [1, 1]
    (reward-to-go); advantages [0.5, 0.75] before whitening."""
    ro = _rollout([1.0], torch.ones(1, 2))
    ro.values = torch.tensor([[0.5, 0.25]])
    cfg = PPOConfig(lam=1.0, whiten_advantages=False, kl_coef=0.0)
    adv, ret = compute_advantages(cfg, ro, 0.0)
    assert torch.allclose(ret, torch.tensor([[1.0, 1.0]]))
    assert torch.allclose(adv, torch.tensor([[0.5, 0.75]]))


def test_policy_update_gradient_does_not_depend_on_grad_accum(tiny):
    """token-mean over a minibatch of 4 sequences: one micro-batch of 4 or two of 2 give the same SGD
    update (each micro-batch weighted by its share of the minibatch's tokens)."""
    from alignlab.rollout.generate import SamplingConfig, generate

    model, tok = tiny
    res = generate(model, tok, ["The film", "A long review"], SamplingConfig(max_new_tokens=6, seed=1), n=2)
    ro = pack_rollout(res.samples, tok.pad_token_id, "cpu")
    with torch.no_grad():
        ro.old_logprobs = policy_logprobs(model, ro, torch.arange(4), 1.0)[0] - 0.05
    ro.ref_logprobs = ro.old_logprobs - 0.1
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None] * ro.mask
    deltas = []
    for accum in (1, 2):
        m = __import__("copy").deepcopy(model)
        before = [p.detach().clone() for p in m.parameters()]
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        cfg = OnlineConfig(grad_accum=accum, max_grad_norm=0.0, kl_coef=0.1, entropy_coef=0.01)
        policy_update(RLState(cfg, World(), m, m, tok, None, [opt], objective=get_policy_loss("ppo_clip")), ro, adv,
                      torch.arange(4), 0.1)
        deltas.append(torch.cat([(p.detach() - b).flatten() for p, b in zip(m.parameters(), before)]))
    assert deltas[0].abs().max() > 0
    assert torch.allclose(deltas[0], deltas[1], atol=1e-6)


def test_prompt_sets_are_seeded_and_correct():
    assert P.sentiment_prompts(5, seed=1) == P.sentiment_prompts(5, seed=1)
    assert P.sentiment_prompts(5, seed=1) != P.sentiment_prompts(5, seed=2)
    assert len(set(P.sentiment_prompts(200))) == 200
    for p, a in P.digit_problems("reverse", 50, seed=0):
        assert p.endswith("=") and a == p[:-1][::-1]
    for p, a in P.digit_problems("add", 50, seed=0):
        x, y = p[:-1].split("+")
        assert int(a) == int(x) + int(y)
    rows = P.builtin_rows("builtin:reverse", 3)
    assert rows[0].chat is False and rows[0].answer == rows[0].prompt[0]["content"][:-1][::-1]
    with pytest.raises(AlignlabError, match="builtin:sentiment"):
        P.builtin_rows("builtin:nope", 3)


def test_exact_match_reward():
    """' 321' strips to '321' (1.0); '32' and '3210' are wrong (0.0); a missing answer is an error."""
    from alignlab.rollout.rewards import exact_match_reward

    out = exact_match_reward(["123="] * 3, [" 321", "32", "3210"], answer=["321"] * 3)
    assert out == [1.0, 0.0, 0.0]
    with pytest.raises(AlignlabError, match="answer"):
        exact_match_reward(["1="], ["1"])


def test_write_digit_sft_loads_as_plain_prompt_completion(tmp_path):
    from alignlab.data.sources import load_rows

    path = P.write_digit_sft(tmp_path / "rev.jsonl", "reverse", 10, seed=4)
    rows = load_rows(path, task="sft").rows
    assert len(rows) == 10 and rows[0].chat is False
    prompt, answer = P.digit_problems("reverse", 10, seed=4)[0]
    assert [m["content"] for m in rows[0].messages] == [prompt, answer]


def test_preference_pairs_best_vs_worst_ties_skipped():
    """Group 0 rewards [0.2, 0.9, 0.5] -> chosen sample 1, rejected sample 0; group 1 ties -> skipped."""
    s = [_S([1], [10 + i]) for i in range(6)]
    pairs = preference_pairs(s, [0.2, 0.9, 0.5, 0.3, 0.3, 0.3], 3)
    assert pairs == [{"prompt_ids": [1], "chosen_ids": [11], "rejected_ids": [10]}]


def test_config_checks():
    with pytest.raises(AlignlabError, match="num_generations"):
        load_config(OnlineConfig, None, ["estimator=grpo", "num_generations=1", "max_steps=2"])
    with pytest.raises(AlignlabError, match="mini_batch_size"):
        load_config(OnlineConfig, None, ["batch_size=4", "num_generations=4", "mini_batch_size=5", "max_steps=2"])
    with pytest.raises(AlignlabError, match="unknown key.*max_length|max_length"):
        load_config(OnlineConfig, None, ["max_length=10"])  # an offline key RL does not honour
    ppo = load_config(PPOConfig, None, ["max_steps=2"])
    assert ppo.estimator == "gae" and ppo.kl_in_reward and ppo.kl_estimator == "k1"


@pytest.mark.parametrize("name,cls", [
    ("grpo_gsm8k_smollm2.yaml", OnlineConfig),
    ("ppo_sentiment_tiny.yaml", PPOConfig),
    ("grpo_sentiment_tiny.yaml", OnlineConfig),
    ("ppo_sentiment_smollm2.yaml", PPOConfig),
    ("grpo_sentiment_smollm2.yaml", OnlineConfig),
    ("online_dpo_sentiment_tiny.yaml", OnlineDPOConfig),
])
def test_shipped_configs_load(name, cls):
    cfg = load_config(cls, CONFIGS / name)
    assert cfg.max_steps >= 1 and cfg.reward


def test_decoupled_and_length_adaptive_gae():
    """One answer of 2 tokens, reward 1, values [0.5, 0.25], gamma 1. deltas: d1 = 1 - 0.25 = 0.75,
    d0 = 0.25 - 0.5 = -0.25. lam 0 for the policy: A = [-0.25, 0.75]; the critic's lam_critic 1: returns
    [1, 1]. Length-adaptive lam_alpha 1: lam = 1 - 1/(1 * 2) = 0.5, A0 = -0.25 + 0.5 * 0.75 = 0.125."""
    ro = _rollout([1.0], torch.ones(1, 2))
    ro.values = torch.tensor([[0.5, 0.25]])
    cfg = PPOConfig(lam=0.0, lam_critic=1.0, whiten_advantages=False, kl_coef=0.0)
    adv, ret = compute_advantages(cfg, ro, 0.0)
    assert torch.allclose(adv, torch.tensor([[-0.25, 0.75]])) and torch.allclose(ret, torch.tensor([[1.0, 1.0]]))
    cfg = PPOConfig(lam_alpha=1.0, whiten_advantages=False, kl_coef=0.0)
    adv, _ = compute_advantages(cfg, ro, 0.0)
    assert torch.allclose(adv, torch.tensor([[0.125, 0.75]]))
    # lam_alpha 0.05 on a 2-token answer: 1 - 1/(0.05 * 2) = -9, clamped to 0: the TD residuals, not an
    # alternating, growing series
    adv, _ = compute_advantages(PPOConfig(lam_alpha=0.05, whiten_advantages=False, kl_coef=0.0), ro, 0.0)
    assert torch.allclose(adv, torch.tensor([[-0.25, 0.75]]))
    # lam_alpha is the policy's lambda alone: the critic's returns keep lam (lam_critic null), they took lam_alpha's
    _, ret_alpha = compute_advantages(PPOConfig(lam=0.9, lam_alpha=0.05, whiten_advantages=False, kl_coef=0.0), ro, 0.0)
    _, ret = compute_advantages(PPOConfig(lam=0.9, whiten_advantages=False, kl_coef=0.0), ro, 0.0)
    assert torch.allclose(ret_alpha, ret) and torch.allclose(ret, torch.tensor([[0.925, 1.0]]))  # -0.25 + 0.9 * 0.75


def test_rl_settings_that_could_not_work_are_refused_and_online_dpo_takes_the_losss_beta(tmp_path, monkeypatch):
    """adaptive_kl multiplies its coefficient: from 0 it never moves. Online DPO's beta, when not set, is the loss's
    own (simpo 2.0), as offline DPO's is."""
    import alignlab
    import alignlab.train.preference as preference

    with pytest.raises(AlignlabError, match="adaptive_kl"):
        PPOConfig(adaptive_kl=True, kl_coef=0.0).validate()
    # accepted, then met after the first sampling (DAPO needs 0 < buffer < L_max), or accepted with no effect
    from alignlab.rl.config import OverlongConfig

    for overlong, budget in ((OverlongConfig(buffer=0), 16), (OverlongConfig(buffer=4), 4),
                             (OverlongConfig(max_tokens=3, buffer=4), 16)):
        with pytest.raises(AlignlabError, match="0 < buffer < max_tokens"):
            OnlineConfig(overlong=overlong, max_new_tokens=budget).validate()
    with pytest.raises(AlignlabError, match="kimi: compares the answers to one prompt"):
        PPOConfig(length_penalty="kimi").validate()  # one answer a prompt: its min and max length are its own
    # keys the estimator never reads (value_model=... trained without the critic it named)
    for estimator, key, value in (("grpo", "lam_critic", 0.5), ("grpo", "lam_alpha", 0.5), ("grpo", "value_model", "x"),
                                  ("rloo", "value_clip", None), ("grpo", "lam", 0.1), ("dr_grpo", "whiten_advantages",
                                  False), ("grpo", "gamma", 0.5), ("rloo", "scale_rewards", "batch")):
        with pytest.raises(AlignlabError, match=f"{key}: not used by estimator {estimator}"):
            OnlineConfig(estimator=estimator, **{key: value}).validate()
    OnlineConfig(estimator="reinforce_pp", gamma=0.9).validate()
    PPOConfig(lam=0.9, lam_critic=1.0, value_model="x", gamma=0.99).validate()
    # the critic is named only where a critic's key is among them: gae does not read scale_rewards either
    with pytest.raises(AlignlabError, match=r"scale_rewards: not used by estimator rloo$"):
        OnlineConfig(estimator="rloo", scale_rewards="batch").validate()
    with pytest.raises(AlignlabError, match="lam: not used by estimator grpo, which has no critic"):
        OnlineConfig(lam=0.1).validate()
    # a switch's own settings with the switch off were accepted and never read
    for key, value, switch in (("kl_target", 1.0, "adaptive_kl"), ("kl_horizon", 10, "adaptive_kl"),
                               ("rollout_is_cap", 5.0, "rollout_is"), ("max_resample_rounds", 9, "dynamic_sampling"),
                               ("max_turns", 2, "an env"), ("env_options", {"timeout_s": 1}, "an env"),
                               ("kl_estimator", "k2", "kl_coef > 0"), ("reference", "model", "kl_coef > 0")):
        with pytest.raises(AlignlabError, match=f"{key}: only used with {switch}"):
            OnlineConfig(**{key: value}, **({"kl_coef": 0.0} if key in ("kl_estimator", "reference") else {})).validate()
    # a reference-free online-dpo loss: reference: model built a frozen copy nothing read (offline dpo refuses it)
    from alignlab.rl.config import OnlineDPOConfig

    with pytest.raises(AlignlabError, match=r"reference: no chosen loss \(simpo\) uses a reference"):
        OnlineDPOConfig(loss=["simpo"], reference="model").validate()
    OnlineDPOConfig(loss=["dpo"], reference="model").validate()
    # adaptive_kl settings the controller refuses were met after the models had loaded
    for bad in ({"kl_target": 0.0}, {"kl_horizon": -5}, {"kl_horizon": 0}):
        with pytest.raises(AlignlabError, match="adaptive_kl: needs kl_coef > 0 .* kl_target > 0 and kl_horizon >= 1"):
            OnlineConfig(adaptive_kl=True, **bad).validate()
    OnlineConfig(adaptive_kl=True, kl_target=1.0, rollout_is="tis", rollout_is_cap=5.0, dynamic_sampling=True,
                 max_resample_rounds=9, env="calculator", max_turns=2, reward="math").validate()
    from alignlab.rollout.remote import RemoteEngine

    with pytest.raises(AlignlabError, match="sampling_weights: bfloat16 is for in-process sampling"):
        OnlineConfig(sampling_weights="bfloat16", rollout_engine=RemoteEngine(url="http://127.0.0.1:1")).validate()
    betas = []
    real = preference.PreferenceStep

    def recording(mix, reference, *, beta, **kw):
        betas.append(beta)
        return real(mix, reference, beta=beta, **kw)

    monkeypatch.setattr(preference, "PreferenceStep", recording)
    common = dict(model="tiny-random", data="builtin:reverse", num_prompts=8, reward="exact_match", max_steps=1,
                  batch_size=2, max_new_tokens=4, eval_prompts=0, progress="none", cpu_threads=1, output_dir=None)
    alignlab.online_dpo(loss=["simpo"], **common)
    alignlab.online_dpo(loss=["simpo"], beta=0.5, **common)
    assert betas == [2.0, 0.5]


def test_scale_rewards_group_batch_none():
    """Groups [1, 0] and [3, 3] (K = 2). none: centred [0.5, -0.5, 0, 0]; group: / Bessel group std 0.7071
    -> +-0.7071 (the tied group stays 0); batch: / Bessel std of all four rewards (mean 1.75, squared
    deviations 0.5625 + 3.0625 + 1.5625 + 1.5625 = 6.75, / 3 = 2.25, std 1.5) -> +-0.3333."""
    mask = torch.ones(4, 1)
    out = {}
    for scale in ("none", "group", "batch"):
        cfg = OnlineConfig(estimator="grpo", num_generations=2, scale_rewards=scale)
        out[scale] = compute_advantages(cfg, _rollout([1.0, 0.0, 3.0, 3.0], mask), 0.0)[0][:, 0]
    assert torch.allclose(out["none"], torch.tensor([0.5, -0.5, 0.0, 0.0]))
    assert torch.allclose(out["group"], torch.tensor([0.70710, -0.70710, 0.0, 0.0]), atol=1e-4)
    assert torch.allclose(out["batch"], torch.tensor([0.33333, -0.33333, 0.0, 0.0]), atol=1e-4)


def _sgd_delta(tiny, ro, adv, **cfg_keys):
    import copy

    model, tok = tiny
    m = copy.deepcopy(model)
    before = [p.detach().clone() for p in m.parameters()]
    cfg = OnlineConfig(max_grad_norm=0.0, kl_coef=0.0, **cfg_keys)
    policy_update(RLState(cfg, World(), m, m, tok, None, [torch.optim.SGD(m.parameters(), lr=0.1)],
                          objective=get_policy_loss(cfg.policy_loss)), ro, adv, torch.arange(ro.mask.shape[0]), 0.0)
    return torch.cat([(p.detach() - b).flatten() for p, b in zip(m.parameters(), before)])


def test_loss_agg_defaults_to_the_objective_and_dr_grpo_divides_by_the_budget(tiny):
    """gspo with loss_agg unset trains as with its paper's seq-mean-token-mean (not token-mean). Dr. GRPO's
    seq-mean-token-sum-norm is seq-mean-token-sum over the constant generation budget (max_new_tokens 12 here,
    answers of at most 6 tokens): SGD's step is linear in the gradient, so the steps differ by exactly 1/12."""
    from alignlab.rollout.generate import SamplingConfig, generate

    model, tok = tiny
    res = generate(model, tok, ["The film", "A long review"], SamplingConfig(max_new_tokens=6, seed=3), n=2)
    ro = pack_rollout(res.samples, tok.pad_token_id, "cpu")
    ro.mask[1, 2:], ro.mask[3, 4:] = 0.0, 0.0  # answers of different lengths (2, 4, 6), which token-mean weighs apart
    assert ro.resp_len == 6
    with torch.no_grad():
        ro.old_logprobs = policy_logprobs(model, ro, torch.arange(4), 1.0)[0] - 0.05
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None] * ro.mask
    gspo = _sgd_delta(tiny, ro, adv, policy_loss="gspo")
    assert torch.allclose(gspo, _sgd_delta(tiny, ro, adv, policy_loss="gspo", loss_agg="seq-mean-token-mean"),
                          atol=1e-7)
    assert not torch.allclose(gspo, _sgd_delta(tiny, ro, adv, policy_loss="gspo", loss_agg="token-mean"), atol=1e-6)
    dr = _sgd_delta(tiny, ro, adv, loss_agg="seq-mean-token-sum-norm", max_new_tokens=12)
    per_seq_sum = _sgd_delta(tiny, ro, adv, loss_agg="seq-mean-token-sum", max_new_tokens=12)
    assert dr.abs().max() > 0 and torch.allclose(dr * 12, per_seq_sum, atol=1e-5)  # not x 6 (the longest answer)


def test_token_sum_norm_with_a_micro_batch_of_no_trained_token(tiny):
    # mask_truncated can zero every answer of a micro-batch: its norm 0 stopped the run, where token-mean carries on;
    # such a micro-batch weighs 0, so the step is the other micro-batch's, as token-mean's
    from alignlab.rollout.generate import SamplingConfig, generate

    model, tok = tiny
    res = generate(model, tok, ["The film", "A long review"], SamplingConfig(max_new_tokens=6, seed=3), n=2)
    ro = pack_rollout(res.samples, tok.pad_token_id, "cpu")
    ro.mask[2:] = 0.0
    with torch.no_grad():
        ro.old_logprobs = policy_logprobs(model, ro, torch.arange(4), 1.0)[0] - 0.05
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None] * ro.mask
    norm = _sgd_delta(tiny, ro, adv, loss_agg="token-sum-norm", grad_accum=2)
    assert norm.abs().max() > 0 and torch.allclose(norm, _sgd_delta(tiny, ro, adv, grad_accum=2), atol=1e-7)


def test_overlong_counts_an_env_episode_against_its_whole_budget():
    """env episodes: max_new_tokens bounds each turn, so L_max defaults to max_new_tokens x max_turns (8 x 4 = 32):
    an episode of 20 model tokens over several turns is not overlong (buffer 4: the ramp starts at 28)."""
    from alignlab.rl.config import OverlongConfig
    from alignlab.rl.rollout import shape_rollout

    ro = _rollout([1.0, 1.0], torch.tensor([[1.0] * 4 + [0.0] * 16, [1.0] * 20]))
    samples = [type("S", (), {"finish_reason": "eos"})() for _ in range(2)]
    cfg = OnlineConfig(num_generations=2, max_new_tokens=8, env="calculator", max_turns=4,
                       overlong=OverlongConfig(buffer=4))
    shape_rollout(cfg, ro, samples)
    assert torch.equal(ro.rewards, torch.tensor([1.0, 1.0]))
    assert cfg.response_budget() == 32 and OnlineConfig(max_new_tokens=8, max_turns=4).response_budget() == 8


def test_shaping_adds_overlong_and_kimi_and_masks_truncated():
    """Two answers of one group, lengths 4 (ended) and 8 (cut at max_new_tokens 8), rewards [1, 1].
    Kimi: the short one +0.5, the long one -0.5 -> [1.5, 0.5]. Overlong (max 8, buffer 4): length 4 is at
    the soft start (0), length 8 = -(8 - 4)/4 = -1 -> [1.5, -0.5]. mask_truncated zeroes the second row."""
    from alignlab.rl.config import OverlongConfig
    from alignlab.rl.rollout import shape_rollout

    mask = torch.tensor([[1.0] * 4 + [0.0] * 4, [1.0] * 8])
    ro = _rollout([1.0, 1.0], mask)
    samples = [type("S", (), {"finish_reason": r})() for r in ("eos", "length")]
    cfg = OnlineConfig(num_generations=2, max_new_tokens=8, length_penalty="kimi",
                       overlong=OverlongConfig(buffer=4), mask_truncated=True)
    metrics = shape_rollout(cfg, ro, samples)
    assert torch.allclose(ro.rewards, torch.tensor([1.5, -0.5]))
    assert ro.mask[1].sum() == 0 and ro.mask[0].sum() == 4
    assert metrics["trained_frac"] == 0.5 and metrics["reward_shaped_mean"] == pytest.approx(0.5)


def test_per_row_seed_samples_do_not_depend_on_sharding_or_batching(tiny):
    """Four prompts x 3 samples in one call equal two ranks' halves (first_prompt 0 and 2) and equal a call with
    a batch of 2 rows (rows joining as others finish): per_row_seed keys each draw by (seed, row, position)."""
    from alignlab.rollout.generate import SamplingConfig, generate

    model, tok = tiny
    prompts = ["The film", "A long review of", "I watched", "Nobody expected this"]
    base = dict(max_new_tokens=10, temperature=1.0, seed=7, per_row_seed=True, logprobs=True)
    whole = generate(model, tok, prompts, SamplingConfig(**base), n=3).samples
    halves = [s for r in (0, 2) for s in generate(model, tok, prompts[r:r + 2],
                                                   SamplingConfig(**base, first_prompt=r), n=3).samples]
    small = generate(model, tok, prompts, SamplingConfig(**base, batch_size=3), n=3).samples
    for other in (halves, small):
        assert [s.completion_ids for s in other] == [s.completion_ids for s in whole]
    assert len({tuple(s.completion_ids) for s in whole}) > 6  # the samples do differ from each other


def test_token_metrics_do_not_depend_on_grad_accum_under_a_per_sequence_loss(tiny):
    # clip_frac, approx_kl and entropy are token means; under seq-mean-token-mean the step weighed each micro-batch
    # by its sequences, so they moved with grad_accum and the number of ranks (0.33 against 0.57 on two ranks)
    import copy

    from alignlab.rollout.generate import SamplingConfig, generate

    model, tok = tiny
    res = generate(model, tok, ["The film", "A long review"], SamplingConfig(max_new_tokens=6, seed=3), n=2)
    ro = pack_rollout(res.samples, tok.pad_token_id, "cpu")
    ro.mask[0, 1:], ro.mask[1, 1:], ro.mask[2, 1:] = 0.0, 0.0, 0.0  # answers of 1, 1, 1 and 6 tokens
    with torch.no_grad():
        ro.old_logprobs = policy_logprobs(model, ro, torch.arange(4), 1.0)[0] + torch.linspace(-0.4, 0.4, 6)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None] * ro.mask

    def metrics(grad_accum):
        m = copy.deepcopy(model)
        cfg = OnlineConfig(max_grad_norm=0.0, kl_coef=0.0, loss_agg="seq-mean-token-mean", grad_accum=grad_accum)
        state = RLState(cfg, World(), m, m, tok, None, [torch.optim.SGD(m.parameters(), lr=0.0)],
                        objective=get_policy_loss(cfg.policy_loss))
        return policy_update(state, ro, adv, torch.arange(4), 0.0)

    one, two = metrics(1), metrics(2)
    assert 0 < one["clip_frac"] < 1
    for key in ("clip_frac", "approx_kl", "entropy", "loss"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key
