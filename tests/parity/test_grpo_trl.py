"""Parity with TRL's GRPOTrainer (1.16): the same log-probs, masks and rewards -> the same loss, gradient,
advantages and logged metrics.

Runs where TRL is importable, skips otherwise (TRL is not an alignlab dependency):
    PYTHONPATH=src /tmp/alignlab-bench-trl/bin/python -m pytest tests/parity/test_grpo_trl.py

Both sides run their real code: TRL's `GRPOTrainer._compute_loss` and `_generate_and_score_completions`,
alignlab's `rl.update.policy_update` (policy objective + KL term + entropy bonus + aggregation through
`train.step.optimizer_step`), `rl.update.advantages` (the estimator registry) and the pure loss functions.
float32 throughout (TRL's configs default to bf16=True, which autocasts its CPU forward to bfloat16 and moves
the log-probs by ~1e-3: the trainers here get bf16=False); loss and metrics to 1e-5 relative / 1e-6 absolute,
gradients to 1e-5 / 1e-7, log-probs to 1e-5. beta = kl_coef = 0.05 (alignlab's default; TRL's is 0).

1. The loss step on hand-made tensors (policy, old and reference log-probs off-policy so the clip is active,
   ragged masks, per-sequence advantages); TRL's log-prob forward and alignlab's `policy_logprobs` are
   replaced by the same leaf tensor, so loss and d loss / d logprobs are compared exactly. Name mapping
   (TRL loss_type -> alignlab policy_loss + loss_agg):
       grpo                        -> ppo_clip, seq-mean-token-mean
       bnpo                        -> ppo_clip, token-mean
       dapo (TRL's default)        -> ppo_clip, token-mean (alignlab's default) or token-sum-norm
       dr_grpo                     -> ppo_clip, seq-mean-token-sum-norm (constant: max_completion_length
                                      = alignlab's response_budget(), max_new_tokens)
       grpo + importance_sampling_level="sequence" (GSPO) -> gspo, seq-mean-token-mean
       cispo (epsilon_high = E)    -> cispo, epsilon_low 1.0, epsilon_high E - 1
   beta -> kl_coef (k3, the same per-token estimator); metrics: clip_ratio/region_mean -> clip_frac,
   entropy -> entropy, kl -> token-mean of kl_penalty(.., "k3"); alignlab's approx_kl (k3 of KL(old || new)) has no
   TRL counterpart.
   sapo, vespo and luspo have no alignlab counterpart; alignlab's dual_clip has none in TRL.
2. End to end on a tiny random Llama: TRL samples and scores a batch, both compute log-probs,
   reference log-probs, advantages (scale_rewards group / batch / none), the loss and the parameter gradient.
   One prompt is a token shorter (left padding: TRL passes no position ids, alignlab counts real tokens; RoPE
   makes that the same numbers); answers are cut short in the masks as if EOS had come (the random model never
   samples it).

Documented differences, tested as relations instead of equalities:
- TRL's `use_bias_correction_kl` (default True) multiplies the per-token KL by the importance ratio; alignlab's KL
  term is GRPO's (Shao et al. 2024, Eq. 4) without it. Parity runs use False; `test_bias_corrected_kl_...` checks
  that on-policy the loss is the same and the gradient differs by exactly beta * k3 * (aggregation weight).
- Advantage epsilon: alignlab divides by std + 1e-6 (losses/advantages.py), TRL by std + 1e-4; with eps=1e-4
  `grpo_advantages` equals TRL, and the registry's numbers satisfy adv_al * (std + 1e-6) = adv_trl * (std + 1e-4).
- Entropy bonus: TRL always subtracts coef * token-mean entropy; alignlab subtracts coef * entropy aggregated
  like the loss (`entropy_bonus`: "aggregated like the loss"), so they agree for token-mean modes and differ by
  coef * (token-mean - seq-mean) entropy under grpo.
- gspo's clip_frac is a fraction of tokens (`PolicyLossOutput.clip_frac`); TRL's sequence-level
  clip_ratio is a fraction of sequences: equal when every sequence has the same length (checked so).
- cispo: TRL's cispo_clip_ratio counts capped tokens with positive advantage only; alignlab's clip_frac counts
  every capped token: equal when advantages are positive (checked so).
- kl_k3 (rollout metric) is alignlab's per-sequence sum averaged over sequences, TRL's kl the token mean:
  kl_k3 * N = kl * tokens on-policy.
"""

