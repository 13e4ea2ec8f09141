"""Parity with TRL's RewardTrainer and SFTTrainer (1.16): same model, same token ids -> same loss, scores, metrics
and gradients.

Runs where TRL is importable, skips otherwise (TRL is not an alignlab dependency):
    PYTHONPATH=src /tmp/alignlab-bench-trl/bin/python -m pytest tests/parity/test_rm_sft_trl.py

Tiny random Llamas in float32, the SmolLM2 tokenizer. Everything numeric is pinned to 1e-5 (absolute and relative).

Reward model: TRL's `RewardTrainer.compute_loss` against alignlab's `train.reward.RewardStep` over
`data.ranked.RewardCollator` batches (`losses.reward.bradley_terry`).
1. The maths, on identical ids: alignlab's tokenised pairs (`data.ranked.tokenize_example`) go to TRL as pre-tokenised
   `chosen_ids` / `rejected_ids` (with `margin`). The loss (with margin and TRL's `center_rewards_coefficient` =
   alignlab's `center_coef`, and with neither), every sequence's score, TRL's logged accuracy, margin and
   min/mean/max_reward, and the gradients of every parameter agree, through both RewardCollator layouts (padded
   rows, as TRL; the prefix-shared row under span attention). The pad token here is <|endoftext|>, which no
   sequence contains; see 2 for why.
2. Pooling, a documented difference (models/heads.py): transformers' *ForSequenceClassification, whose pooled logit
   TRL takes, scores the last token that is not the pad id; alignlab scores the attention mask's last 1. SmolLM2 pads
   with its EOS <|im_end|>, so under TRL's defaults a plain-text sequence (EOS appended) is scored at the token
   before its EOS, and alignlab at the EOS. Pinned as that relation: TRL's loss and metrics on its own tokenisation
   and default pad equal alignlab's on the same ids with trailing pad-id tokens dropped.
3. Tokenisation: plain-text pairs tokenise to exactly TRL's ids; chat pairs differ by the whitespace the template
   writes after the end-of-turn token ("<|im_end|>\\n"), which TRL keeps and alignlab drops (data/tokenize.py
   `_trim_tail`), as in test_dpo_trl.py.

SFT: TRL's `SFTTrainer` (its collator and `compute_loss`: fused LM head, NLL summed over the batch's trained tokens /
their count) against alignlab's `data.tokenize.tokenize_sft`, `data.collate.Collator` and the LM steps
(`train.steps.causal_lm_step`, `chunked_causal_lm_step`, as `recipes/sft.py` picks them).
4. Assistant-only labels: SmolLM2's chat template has no {% generation %} markers and TRL ships no training template
   for it, so `assistant_only_loss` needs one. With markers around each assistant message's content + "<|im_end|>"
   (the rendering is unchanged, asserted), TRL's input_ids and labels equal alignlab's exactly (multi-turn: every
   assistant turn trained; system, user and turn headers not). With the markers where TRL's own ChatML training
   template puts them (chat_templates/qwen2_5_training.jinja: "\\n" + content + "<|im_end|>\\n"), TRL also trains
   the "\\n" after "<|im_start|>assistant" and the "\\n" after "<|im_end|>", two newline tokens per assistant turn
   that alignlab leaves out on purpose (data/tokenize.py: the header's "\\n" is the generation prompt, the
   whitespace after end-of-turn is never generated). Conversational prompt/completion rows (`completion_only_loss`):
   TRL's completion mask also covers that final "\\n"; plain-text prompt/completion rows: identical.
5. The loss on identical ids and labels: alignlab's examples through TRL's collator and `compute_loss`, and through
   alignlab's padded and packed batches and both LM steps: loss, mean_token_accuracy and every parameter's gradient.
   The model is first fitted a few steps to the batch so the token accuracy is neither 0 nor 1. TRL's fused head
   and alignlab's chunked step (`ops.logprobs.chunked_token_logprobs`, the sft recipe's default) agree to 1e-5 in
   loss and every gradient. The full-logits `causal_lm_step` is held to 5e-5 absolute: it takes torch's float32
   `cross_entropy` over the whole 49,152-entry vocabulary, and torch 2.13's CPU float32 log-softmax is off by up to
   ~5e-5 per token there (its logsumexp alone by ~5e-7), measured against float64 on the same hidden states; on the
   fitted model its loss is 1.7e-5 from the float64 value, while TRL's and the chunked step's are within 1e-6 of it.
"""

