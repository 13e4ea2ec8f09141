"""Parity with TRL's DPOTrainer (1.16): same model, reference and pairs -> same loss, log-probs, rewards.

Runs where TRL is importable, skips otherwise. TRL is not an alignlab dependency; bench/dpo_vs_trl.py
builds a venv that has it, and this file runs there too:
    PYTHONPATH=src /tmp/alignlab-trl-venv/bin/python -m pytest tests/parity/test_dpo_trl.py

1. The maths: TRL's own tokenised pairs go through every alignlab forward path and the DPO step;
   loss, logps/chosen, logps/rejected, rewards/chosen, rewards/rejected agree with TRL's
   `compute_loss` and its logged metrics to 1e-5 (TRL run in float32: its default bf16 autocasts the reference).
2. Tokenisation: plain-text pairs tokenise to exactly TRL's ids (joint prompt+completion, EOS
   appended). Chat pairs differ in one documented way: TRL keeps the whitespace the chat template
   writes after the end-of-turn token ("<|im_end|>\\n" for SmolLM2) in the completion, alignlab
   ends the completion at "<|im_end|>" (data/tokenize.py `_trim_tail`); everything else matches.
"""

import tempfile

import pytest
import torch

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from alignlab.data.pairs import PairCollator  # noqa: E402
from alignlab.data.rows import PreferenceRow  # noqa: E402
from alignlab.data.sources import load_rows  # noqa: E402
from alignlab.data.tokenize import tokenize_pair  # noqa: E402
from alignlab.losses import combine  # noqa: E402
from alignlab.train.preference import ModelReference, PreferenceStep  # noqa: E402

PLAIN = [
    {"prompt": "The capital of France is", "chosen": " Paris.", "rejected": " Lyon, obviously."},
    {"prompt": "2 + 2 =", "chosen": " 4", "rejected": " five, I think"},
    {"prompt": "Say hi:", "chosen": " hi", "rejected": " no"},
]
CHAT = [
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
     "chosen": [{"role": "assistant", "content": "Paris."}],
     "rejected": [{"role": "assistant", "content": "It is Lyon, I believe."}]},
    {"prompt": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                {"role": "user", "content": "and 3+3?"}],
     "chosen": [{"role": "assistant", "content": "6"}], "rejected": [{"role": "assistant", "content": "Seven."}]},
]


def tiny(vocab, seed):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    return LlamaForCausalLM(cfg)


def trl_trainer(tok, data, policy, ref, beta=0.1):
    # bf16=False: TRL 1.16 defaults to bf16, under which accelerate runs the reference under bf16 autocast on a
    # CPU too (reference log-probs move by ~1e-3); both sides here compute in float32
    args = trl.DPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=len(data), max_length=4096,
                         beta=beta, report_to=[], use_cpu=True, logging_steps=1, bf16=False)
    return trl.DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=datasets.Dataset.from_list(data),
                          processing_class=tok)


def conversational(data_dir, n=3):
    rows = load_rows(data_dir / "llamafactory_demo" / "dpo_en_demo.json", task="preference").rows[:n]
    return rows, [{"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected} for r in rows]


@pytest.mark.parametrize("kind", ["plain", "chat"])
def test_loss_logps_rewards_match_trl(tok, kind):
    """Short completions on purpose: TRL's fused head computes in float32 whatever the model dtype,
    and a float32 sum of ~300 token log-probs of ~-11 (the demo file's answers) carries ~1e-3 of
    rounding on either side, more than the 1e-5 pinned here; on those, float64 alignlab equals the
    exact float64 computation to 1e-12 while TRL is off by ~3e-4 in the loss."""
    data = PLAIN if kind == "plain" else CHAT
    policy, ref = tiny(len(tok), 0), tiny(len(tok), 1)
    trainer = trl_trainer(tok, data, policy, ref)
    examples = [trainer.train_dataset[i] for i in range(len(data))]
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, trainer.data_collator(examples)))
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    pairs = [{k: list(ex[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for ex in examples]
    step = PreferenceStep(combine("dpo"), ModelReference(ref), beta=0.1)
    for path in ("plain", "packed", "prefix"):
        with torch.no_grad():
            loss, metrics = step(trainer.model, PairCollator(tok.pad_token_id, path)(pairs))
        assert float(loss) == pytest.approx(trl_loss, abs=1e-5), path
        for name in ("logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected", "rewards/margins",
                     "rewards/accuracies"):
            assert float(metrics[name]) == pytest.approx(logged[name], abs=1e-5, rel=1e-6), (path, name)


def test_plain_text_tokenisation_matches_trl(tok):
    trainer = trl_trainer(tok, PLAIN, tiny(len(tok), 0), tiny(len(tok), 1))
    for i, ex in enumerate(PLAIN):
        row = PreferenceRow(prompt=[{"role": "user", "content": ex["prompt"]}],
                            chosen=[{"role": "assistant", "content": ex["chosen"]}],
                            rejected=[{"role": "assistant", "content": ex["rejected"]}], chat=False)
        mine = tokenize_pair(row, tok, None)
        theirs = trainer.train_dataset[i]
        assert mine.prompt_ids == list(theirs["prompt_ids"])
        assert mine.chosen_ids == list(theirs["chosen_ids"])
        assert mine.rejected_ids == list(theirs["rejected_ids"])
        assert mine.chosen_ids[-1] == tok.eos_token_id


def test_chat_tokenisation_differs_from_trl_only_by_trailing_template_whitespace(tok, data_dir):
    rows, data = conversational(data_dir)
    trainer = trl_trainer(tok, data, tiny(len(tok), 0), tiny(len(tok), 1))
    for row, theirs in zip(rows, trainer.train_dataset):
        mine = tokenize_pair(row, tok, None)
        assert mine.prompt_ids == list(theirs["prompt_ids"])
        for name in ("chosen_ids", "rejected_ids"):
            a, b = list(theirs[name]), getattr(mine, name)
            assert a[: len(b)] == b
            assert tok.decode(b).endswith("<|im_end|>")
            assert tok.decode(a[len(b):]).strip() == ""  # TRL's extra tail is whitespace ("\n") only