import tempfile
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from alignlab.losses.advantages import get_estimator, grpo_advantages  # noqa: E402
from alignlab.losses.policy import aggregate_loss, get_policy_loss, kl_penalty  # noqa: E402
from alignlab.rl import update  # noqa: E402
from alignlab.rl.config import PolicyGradientConfig  # noqa: E402
from alignlab.rl.rollout import Rollout, old_policy_metrics, policy_logprobs  # noqa: E402

N, K, T, BUDGET = 8, 4, 6, 8
TOL = {"rel": 1e-5, "abs": 1e-6}
PROMPTS = [{"prompt": "The capital of France is"}, {"prompt": "Two plus two equals"}]  # 5 and 4 tokens


class GradCapture(torch.optim.Optimizer):
    """An 'optimizer' whose step records the accumulated gradient (alignlab's optimizer_step zeroes it after)."""

    def __init__(self, params):
        super().__init__(list(params), {})
        self.grads = None

    def step(self, closure=None):
        self.grads = [p.grad.detach().clone() for g in self.param_groups for p in g["params"]]


@pytest.fixture(scope="module")
def model_dir(tok):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    path = tempfile.mkdtemp()
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def trl_trainer(tok, model_dir, reward=None, **kw):
    kw = {"beta": 0.05, "use_bias_correction_kl": False, **kw}
    args = trl.GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=N, num_generations=K,
                          max_completion_length=kw.pop("max_completion_length", BUDGET), use_cpu=True,
                          report_to=[], logging_steps=1, bf16=False, **kw)
    reward = reward or (lambda completion_ids, **_: [float(sum(c) % 5) for c in completion_ids])
    tr = trl.GRPOTrainer(model=model_dir, reward_funcs=[reward], args=args,
                         train_dataset=datasets.Dataset.from_list(PROMPTS), processing_class=tok)
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    return tr


def al_state(model, params, **cfg):
    cfg = PolicyGradientConfig(**{"max_new_tokens": BUDGET, "max_grad_norm": 0.0, "num_generations": K, **cfg})
    return SimpleNamespace(cfg=cfg, world=SimpleNamespace(size=1, rank=0, all_reduce_sum=lambda v: v),
                           objective=get_policy_loss(cfg.policy_loss), train_policy=model,
                           optimizers=[GradCapture(params)], sync=lambda m: (lambda last: nullcontext()),
                           compute=lambda cache=False: nullcontext(), estimator=get_estimator(cfg.estimator),
                           kl_ctl=SimpleNamespace(value=cfg.kl_coef))


def rollout(mask, ids=None, prompt=None, prompt_mask=None, **kw):
    """alignlab's Rollout of left-padded prompts and right-padded completions (rl/rollout.py pack_rollout's layout)."""
    n, t = mask.shape
    ids = torch.zeros((n, t), dtype=torch.long) if ids is None else ids
    prompt = torch.zeros((n, 1), dtype=torch.long) if prompt is None else prompt
    prompt_mask = torch.ones_like(prompt) if prompt_mask is None else prompt_mask
    attn = torch.cat([prompt_mask, mask.long()], 1)
    return Rollout(torch.cat([prompt, ids], 1), attn, (attn.cumsum(-1) - 1).clamp(min=0),
                   ids.masked_fill(mask == 0, -100), mask.float(), prompt.shape[1], t, **kw)


# ------------------------------------------------------------------ 1. the loss step on hand-made tensors


def tensors(seed=0, full=False, positive=False):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([T] * N) if full else torch.tensor([6, 2, 5, 1, 4, 6, 3, 5])
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    old = -torch.rand(N, T, generator=g) * 4 - 0.1
    lp = old + 0.3 * torch.randn(N, T, generator=g)  # ratios ~ exp(+-0.3): many outside [0.8, 1.2]
    ref = old + 0.5 * torch.randn(N, T, generator=g)
    adv = torch.randn(N, generator=g)
    adv = adv.abs() if positive else adv
    ent = torch.rand(N, T, generator=g) * 3
    return {"lp": lp * mask, "old": old * mask, "ref": ref * mask, "adv": adv, "mask": mask, "ent": ent * mask}


def trl_step(tr, x, on_policy=False):
    """TRL's own _compute_loss with its log-prob forward returning x['lp'] (a leaf): (loss, d/dlp, logged)."""
    lp = x["lp"].clone().requires_grad_()
    tr._get_per_token_logps_and_entropies = lambda *a, **k: (lp, x["ent"], None)
    tr._metrics["train"].clear()
    inputs = {"prompt_ids": torch.zeros((N, 1), dtype=torch.long), "prompt_mask": torch.ones((N, 1), dtype=torch.long),
              "completion_ids": torch.zeros((N, T), dtype=torch.long), "completion_mask": x["mask"].long(),
              "advantages": x["adv"], "ref_per_token_logps": x["ref"],
              "old_per_token_logps": None if on_policy else x["old"], "num_items_in_batch": x["mask"].sum()}
    loss = tr._compute_loss(tr.model, inputs)
    loss.backward()
    return float(loss.detach()), lp.grad, {k: v[-1] for k, v in tr._metrics["train"].items()}