import copy
import json
import tempfile

import pytest
import torch

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification  # noqa: E402

from alignlab.data.collate import Collator  # noqa: E402
from alignlab.data.ranked import RankedRow, RewardCollator, RewardExample, tokenize_example  # noqa: E402
from alignlab.data.sources import load_rows  # noqa: E402
from alignlab.data.tokenize import IGNORE, tokenize_sft  # noqa: E402
from alignlab.models.attention import enable_span_attention  # noqa: E402
from alignlab.train.reward import RewardStep, sequence_scores  # noqa: E402
from alignlab.train.steps import causal_lm_step, chunked_causal_lm_step  # noqa: E402

TOL = {"abs": 1e-5, "rel": 1e-5}
# causal_lm_step's F.cross_entropy over float32 logits: see the module docstring, point 5
FULL_LOGITS_TOL = {"abs": 5e-5, "rel": 1e-5}

PAIRS_PLAIN = [
    {"prompt": "The capital of France is", "chosen": " Paris.", "rejected": " Lyon, obviously.", "margin": 0.5},
    {"prompt": "2 + 2 =", "chosen": " 4", "rejected": " five, I think", "margin": 0.0},
    {"prompt": "Say hi:", "chosen": " hi", "rejected": " no", "margin": 1.5},
]
PAIRS_CHAT = [
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
     "chosen": [{"role": "assistant", "content": "Paris."}],
     "rejected": [{"role": "assistant", "content": "It is Lyon, I believe."}], "margin": 0.25},
    {"prompt": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                {"role": "user", "content": "and 3+3?"}],
     "chosen": [{"role": "assistant", "content": "6"}], "rejected": [{"role": "assistant", "content": "Seven."}],
     "margin": 1.0},
    {"prompt": [{"role": "user", "content": "Name a colour."}],
     "chosen": [{"role": "assistant", "content": "Blue."}], "rejected": [{"role": "assistant", "content": "Dog."}],
     "margin": 0.0},
]
MESSAGES = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
                  {"role": "assistant", "content": "Paris."}]},
    {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                  {"role": "user", "content": "and 3+3?"}, {"role": "assistant", "content": "Six, I think."}]},
    {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there!"}]},
]
PROMPT_COMPLETION_CHAT = [
    {"prompt": [{"role": "user", "content": "Capital of France?"}],
     "completion": [{"role": "assistant", "content": "Paris, of course."}]},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
     "completion": [{"role": "assistant", "content": "4"}]},
]
PROMPT_COMPLETION_PLAIN = [
    {"prompt": "The capital of France is", "completion": " Paris."},
    {"prompt": "2 + 2 =", "completion": " 4"},
]

# SmolLM2's template writes every turn with this expression; the training variants below only add markers to it.
TURN = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
MARKED_LIKE_ALIGNLAB = ("{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
                        "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}" + TURN
                        + "{% endif %}")
MARKED_LIKE_TRL = ("{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant' }}{% generation %}"
                   "{{ '\n' + message['content'] + '<|im_end|>\n' }}{% endgeneration %}{% else %}" + TURN
                   + "{% endif %}")


def config(vocab, **kw):
    return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, **kw)


def tiny_scorer(vocab, pad_id, seed=0):
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(config(vocab, num_labels=1, pad_token_id=pad_id))


def tiny_lm(vocab, seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(config(vocab))


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(mine, theirs, tol=TOL):
    assert mine.keys() == theirs.keys() and mine
    for name, g in theirs.items():
        torch.testing.assert_close(mine[name], g, atol=tol["abs"], rtol=tol["rel"], msg=name)


# ---------------------------------------------------------------------------------------------------- reward model


def ranked_rows(data, chat):
    if chat:
        return [RankedRow(d["prompt"], [d["chosen"], d["rejected"]], chat=True, margin=d["margin"]) for d in data]
    return [RankedRow([{"role": "user", "content": d["prompt"]}],
                      [[{"role": "assistant", "content": d["chosen"]}], [{"role": "assistant", "content": d["rejected"]}]],
                      chat=False, margin=d["margin"]) for d in data]


def reward_trainer(tok, model, records, center=None):
    args = trl.RewardConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=len(records), max_length=4096,
                            report_to=[], use_cpu=True, bf16=False, center_rewards_coefficient=center)
    return trl.RewardTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(records),
                             processing_class=tok)


