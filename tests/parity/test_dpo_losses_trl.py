"""Parity of every DPO-family loss alignlab registers with the TRL 1.16 trainer that implements it.

Runs where TRL is importable, skips otherwise. TRL is not an alignlab dependency; run it from a venv that has it:
    PYTHONPATH=src /tmp/alignlab-bench-trl/bin/python -m pytest tests/parity/test_dpo_losses_trl.py

TRL's own tokenised pairs go through alignlab's PairCollator on every forward path (plain, packed, prefix) and
`PreferenceStep(combine(<loss>), ModelReference(ref) or NoReference(), beta=...)`; TRL's `compute_loss` runs on the
same model, reference and examples (bf16=False: TRL's default bf16 autocasts the reference on a CPU). The loss and
its gradient w.r.t. every policy parameter agree to 1e-5 (relative or absolute; the gradient to 1e-5 of its largest
entry), and so do the metrics both log: logps/chosen, logps/rejected, rewards/chosen, rewards/rejected,
rewards/margins, rewards/accuracies. The tiny random Llamas use initializer_range 0.2 (not 0.02) so that the
policy-to-reference log-ratios are O(1) nats: at the default init every log-prob is ~-log(vocab) on both models,
rewards are ~1e-3 and every loss sits at its value at h = 0, where most conventions cannot be told apart.

1. DPOTrainer `loss_type` (list) <-> alignlab `loss` (list), one to one: sigmoid = dpo, robust, ipo, hinge,
   sigmoid_norm, apo_zero, apo_down, sft (NoReference), and the mixtures RPO [dpo, sft] (weights 1, 0.2) and
   [dpo, sft] with weights 0.5, 1. Loss, gradient and logps metrics match everywhere, and so do rewards/*:
   TRL 1.16 logs rewards = beta * (summed) log-ratio for every loss type and never weights them, as alignlab's
   preference step does (ipo and sigmoid_norm logged the per-token averaged log-ratio their losses take, and a
   mixture weighted the rewards by loss_weights, until this test found both).
   sft alone: documented difference (preference.sft): alignlab's rewards are zero (no reference, an NLL has no
   implicit reward), TRL logs the DPO rewards of its reference; tested as such.
2. cdpo: documented difference. TRL 1.16's "sigmoid" ignores label_smoothing (cDPO was TRL's sigmoid with label
   smoothing before 1.0, says preference.cdpo) and no loss_type is cDPO. Tested relation, on TRL's numbers:
   cdpo(eps) = (1 - eps) * TRL sigmoid(pairs) + eps * TRL sigmoid(pairs with chosen and rejected swapped), loss
   and gradient (TRL run with label_smoothing=eps, which it ignores).
3. bco_pair: documented difference (preference.bco_pair): TRL 1.16 dropped BCO's reward shift delta; alignlab
   keeps the running mean of batch-mean rewards and updates it with the batch before the loss. Tested: a fresh
   step's loss is bco_pair(reward_mean = this batch's mean reward, from TRL's logged rewards) and differs from
   TRL's; a step whose running mean is 0 after the update gives TRL's loss and gradient.
4. simpo <-> experimental CPOTrainer(loss_type="simpo", cpo_alpha=0, simpo_gamma), label smoothing 0 and 0.1:
   loss, gradient and rewards (beta * averaged log-prob) match. CPOTrainer logs logps/* as per-token AVERAGED
   log-probs under simpo; alignlab's logps/* are summed for every loss (DPOTrainer's meaning): tested as
   alignlab's per-pair sums / completion lengths = TRL's (an undocumented naming difference).
5. orpo <-> experimental ORPOTrainer: documented difference in the NLL term. TRL's NLL (logged nll_loss) is the
   token mean over the chosen PROMPT and completion (TRL PR #2527 keeps it so, as the ORPO code base does);
   alignlab's step passes the completion-only token mean (preference.orpo: "pass it as nll to match TRL").
   Tested: the pure loss fed alignlab's averaged log-probs and TRL's NLL tensor equals TRL's loss and gradient;
   the step's loss is TRL's loss - TRL's nll_loss + the completion-only NLL; rewards match, logps as for CPO.

CPOTrainer and ORPOTrainer tokenise themselves (BOS prepended to plain prompts); their `chosen_input_ids`/
`chosen_labels` are split back into prompt and completion ids for alignlab.
"""

import tempfile

import pytest
import torch

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from alignlab.data.pairs import PairCollator  # noqa: E402
from alignlab.losses import combine  # noqa: E402
from alignlab.losses import preference as P  # noqa: E402
from alignlab.losses.registry import RunningMean  # noqa: E402
from alignlab.train.preference import ModelReference, NoReference, PreferenceStep  # noqa: E402