def al_step(x, monkeypatch, on_policy=False, **cfg):
    """alignlab's policy_update on the same tensors: (loss, d/dlp, metrics)."""
    lp = x["lp"].clone().requires_grad_()
    monkeypatch.setattr(update, "policy_logprobs", lambda model, ro, idx, *a, **k: (lp[idx], x["ent"][idx]))
    state = al_state(torch.nn.Module(), [lp], **cfg)
    ro = rollout(x["mask"], old_logprobs=x["lp"] if on_policy else x["old"], ref_logprobs=x["ref"])
    metrics = update.policy_update(state, ro, x["adv"][:, None] * x["mask"], torch.arange(N), state.cfg.kl_coef)
    return metrics["loss"], state.optimizers[0].grads[0], metrics


CASES = {  # id: (TRL GRPOConfig kwargs, alignlab PolicyGradientConfig kwargs)
    "grpo": ({"loss_type": "grpo"}, {"loss_agg": "seq-mean-token-mean"}),
    "bnpo": ({"loss_type": "bnpo"}, {"loss_agg": "token-mean"}),
    "dapo-default": ({}, {}),
    "dapo-token-sum-norm": ({"loss_type": "dapo"}, {"loss_agg": "token-sum-norm"}),
    "dapo-clip-higher": ({"loss_type": "dapo", "epsilon": 0.2, "epsilon_high": 0.28},
                         {"epsilon_low": 0.2, "epsilon_high": 0.28}),
    "dr_grpo": ({"loss_type": "dr_grpo"}, {"loss_agg": "seq-mean-token-sum-norm"}),
    "gspo": ({"loss_type": "grpo", "importance_sampling_level": "sequence", "epsilon": 0.1, "epsilon_high": 0.15},
             {"policy_loss": "gspo", "epsilon_low": 0.1, "epsilon_high": 0.15}),
    "gspo-paper-eps": ({"loss_type": "grpo", "importance_sampling_level": "sequence", "epsilon": 3e-4,
                        "epsilon_high": 4e-4}, {"policy_loss": "gspo"}),
    "cispo": ({"loss_type": "cispo", "epsilon_high": 1.15}, {"policy_loss": "cispo", "epsilon_high": 0.15}),
    "grpo-no-kl": ({"loss_type": "grpo", "beta": 0.0}, {"loss_agg": "seq-mean-token-mean"}),  # kl_coef = beta = 0
}


@pytest.mark.parametrize("case", list(CASES))
def test_loss_gradient_and_metrics_match_trl(tok, model_dir, monkeypatch, case):
    trl_kw, al_kw = CASES[case]
    tr = trl_trainer(tok, model_dir, **trl_kw)
    x = tensors()
    t_loss, t_grad, logged = trl_step(tr, x)
    a_loss, a_grad, metrics = al_step(x, monkeypatch, kl_coef=tr.beta, **al_kw)
    assert a_loss == pytest.approx(t_loss, **TOL)
    assert abs(t_loss) > 1e-3 and t_grad.abs().max() > 1e-3  # something to compare
    torch.testing.assert_close(a_grad, t_grad, rtol=1e-5, atol=1e-7)
    assert metrics["entropy"] == pytest.approx(logged["entropy"], **TOL)
    if tr.beta:
        kl = aggregate_loss(kl_penalty(x["lp"], x["ref"], "k3"), x["mask"], "token-mean")
        assert float(kl) == pytest.approx(logged["kl"], **TOL)
    if case.startswith(("gspo", "cispo")):  # their clip metrics differ by definition: see the next tests
        return
    assert metrics["clip_frac"] == pytest.approx(logged["clip_ratio/region_mean"], **TOL)
    assert 0.05 < metrics["clip_frac"] < 0.95  # the clip is active on some tokens, not all