def trl_reward_outputs(trainer, n):
    """TRL's loss (with its gradients in trainer.model), chosen and rejected scores, and its logged metrics."""
    examples = [trainer.train_dataset[i] for i in range(n)]
    trainer.model.zero_grad()
    loss, out = trainer.compute_loss(trainer.model, trainer.data_collator(examples), return_outputs=True)
    loss.backward()
    chosen, rejected = out.logits.detach().squeeze(-1).chunk(2)
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return float(loss.detach()), chosen, rejected, logged


def alignlab_reward_outputs(model, examples, pad_id, path, use_margin, center):
    model = copy.deepcopy(model)
    model.zero_grad()
    if path == "prefix":
        assert enable_span_attention(model)
    batch = RewardCollator(pad_id, spans=path == "prefix")(examples)
    loss, metrics = RewardStep("bradley_terry", use_margin=use_margin, center_coef=center)(model, batch)
    loss.backward()
    with torch.no_grad():
        scores = sequence_scores(model, batch)[batch["index"]]  # [B, 2]: chosen, rejected
    return float(loss.detach()), scores, metrics, grads(model)


def check_reward_parity(trl_out, mine):
    trl_loss, chosen, rejected, logged = trl_out
    loss, scores, metrics, _ = mine
    assert loss == pytest.approx(trl_loss, **TOL)
    torch.testing.assert_close(scores[:, 0], chosen, atol=TOL["abs"], rtol=TOL["rel"])
    torch.testing.assert_close(scores[:, 1], rejected, atol=TOL["abs"], rtol=TOL["rel"])
    assert float(metrics["accuracy"]) == pytest.approx(logged["accuracy"], **TOL)
    assert float(metrics["margin"]) == pytest.approx(logged["margin"], **TOL)
    assert float(metrics["chosen_score"] + metrics["rejected_score"]) / 2 == pytest.approx(logged["mean_reward"], **TOL)
    assert float(scores.min()) == pytest.approx(logged["min_reward"], **TOL)
    assert float(scores.max()) == pytest.approx(logged["max_reward"], **TOL)


@pytest.mark.parametrize("margin_and_center", [True, False], ids=["margin+center", "plain-bt"])
@pytest.mark.parametrize("kind", ["plain", "chat"])
def test_reward_loss_scores_metrics_grads_match_trl(tok, kind, margin_and_center):
    tok = copy.deepcopy(tok)
    data = PAIRS_PLAIN if kind == "plain" else PAIRS_CHAT
    examples = [tokenize_example(r, tok, 4096, None) for r in ranked_rows(data, kind == "chat")]
    pad = "<|endoftext|>"  # in no sequence, so transformers' pad-id pooling finds each sequence's last token
    pad_id = tok.convert_tokens_to_ids(pad)
    assert all(pad_id not in s for ex in examples for s in ex.sequences)
    records = [{"chosen_ids": ex.sequences[0], "rejected_ids": ex.sequences[1],
                **({"margin": ex.margin} if margin_and_center else {})} for ex in examples]
    assert any(d["margin"] for d in data)  # the margin changes the loss
    center = 0.01 if margin_and_center else None
    tok.pad_token = pad
    trainer = reward_trainer(tok, tiny_scorer(len(tok), pad_id, seed=1), records, center=center)
    assert trainer.model.training and trainer.processing_class.pad_token_id == pad_id
    trl_out = trl_reward_outputs(trainer, len(records))
    theirs = grads(trainer.model)
    assert 0.0 < trl_out[3]["accuracy"] < 1.0  # seed 1: some pairs ranked right, some wrong
    for path in ("plain", "prefix"):
        mine = alignlab_reward_outputs(trainer.model, examples, pad_id, path, margin_and_center, center or 0.0)
        check_reward_parity(trl_out, mine)
        assert_same_grads(mine[3], theirs)