PLAIN = [
    {"prompt": "The capital of France is", "chosen": " Paris.", "rejected": " Lyon, obviously."},
    {"prompt": "2 + 2 =", "chosen": " 4", "rejected": " five, I think"},
    {"prompt": "Say hi:", "chosen": " hi", "rejected": " no"},
    {"prompt": "Water boils at", "chosen": " 100 degrees Celsius at sea level.", "rejected": " 50"},
]
PATHS = ("plain", "packed", "prefix")
LOGPS = ("logps/chosen", "logps/rejected")
REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
# case -> (alignlab losses, loss_params, loss_weights, TRL loss_type, TRL extra config, beta)
DPO_CASES = {
    "dpo": (["dpo"], None, None, ["sigmoid"], {}, 0.1),
    "robust": (["robust"], {"robust": {"label_smoothing": 0.2}}, None, ["robust"], {"label_smoothing": 0.2}, 0.1),
    "ipo": (["ipo"], None, None, ["ipo"], {}, 0.5),
    "hinge": (["hinge"], None, None, ["hinge"], {}, 0.3),
    "sigmoid_norm": (["sigmoid_norm"], None, None, ["sigmoid_norm"], {}, 2.0),
    "apo_zero": (["apo_zero"], None, None, ["apo_zero"], {}, 0.1),
    "apo_down": (["apo_down"], None, None, ["apo_down"], {}, 0.1),
    "sft": (["sft"], None, None, ["sft"], {}, 0.1),
    "rpo": (["dpo", "sft"], None, [1.0, 0.2], ["sigmoid", "sft"], {}, 0.1),
    "dpo_sft_weighted": (["dpo", "sft"], None, [0.5, 1.0], ["sigmoid", "sft"], {}, 0.1),
}


def tiny(vocab, seed):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      initializer_range=0.2)
    return LlamaForCausalLM(cfg)


def grads(model):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])


def trl_trainer(tok, data, policy, ref, beta=0.1, **config):
    # bf16=False: TRL 1.16 defaults to bf16, under which accelerate runs the reference under bf16 autocast on a
    # CPU too (reference log-probs move by ~1e-3); both sides here compute in float32
    args = trl.DPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=len(data), max_length=4096,
                         beta=beta, report_to=[], use_cpu=True, logging_steps=1, bf16=False, **config)
    return trl.DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=datasets.Dataset.from_list(data),
                          processing_class=tok)


def trl_step(trainer, examples, store="_metrics"):
    """TRL's loss (float), gradient and logged metrics for one batch (the experimental trainers log to
    `_stored_metrics`)."""
    model = trainer.model
    model.zero_grad()
    loss = trainer.compute_loss(model, trainer.data_collator(examples))
    loss.backward()
    logged = {k: v[-1] for k, v in getattr(trainer, store)["train"].items()}
    return float(loss.detach()), grads(model), logged


def alignlab_step(step, model, pairs, path, pad_id):
    model.zero_grad()
    loss, metrics = step(model, PairCollator(pad_id, path)(pairs))
    loss.backward()
    return float(loss.detach()), grads(model), {k: float(v) for k, v in metrics.items()}