@pytest.mark.parametrize("case,seed,shape,logged_key", [
    ("gspo", 3, {"full": True}, "clip_ratio/region_mean"),  # equal lengths: a token fraction is a sequence one
    ("cispo", 4, {"positive": True}, "cispo_clip_ratio"),  # TRL counts capped tokens with positive advantage only
])
def test_clip_fractions_match_trl_where_their_definitions_meet(tok, model_dir, monkeypatch, case, seed, shape,
                                                              logged_key):
    trl_kw, al_kw = CASES[case]
    tr = trl_trainer(tok, model_dir, **trl_kw)
    x = tensors(seed=seed, **shape)
    t_loss, t_grad, logged = trl_step(tr, x)
    a_loss, a_grad, metrics = al_step(x, monkeypatch, kl_coef=tr.beta, **al_kw)
    assert a_loss == pytest.approx(t_loss, **TOL)
    torch.testing.assert_close(a_grad, t_grad, rtol=1e-5, atol=1e-7)
    assert metrics["clip_frac"] == pytest.approx(logged[logged_key], **TOL)
    assert 0.05 < metrics["clip_frac"] < 0.95


@pytest.mark.parametrize("case", ["grpo", "bnpo"])
def test_entropy_bonus_token_mean_in_trl_aggregated_like_the_loss_in_alignlab(tok, model_dir, monkeypatch, case):
    trl_kw, al_kw = CASES[case]
    coef = 0.01
    tr = trl_trainer(tok, model_dir, entropy_coef=coef, **trl_kw)
    x = tensors(seed=5)
    t_loss, t_grad, logged = trl_step(tr, x)
    a_loss, a_grad, metrics = al_step(x, monkeypatch, kl_coef=tr.beta, entropy_coef=coef, **al_kw)
    mode = al_kw["loss_agg"]
    al_bonus = float(aggregate_loss(x["ent"], x["mask"], mode))
    trl_bonus = float(aggregate_loss(x["ent"], x["mask"], "token-mean"))
    assert a_loss + coef * al_bonus == pytest.approx(logged["policy_loss"], **TOL)  # before the bonus: equal
    assert a_loss == pytest.approx(t_loss - coef * (al_bonus - trl_bonus), **TOL)
    if mode == "seq-mean-token-mean":
        assert abs(al_bonus - trl_bonus) > 1e-2  # ragged lengths: the two entropy means differ
    torch.testing.assert_close(a_grad, t_grad, rtol=1e-5, atol=1e-7)  # entropies carry no graph here


def test_bias_corrected_kl_changes_only_the_gradient_on_policy(tok, model_dir, monkeypatch):
    """TRL's default use_bias_correction_kl=True: per-token KL x ratio. On-policy the ratio is 1 with gradient
    ratio * d lp, so TRL's gradient is alignlab's plus beta * k3_t * w_t (w_t: the aggregation's weight of t)."""
    trl_kw, al_kw = CASES["grpo"]
    tr = trl_trainer(tok, model_dir, use_bias_correction_kl=True, **trl_kw)
    x = tensors(seed=6)
    t_loss, t_grad, logged = trl_step(tr, x, on_policy=True)
    a_loss, a_grad, _ = al_step(x, monkeypatch, on_policy=True, kl_coef=tr.beta, **al_kw)
    assert a_loss == pytest.approx(t_loss, **TOL)
    w = torch.zeros(N, T, requires_grad=True)
    aggregate_loss(w, x["mask"], "seq-mean-token-mean").backward()
    k3 = kl_penalty(x["lp"], x["ref"], "k3")
    torch.testing.assert_close(t_grad, a_grad + tr.beta * k3 * w.grad, rtol=1e-5, atol=1e-7)
    assert (t_grad - a_grad).abs().max() > 1e-4


# ------------------------------------------------------------------ 2. end to end on a tiny model


E2E = {  # id: (TRL kwargs, alignlab kwargs)
    "grpo-group": ({"loss_type": "grpo", "scale_rewards": "group"},
                   {"loss_agg": "seq-mean-token-mean", "scale_rewards": "group"}),
    "dapo-batch": ({"loss_type": "dapo", "scale_rewards": "batch"}, {"scale_rewards": "batch"}),
    "dr_grpo-none": ({"loss_type": "dr_grpo", "scale_rewards": "none"},
                     {"loss_agg": "seq-mean-token-sum-norm", "scale_rewards": "none"}),
    "gspo-group": ({"loss_type": "grpo", "importance_sampling_level": "sequence", "epsilon": 3e-4,
                    "epsilon_high": 4e-4}, {"policy_loss": "gspo"}),
}