@pytest.mark.parametrize("kind", ["plain", "chat"])
def test_reward_pooling_differs_from_trl_only_at_trailing_pad_id_tokens(tok, kind):
    """TRL's defaults with SmolLM2 (pad = EOS = <|im_end|>) and TRL's own tokenisation: transformers pools at the last
    non-pad token, so TRL's scores are alignlab's (mask pooling) on the ids without their trailing pad-id tokens."""
    tok = copy.deepcopy(tok)
    data = PAIRS_PLAIN if kind == "plain" else PAIRS_CHAT
    trainer = reward_trainer(tok, tiny_scorer(len(tok), tok.pad_token_id), data, center=0.01)
    pad_id = trainer.processing_class.pad_token_id
    assert pad_id == tok.eos_token_id
    trl_out = trl_reward_outputs(trainer, len(data))
    theirs = [trainer.train_dataset[i] for i in range(len(data))]

    def strip(ids):
        ids = list(ids)
        while ids[-1] == pad_id:
            ids.pop()
        return ids

    stripped = [RewardExample([strip(ex["chosen_ids"]), strip(ex["rejected_ids"])], ex["margin"]) for ex in theirs]
    if kind == "plain":  # every plain sequence ends in EOS == pad: TRL scores the token before it
        assert all(len(s) == len(ex["chosen_ids"]) - 1 for s, ex in zip((e.sequences[0] for e in stripped), theirs))
    else:  # TRL's chat sequences end in "<|im_end|>\n": nothing is dropped, TRL scores the "\n"
        assert all(e.sequences[0] == list(ex["chosen_ids"]) for e, ex in zip(stripped, theirs))
    mine = alignlab_reward_outputs(trainer.model, stripped, pad_id, "plain", True, 0.01)
    check_reward_parity(trl_out, mine)
    # ... and on the unstripped ids alignlab scores a different (its own last) token: the relation is not vacuous
    full = [RewardExample([list(ex["chosen_ids"]), list(ex["rejected_ids"])], ex["margin"]) for ex in theirs]
    if kind == "plain":
        other = alignlab_reward_outputs(trainer.model, full, pad_id, "plain", True, 0.01)
        assert not torch.allclose(other[1][:, 0], trl_out[1], atol=1e-4)


@pytest.mark.parametrize("kind", ["plain", "chat"])
def test_reward_tokenisation_matches_trl_up_to_chat_trailing_whitespace(tok, kind):
    tok = copy.deepcopy(tok)
    data = PAIRS_PLAIN if kind == "plain" else PAIRS_CHAT
    trainer = reward_trainer(tok, tiny_scorer(len(tok), tok.pad_token_id), data)
    for row, theirs in zip(ranked_rows(data, kind == "chat"), trainer.train_dataset):
        mine = tokenize_example(row, tok, 4096, None).sequences
        for b, name in zip(mine, ("chosen_ids", "rejected_ids")):
            a = list(theirs[name])
            if kind == "plain":
                assert b == a and b[-1] == tok.eos_token_id
            else:
                assert a[: len(b)] == b and len(a) > len(b)
                assert tok.decode(b).endswith("<|im_end|>")
                assert tok.decode(a[len(b):]).strip() == ""  # TRL's extra tail is whitespace ("\n") only


# ------------------------------------------------------------------------------------------------------------- SFT


def with_markers(tok, turn):
    marked = copy.deepcopy(tok)
    assert TURN in tok.chat_template
    marked.chat_template = tok.chat_template.replace(TURN, turn)
    for rec in MESSAGES:  # only the markers differ: the same text
        assert (marked.apply_chat_template(rec["messages"], tokenize=False)
                == tok.apply_chat_template(rec["messages"], tokenize=False))
    return marked


def sft_trainer(tok, model, records, **kw):
    args = trl.SFTConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=len(records), max_length=4096,
                         report_to=[], use_cpu=True, bf16=False, **kw)
    return trl.SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(records),
                          processing_class=tok)


