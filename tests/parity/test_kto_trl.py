"""Parity with TRL's KTOTrainer (1.16): same model, reference and labelled completions -> same loss, gradient, z0.

Runs where TRL is importable, skips otherwise. TRL is not an alignlab dependency; run it from a venv that has it:
    PYTHONPATH=src /tmp/alignlab-bench-trl/bin/python -m pytest tests/parity/test_kto_trl.py

1. The maths: TRL's own tokenised examples, with the KL completions TRL's dataset builds, go through
   `data.pairs.unpaired_as_pairs`, every forward path and `UnpairedStep` (loss "kto"). The loss, its gradient
   w.r.t. every policy parameter, and the metrics both log (kl, rewards/chosen, rewards/rejected,
   rewards/margins, logps/chosen, logps/rejected, and which of them a batch reports) agree with TRL's
   `compute_loss` and its `_metrics` to 1e-5 (relative or absolute; the gradient to 1e-5 of its largest entry).
   Cases: z0 clamped at 0 (the mismatched-pair estimate is negative), z0 > 0 with desirable/undesirable weights
   0.8/1.5, and an all-desirable batch (no rejected metrics on either side).
   TRL's configs default to bf16=True, which on CPU puts the *reference* model (prepared by accelerate in
   evaluation mode) under bf16 autocast while `compute_loss` runs the policy in float32: reference log-probs
   then move by ~1e-3 and rewards by ~3e-4 relative. The comparison sets bf16=False so both sides are float32.
   z0 is a difference of two float32 sums of size ~50, so it carries ~4e-6 of rounding; the 1e-5 absolute bound
   covers it.
2. The KL dataset: TRL rotates completions by one inside each batch of `per_device_train_batch_size`
   (example i borrows example i-1's, cyclically); with distinct prompts, `unpaired_as_pairs(group_size=batch)`
   borrows exactly those ids. Documented difference (pairs.py, commit b8e93fd): alignlab never borrows a
   completion written for the same prompt (a paired file read as unpaired puts chosen and rejected side by
   side), TRL's rotation does. Where TRL's donor has another prompt the ids agree; where it does not,
   alignlab's donor is the nearest earlier example with another prompt.
3. Tokenisation: plain-text unpaired rows tokenise to exactly TRL's ids (EOS appended). Chat rows differ in
   the one way test_dpo_trl.py documents: TRL keeps the "\\n" after "<|im_end|>" in the completion.
"""

import tempfile

import pytest
import torch

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from alignlab.data.pairs import PairCollator, unpaired_as_pairs  # noqa: E402
from alignlab.data.rows import UnpairedRow  # noqa: E402
from alignlab.data.sources import load_rows  # noqa: E402
from alignlab.data.tokenize import tokenize_unpaired  # noqa: E402
from alignlab.losses import combine  # noqa: E402
from alignlab.train.preference import ModelReference, UnpairedStep  # noqa: E402

DATA = [
    {"prompt": "The capital of France is", "completion": " Paris.", "label": True},
    {"prompt": "2 + 2 =", "completion": " five, I think", "label": False},
    {"prompt": "Say hi:", "completion": " hi", "label": True},
    {"prompt": "The sky is", "completion": " green, surely.", "label": False},
    {"prompt": "Water boils at", "completion": " 100 degrees Celsius.", "label": True},
]
METRICS = ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected")
# (policy seed, reference seed, desirable_weight, undesirable_weight, all desirable)
CASES = {
    "z0_clamped": (0, 1, 1.0, 1.0, False),
    "z0_positive_weighted": (1, 0, 0.8, 1.5, False),
    "all_desirable": (1, 0, 1.0, 1.0, True),
}


def tiny(vocab, seed):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    return LlamaForCausalLM(cfg)


def trl_trainer(tok, data, policy, ref, *, batch_size=None, beta=0.1, desirable_weight=1.0, undesirable_weight=1.0):
    args = trl.KTOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch_size or len(data),
                         max_length=4096, beta=beta, desirable_weight=desirable_weight,
                         undesirable_weight=undesirable_weight, bf16=False, report_to=[], use_cpu=True,
                         logging_steps=1)
    return trl.KTOTrainer(model=policy, ref_model=ref, args=args, train_dataset=datasets.Dataset.from_list(data),
                          processing_class=tok)


def grads(model):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])


@pytest.mark.parametrize("case", list(CASES))
def test_loss_gradient_kl_rewards_match_trl(tok, case):
    pol_seed, ref_seed, w_d, w_u, all_desirable = CASES[case]
    data = [{**d, "label": True} for d in DATA] if all_desirable else DATA
    policy, ref = tiny(len(tok), pol_seed), tiny(len(tok), ref_seed)
    trainer = trl_trainer(tok, data, policy, ref, desirable_weight=w_d, undesirable_weight=w_u)
    examples = [trainer.train_dataset[i] for i in range(len(data))]
    model = trainer.model
    model.zero_grad()
    trl_loss = trainer.compute_loss(model, trainer.data_collator(examples))
    trl_loss.backward()
    trl_grad = grads(model)
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items() if k in METRICS}
    assert logged.keys() == set(METRICS) - ({"rewards/rejected", "logps/rejected", "rewards/margins"}
                                            if all_desirable else set())
    if case == "z0_clamped":
        assert logged["kl"] == 0.0
    else:
        assert logged["kl"] > 1e-3

    # The KL completions: TRL's dataset column is what unpaired_as_pairs borrows (distinct prompts).
    pairs = unpaired_as_pairs([{k: ex[k] for k in ("prompt_ids", "completion_ids", "label")} for ex in examples],
                              len(examples))
    assert [p["rejected_ids"] for p in pairs] == [list(ex["KL_completion_ids"]) for ex in examples]

    mix = combine("kto", params={"kto": {"desirable_weight": w_d, "undesirable_weight": w_u}})
    step = UnpairedStep(mix, ModelReference(ref), beta=0.1)
    scale = float(trl_grad.abs().max())
    assert scale > 0
    for path in ("plain", "packed", "prefix"):
        model.zero_grad()
        loss, metrics = step(model, PairCollator(tok.pad_token_id, path)(pairs))
        loss.backward()
        assert float(loss.detach()) == pytest.approx(float(trl_loss.detach()), rel=1e-5, abs=1e-5), path
        torch.testing.assert_close(grads(model), trl_grad, rtol=1e-5, atol=1e-5 * scale, msg=path)
        mine = {k: float(v) for k, v in metrics.items() if k in METRICS}
        assert mine.keys() == logged.keys(), path
        for name, value in logged.items():
            assert mine[name] == pytest.approx(value, rel=1e-5, abs=1e-5), (path, name)