@pytest.mark.parametrize("case", list(E2E))
def test_generated_batch_end_to_end_matches_trl(tok, model_dir, case):
    trl_kw, al_kw = E2E[case]
    seen = []

    def reward(completion_ids, **_):
        seen.append([float(sum(c) % 5) for c in completion_ids])
        return seen[-1]

    torch.manual_seed(1)
    tr = trl_trainer(tok, model_dir, reward=reward, max_completion_length=T, **trl_kw)
    with torch.no_grad():  # a reference that differs from the policy, so the KL term is not zero
        for p in tr.ref_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = tr._generate_and_score_completions([PROMPTS[0]] * K + [PROMPTS[1]] * K)
    assert out.get("old_per_token_logps") is None  # on-policy: TRL uses its forward's own log-probs, detached
    assert not out["prompt_mask"].all()  # left padding: TRL passes no position ids, alignlab counts real tokens
    # ragged answers, as if EOS had come early (the random model never samples it)
    lengths = torch.tensor([6, 2, 5, 1, 4, 6, 3, 5])
    out["completion_mask"] = (torch.arange(T)[None] < lengths[:, None]).long() * out["completion_mask"]
    mask = out["completion_mask"].float()
    out["num_items_in_batch"] = mask.sum()
    rewards = torch.tensor(seen[-1])

    loss = tr._compute_loss(tr.model, out)
    loss.backward()
    t_grads = [p.grad.detach().clone() for p in tr.model.parameters()]
    tr.model.zero_grad(set_to_none=True)
    logged = {k: v[-1] for k, v in tr._metrics["train"].items()}

    ro = rollout(out["completion_mask"], out["completion_ids"], out["prompt_ids"], out["prompt_mask"], rewards=rewards)
    idx = torch.arange(N)
    with torch.no_grad():
        ro.old_logprobs = policy_logprobs(tr.model, ro, idx, 1.0)[0]
        ro.ref_logprobs = policy_logprobs(tr.ref_model, ro, idx, 1.0)[0]
        t_lp = tr._get_per_token_logps_and_entropies(tr.model, torch.cat([out["prompt_ids"], out["completion_ids"]], 1),
                                                     torch.cat([out["prompt_mask"], out["completion_mask"]], 1), T)[0]
    torch.testing.assert_close(ro.old_logprobs, t_lp * mask, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ro.ref_logprobs, out["ref_per_token_logps"] * mask, rtol=1e-5, atol=1e-5)

    state = al_state(tr.model, tr.model.parameters(), kl_coef=tr.beta, max_new_tokens=T, **al_kw)

    # advantages: the registry (eps 1e-6) against TRL's (eps 1e-4), and grpo_advantages at TRL's eps exactly
    adv, _ = update.advantages(state, ro)
    torch.testing.assert_close(adv, adv[:, :1] * mask)  # one advantage per answer, on its tokens
    adv_al, adv_trl = adv[:, 0], out["advantages"]
    assert adv_trl.abs().max() > 0.1
    scale = state.cfg.scale_rewards
    if scale == "none":
        torch.testing.assert_close(adv_al, adv_trl, rtol=1e-5, atol=1e-6)
    else:
        std = (rewards.view(-1, K).std(-1).repeat_interleave(K) if scale == "group"
               else rewards.std().expand(N))
        torch.testing.assert_close(adv_al * (std + 1e-6), adv_trl * (std + 1e-4), rtol=1e-5, atol=1e-6)
    if scale == "group":
        torch.testing.assert_close(grpo_advantages(rewards, K, eps=1e-4), adv_trl, rtol=1e-5, atol=1e-6)
    assert logged["reward"] == pytest.approx(float(rewards.mean()), **TOL)

    # the loss step on TRL's advantages: loss, parameter gradient, metrics (on-policy every ratio is 1, so gspo
    # equals token-level ppo_clip here; part 1 tells them apart)
    metrics = update.policy_update(state, ro, adv_trl[:, None] * mask, idx, tr.beta)
    assert metrics["loss"] == pytest.approx(float(loss.detach()), **TOL)
    for a, t in zip(state.optimizers[0].grads, t_grads):
        torch.testing.assert_close(a, t, rtol=1e-5, atol=1e-7)
    assert max(float(g.abs().max()) for g in t_grads) > 1e-4
    assert metrics["entropy"] == pytest.approx(logged["entropy"], **TOL)
    assert metrics["clip_frac"] == pytest.approx(logged["clip_ratio/region_mean"], **TOL)  # 0: on-policy
    kl = old_policy_metrics(state.cfg, ro)["kl_k3"]
    assert kl * N == pytest.approx(logged["kl"] * float(mask.sum()), rel=1e-5)
    assert logged["kl"] > 1e-4