def sft_rows(records, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return load_rows(path, task="sft").rows


def test_sft_assistant_only_ids_and_labels_match_trl(tok, tmp_path):
    trainer = sft_trainer(with_markers(tok, MARKED_LIKE_ALIGNLAB), tiny_lm(len(tok)), MESSAGES,
                          assistant_only_loss=True)
    rows = sft_rows(MESSAGES, tmp_path)
    for row, theirs in zip(rows, trainer.train_dataset):
        mine = tokenize_sft(row, tok, None)
        assert mine.input_ids == list(theirs["input_ids"])
        assert mine.labels == list(theirs["labels"])
        trained = tok.decode([t for t in mine.labels if t != IGNORE])
        answers = [m["content"] for m in row.messages if m["role"] == "assistant"]
        assert trained == "".join(a + "<|im_end|>" for a in answers)


def test_sft_trl_chatml_markers_also_train_two_newlines_per_turn(tok, tmp_path):
    trainer = sft_trainer(with_markers(tok, MARKED_LIKE_TRL), tiny_lm(len(tok)), MESSAGES, assistant_only_loss=True)
    newline = tok.convert_tokens_to_ids("Ċ")
    for row, theirs in zip(sft_rows(MESSAGES, tmp_path), trainer.train_dataset):
        mine = tokenize_sft(row, tok, None)
        assert mine.input_ids == list(theirs["input_ids"])
        extra = [i for i, (a, b) in enumerate(zip(mine.labels, theirs["labels"])) if a != b]
        turns = sum(m["role"] == "assistant" for m in row.messages)
        assert len(extra) == 2 * turns
        assert all(mine.labels[i] == IGNORE and theirs["labels"][i] == newline for i in extra)
        for start, end in zip(extra[::2], extra[1::2]):  # "assistant" | "\n" | content <|im_end|> | "\n"
            assert tok.decode(mine.input_ids[:start]).endswith("<|im_start|>assistant")
            assert mine.input_ids[end - 1] == tok.convert_tokens_to_ids("<|im_end|>")
            assert all(lab != IGNORE for lab in mine.labels[start + 1:end])


@pytest.mark.parametrize("kind", ["chat", "plain"])
def test_sft_prompt_completion_labels_match_trl_completion_only(tok, tmp_path, kind):
    records = PROMPT_COMPLETION_CHAT if kind == "chat" else PROMPT_COMPLETION_PLAIN
    trainer = sft_trainer(tok, tiny_lm(len(tok)), records, completion_only_loss=True)
    for row, theirs in zip(sft_rows(records, tmp_path), trainer.train_dataset):
        mine = tokenize_sft(row, tok, None)
        ids, labels = list(theirs["input_ids"]), list(theirs["labels"])
        if kind == "plain":
            assert (mine.input_ids, mine.labels) == (ids, labels)
            assert mine.labels[-1] == tok.eos_token_id
        else:  # same ids; TRL's completion runs through the "\n" after <|im_end|>, alignlab's ends at <|im_end|>
            assert mine.input_ids == ids and tok.decode(ids[-2:]) == "<|im_end|>\n"
            assert mine.labels[:-1] == labels[:-1] and mine.labels[-1] == IGNORE and labels[-1] == ids[-1]
            assert tok.decode([t for t in mine.labels if t != IGNORE]).endswith("<|im_end|>")


def fitted(model, examples, pad_id, steps=12):
    """A few Adam steps on the batch itself, so the token accuracy is neither 0 nor 1."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    batch = Collator(pad_id)(examples)
    for _ in range(steps):
        opt.zero_grad()
        causal_lm_step(model, batch)[0].backward()
        opt.step()
    model.zero_grad()
    return model


def test_sft_loss_accuracy_grads_on_identical_ids_match_trl(tok, tmp_path):
    examples = [tokenize_sft(r, tok, None) for r in sft_rows(MESSAGES, tmp_path)]
    records = [{"input_ids": ex.input_ids, "labels": ex.labels} for ex in examples]
    model = fitted(tiny_lm(len(tok)), records, tok.pad_token_id)
    # alignlab's copies are taken before TRL binds its fused LM head to `model`: a copy of the patched model would
    # still run the original's forward (and leave its own parameters without gradients)
    unpatched = copy.deepcopy(model)
    trainer = sft_trainer(tok, model, records)  # pre-tokenised with labels: TRL uses them as they are
    assert [list(ex["labels"]) for ex in trainer.train_dataset] == [ex.labels for ex in examples]  # used as given
    assert trainer.model.training
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(records))])
    trl_loss = trainer.compute_loss(trainer.model, batch)
    trl_loss.backward()
    theirs = grads(trainer.model)
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    assert 0.0 < logged["mean_token_accuracy"] < 1.0
    n_trained = sum(t != IGNORE for ex in examples for t in ex.labels)
    assert int((batch["labels"] != IGNORE).sum()) == n_trained  # TRL's token mean is over the same tokens
    for packing in (False, True):
        for step in (causal_lm_step, chunked_causal_lm_step):
            mine_model = copy.deepcopy(unpatched)
            loss, metrics = step(mine_model, Collator(tok.pad_token_id, packing=packing)(examples))
            loss.backward()
            tol = TOL if step is chunked_causal_lm_step else FULL_LOGITS_TOL
            assert float(loss) == pytest.approx(float(trl_loss), **tol), (packing, step.__name__)
            assert float(metrics["mean_token_accuracy"]) == pytest.approx(logged["mean_token_accuracy"], **TOL)
            assert_same_grads(grads(mine_model), theirs, tol)