def as_pairs(examples):
    return [{k: list(ex[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for ex in examples]


def close(a, b, what):
    assert a == pytest.approx(b, rel=1e-5, abs=1e-5), what


def grad_close(mine, theirs, what):
    scale = float(theirs.abs().max())
    assert scale > 0
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5 * scale, msg=what)


_RESULTS = {}


def dpo_case(tok, case):
    """(TRL loss, grad, logged metrics, {path: (loss, grad, metrics)}) for a DPO_CASES entry, computed once."""
    if case not in _RESULTS:
        names, params, weights, loss_type, config, beta = DPO_CASES[case]
        policy, ref = tiny(len(tok), 0), tiny(len(tok), 1)
        trainer = trl_trainer(tok, PLAIN, policy, ref, beta=beta, loss_type=loss_type, loss_weights=weights,
                              **config)
        examples = [trainer.train_dataset[i] for i in range(len(PLAIN))]
        theirs = trl_step(trainer, examples)
        mix = combine(names, weights, params)
        step = PreferenceStep(mix, ModelReference(ref) if mix.needs_reference else NoReference(), beta=beta)
        mine = {path: alignlab_step(step, trainer.model, as_pairs(examples), path, tok.pad_token_id)
                for path in PATHS}
        _RESULTS[case] = (*theirs, mine)
    return _RESULTS[case]


@pytest.mark.parametrize("case", list(DPO_CASES))
def test_dpo_trainer_loss_gradient_logps(tok, case):
    trl_loss, trl_grad, logged, mine = dpo_case(tok, case)
    for path, (loss, grad, metrics) in mine.items():
        close(loss, trl_loss, (case, path, "loss"))
        grad_close(grad, trl_grad, (case, path, "grad"))
        for name in LOGPS:
            close(metrics[name], logged[name], (case, path, name))


@pytest.mark.parametrize("case", [
    c for c in DPO_CASES if c != "sft"])
def test_dpo_reward_metrics(tok, case):
    _, _, logged, mine = dpo_case(tok, case)
    assert abs(logged["rewards/margins"]) > 1e-2  # log-ratios are O(1): the conventions differ visibly
    for path, (_, _, metrics) in mine.items():
        for name in REWARDS:
            close(metrics[name], logged[name], (case, path, name))


def test_sft_rewards_are_zero_where_trl_logs_dpo_rewards(tok):
    """Documented (preference.sft): an NLL has no implicit reward; alignlab runs no reference for it and logs 0."""
    _, _, logged, mine = dpo_case(tok, "sft")
    _, _, dpo_logged, _ = dpo_case(tok, "dpo")
    for name in REWARDS:
        assert logged[name] == pytest.approx(dpo_logged[name], rel=1e-6, abs=1e-7), name  # TRL: DPO's rewards
    assert abs(logged["rewards/margins"]) > 1e-2
    for path, (_, _, metrics) in mine.items():
        assert all(metrics[name] == 0.0 for name in REWARDS), path


def test_cdpo_is_trl_sigmoid_mixed_with_swapped_pairs(tok):
    eps, beta = 0.2, 0.1
    policy, ref = tiny(len(tok), 0), tiny(len(tok), 1)
    trainer = trl_trainer(tok, PLAIN, policy, ref, beta=beta, loss_type=["sigmoid"], label_smoothing=eps)
    examples = [trainer.train_dataset[i] for i in range(len(PLAIN))]
    loss1, grad1, logged = trl_step(trainer, examples)
    swapped = [{**ex, "chosen_ids": ex["rejected_ids"], "rejected_ids": ex["chosen_ids"]} for ex in examples]
    loss2, grad2, _ = trl_step(trainer, swapped)
    assert abs(loss1 - loss2) > 1e-2
    step = PreferenceStep(combine("cdpo", params={"cdpo": {"label_smoothing": eps}}), ModelReference(ref), beta=beta)
    for path in PATHS:
        loss, grad, metrics = alignlab_step(step, trainer.model, as_pairs(examples), path, tok.pad_token_id)
        close(loss, (1 - eps) * loss1 + eps * loss2, (path, "loss"))
        grad_close(grad, (1 - eps) * grad1 + eps * grad2, (path, "grad"))
        for name in LOGPS + REWARDS:
            close(metrics[name], logged[name], (path, name))


def test_bco_pair_is_trl_with_alignlab_reward_shift(tok):
    beta = 0.1
    policy, ref = tiny(len(tok), 0), tiny(len(tok), 1)
    trainer = trl_trainer(tok, PLAIN, policy, ref, beta=beta, loss_type=["bco_pair"])
    examples = [trainer.train_dataset[i] for i in range(len(PLAIN))]
    trl_loss, trl_grad, logged = trl_step(trainer, examples)
    batch_mean = (logged["rewards/chosen"] + logged["rewards/rejected"]) / 2  # mean over the 2B rewards
    mix = combine("bco_pair")
    for path in PATHS:
        batch = PairCollator(tok.pad_token_id, path)(as_pairs(examples))
        fresh = PreferenceStep(mix, ModelReference(ref), beta=beta)
        with torch.no_grad():
            summed, _, _, _, _ = fresh.logps(trainer.model, batch)
            shifted = P.bco_pair(summed.policy_chosen, summed.policy_rejected, summed.ref_chosen, summed.ref_rejected,
                                 beta=beta, reward_mean=batch_mean)[0].mean()
        loss, _, metrics = alignlab_step(fresh, trainer.model, as_pairs(examples), path, tok.pad_token_id)
        close(loss, float(shifted), (path, "shifted loss"))
        assert abs(loss - trl_loss) > 1e-4, path  # the shift matters on these pairs
        assert fresh.reward_mean.mean == pytest.approx(batch_mean, rel=1e-5, abs=1e-6), path
        for name in LOGPS + REWARDS:
            close(metrics[name], logged[name], (path, name))
        # a running mean that is 0 after this batch's update (m + (b - m) / 2 = 0): TRL 1.16's numbers
        zero = PreferenceStep(mix, ModelReference(ref), beta=beta)
        zero.reward_mean = RunningMean(-batch_mean, 1.0)
        loss, grad, _ = alignlab_step(zero, trainer.model, as_pairs(examples), path, tok.pad_token_id)
        close(loss, trl_loss, (path, "loss"))
        grad_close(grad, trl_grad, (path, "grad"))


def split_pairs(examples):
    """CPO/ORPO tokenised rows -> alignlab pairs: the prompt is the -100 prefix of the labels."""
    pairs = []
    for ex in examples:
        row = {}
        for side in ("chosen", "rejected"):
            ids, labels = list(ex[f"{side}_input_ids"]), list(ex[f"{side}_labels"])
            n = labels.index(next(x for x in labels if x != -100))
            assert all(x == -100 for x in labels[:n]) and labels[n:] == ids[n:]
            prompt, row[f"{side}_ids"] = ids[:n], ids[n:]
            assert row.setdefault("prompt_ids", prompt) == prompt  # one prompt for both answers
        pairs.append(row)
    return pairs


def experimental_trainer(kind, tok, policy, **config):
    from trl.experimental import cpo, orpo

    Config, Trainer = (cpo.CPOConfig, cpo.CPOTrainer) if kind == "cpo" else (orpo.ORPOConfig, orpo.ORPOTrainer)
    args = Config(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=len(PLAIN), max_length=4096,
                  report_to=[], use_cpu=True, logging_steps=1, bf16=False, **config)
    return Trainer(model=policy, args=args, train_dataset=datasets.Dataset.from_list(PLAIN), processing_class=tok)


def averaged_logps_metric(step, model, batch):
    """Mean over pairs of the per-token averaged chosen / rejected log-probs (CPO's and ORPO's logps/*)."""
    with torch.no_grad():
        _, averaged, _, _, _ = step.logps(model, batch)
    return {"logps/chosen": float(averaged.policy_chosen.mean()), "logps/rejected": float(averaged.policy_rejected.mean())}


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_matches_cpo_trainer(tok, label_smoothing):
    beta, gamma = 2.0, 0.5
    trainer = experimental_trainer("cpo", tok, tiny(len(tok), 0), beta=beta, loss_type="simpo", cpo_alpha=0.0,
                                   simpo_gamma=gamma, label_smoothing=label_smoothing)
    examples = [trainer.train_dataset[i] for i in range(len(PLAIN))]
    trl_loss, trl_grad, logged = trl_step(trainer, examples, "_stored_metrics")
    assert logged["nll_loss"] == 0.0
    pairs = split_pairs(examples)
    step = PreferenceStep(combine("simpo", params={"simpo": {"gamma": gamma, "label_smoothing": label_smoothing}}),
                          NoReference(), beta=beta)
    for path in PATHS:
        loss, grad, metrics = alignlab_step(step, trainer.model, pairs, path, tok.pad_token_id)
        close(loss, trl_loss, (path, "loss"))
        grad_close(grad, trl_grad, (path, "grad"))
        for name in REWARDS:
            close(metrics[name], logged[name], (path, name))
        averaged = averaged_logps_metric(step, trainer.model, PairCollator(tok.pad_token_id, path)(pairs))
        for name in LOGPS:  # CPO logs averaged log-probs, alignlab summed ones
            close(averaged[name], logged[name], (path, name))
            assert abs(metrics[name] - logged[name]) > 1.0, (path, name)


def test_orpo_matches_orpo_trainer_up_to_the_prompt_tokens_of_the_nll(tok):
    beta = 0.5
    trainer = experimental_trainer("orpo", tok, tiny(len(tok), 0), beta=beta)
    examples = [trainer.train_dataset[i] for i in range(len(PLAIN))]
    trl_loss, trl_grad, logged = trl_step(trainer, examples, "_stored_metrics")
    pairs = split_pairs(examples)
    step = PreferenceStep(combine("orpo"), NoReference(), beta=beta)
    for path in PATHS:
        batch = PairCollator(tok.pad_token_id, path)(pairs)
        # the pure loss with TRL's NLL (prompt + completion tokens): TRL's loss and gradient
        trainer.model.zero_grad()
        trl_nll = trainer.concatenated_forward(trainer.model, trainer.data_collator(examples))[4]
        _, averaged, completion_nll, _, _ = step.logps(trainer.model, batch)
        pure = P.orpo(averaged.policy_chosen, averaged.policy_rejected, beta=beta, nll=trl_nll)[0].mean()
        pure.backward()
        close(float(pure.detach()), trl_loss, (path, "loss with TRL's nll"))
        close(float(trl_nll.detach()), logged["nll_loss"], (path, "nll_loss"))
        grad_close(grads(trainer.model), trl_grad, (path, "grad with TRL's nll"))
        # the step: completion-only NLL in place of TRL's
        completion_nll = float(completion_nll.detach())
        assert abs(completion_nll - logged["nll_loss"]) > 1e-2, path
        loss, _, metrics = alignlab_step(step, trainer.model, pairs, path, tok.pad_token_id)
        close(loss, trl_loss - logged["nll_loss"] + completion_nll, (path, "loss"))
        for name in REWARDS:
            close(metrics[name], logged[name], (path, name))
        averaged = averaged_logps_metric(step, trainer.model, batch)
        for name in LOGPS:
            close(averaged[name], logged[name], (path, name))