def test_kl_completions_are_trls_rotation_per_batch(tok):
    """Six examples, batches of three, distinct prompts: TRL rotates inside [0:3] and [3:6]; so does alignlab."""
    data = DATA + [{"prompt": "Grass is", "completion": " green.", "label": False}]
    trainer = trl_trainer(tok, data, tiny(len(tok), 0), tiny(len(tok), 1), batch_size=3)
    examples = [trainer.train_dataset[i] for i in range(len(data))]
    assert [list(ex["KL_completion_ids"]) for ex in examples] == [
        list(examples[j]["completion_ids"]) for j in (2, 0, 1, 5, 3, 4)]
    pairs = unpaired_as_pairs([{k: ex[k] for k in ("prompt_ids", "completion_ids", "label")} for ex in examples], 3)
    assert [p["rejected_ids"] for p in pairs] == [list(ex["KL_completion_ids"]) for ex in examples]
    assert [p["chosen_ids"] for p in pairs] == [list(ex["completion_ids"]) for ex in examples]
    assert [p["label"] for p in pairs] == [ex["label"] for ex in examples]


def test_kl_completions_skip_same_prompt_donors_where_trl_does_not(tok):
    """Documented difference: prompts side by side ([A+, A-, B+, B-], a paired file read as unpaired). TRL's
    rotation scores A- 's KL term on A+ 's completion under prompt A (and B- on B+); alignlab takes the nearest
    earlier example with another prompt, and agrees with TRL wherever TRL's donor already has another prompt."""
    data = [
        {"prompt": "The capital of France is", "completion": " Paris.", "label": True},
        {"prompt": "The capital of France is", "completion": " Lyon, obviously.", "label": False},
        {"prompt": "2 + 2 =", "completion": " 4", "label": True},
        {"prompt": "2 + 2 =", "completion": " five, I think", "label": False},
    ]
    trainer = trl_trainer(tok, data, tiny(len(tok), 0), tiny(len(tok), 1))
    examples = [trainer.train_dataset[i] for i in range(len(data))]
    prompts = [list(ex["prompt_ids"]) for ex in examples]
    comps = [list(ex["completion_ids"]) for ex in examples]
    theirs = [list(ex["KL_completion_ids"]) for ex in examples]
    assert theirs == [comps[j] for j in (3, 0, 1, 2)]
    same_prompt = [prompts[i] == prompts[(i - 1) % 4] for i in range(4)]
    assert same_prompt == [False, True, False, True]  # TRL mismatches nothing for examples 1 and 3
    mine = [p["rejected_ids"] for p in unpaired_as_pairs(
        [{k: ex[k] for k in ("prompt_ids", "completion_ids", "label")} for ex in examples], len(examples))]
    assert mine == [comps[j] for j in (3, 3, 1, 1)]
    for i in range(4):
        if not same_prompt[i]:
            assert mine[i] == theirs[i]
        else:
            assert mine[i] != theirs[i]
            assert comps.index(mine[i]) not in (i, i - 1)  # another prompt's completion


def test_plain_text_tokenisation_matches_trl(tok):
    trainer = trl_trainer(tok, DATA, tiny(len(tok), 0), tiny(len(tok), 1))
    for ex, theirs in zip(DATA, trainer.train_dataset):
        row = UnpairedRow(prompt=[{"role": "user", "content": ex["prompt"]}],
                          completion=[{"role": "assistant", "content": ex["completion"]}], label=ex["label"],
                          chat=False)
        mine = tokenize_unpaired(row, tok, None)
        assert mine.prompt_ids == list(theirs["prompt_ids"])
        assert mine.completion_ids == list(theirs["completion_ids"])
        assert mine.label == theirs["label"]
        assert mine.completion_ids[-1] == tok.eos_token_id


def test_chat_tokenisation_differs_from_trl_only_by_trailing_template_whitespace(tok, data_dir):
    rows = load_rows(data_dir / "llamafactory_demo" / "kto_en_demo.json", task="unpaired").rows[:3]
    data = [{"prompt": r.prompt, "completion": r.completion, "label": r.label} for r in rows]
    trainer = trl_trainer(tok, data, tiny(len(tok), 0), tiny(len(tok), 1), batch_size=3)
    for row, theirs in zip(rows, trainer.train_dataset):
        mine = tokenize_unpaired(row, tok, None)
        assert mine.prompt_ids == list(theirs["prompt_ids"])
        a, b = list(theirs["completion_ids"]), mine.completion_ids
        assert a[: len(b)] == b
        assert tok.decode(b).endswith("<|im_end|>")
        assert tok.decode(a[len(b):]).strip() == ""  # TRL's extra tail is whitespace ("\n") only
