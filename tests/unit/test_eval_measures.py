"""eval/measures.py against direct computations on a tiny model."""

import math

import pytest
import torch

from alignlab.data.rows import SFTRow
from alignlab.data.tokenize import tokenize_sft
from alignlab.errors import AlignlabError
from alignlab.eval.measures import check_same_vocabulary, perplexity_on_rows
from alignlab.models.load import load_model, load_tokenizer
from alignlab.ops.logprobs import token_logprobs


def _trained_logps(model, tok, rows):
    """(sum of log-probs, count) over the tokens with labels != -100, one plain forward a row."""
    total, count = 0.0, 0
    for r in rows:
        t = tokenize_sft(r, tok, 512)
        labels = torch.tensor([t.labels])
        with torch.no_grad():
            lp = token_logprobs(model(input_ids=torch.tensor([t.input_ids])).logits[:, :-1], labels[:, 1:])
        trained = labels[:, 1:] != -100
        total, count = total + float(lp[trained].sum()), count + int(trained.sum())
    return total, count


def test_perplexity_scores_only_trained_tokens_of_a_multi_turn_row():
    """The second user turn and the template's text after each end-of-turn token are context, not targets: the
    perplexity is exp of the mean NLL over exactly the tokens with labels != -100 (one plain forward each)."""
    tok, model = load_tokenizer("tiny-random"), load_model("tiny-random", device="cpu").eval()
    rows = [SFTRow([{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}], 1),
            SFTRow([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
                    {"role": "user", "content": "And times 3, explained in detail?"},
                    {"role": "assistant", "content": "12"}], 1)]
    untrained_after_first = 0
    for r in rows:
        labels = tokenize_sft(r, tok, 512).labels
        first = next(i for i, lab in enumerate(labels) if lab != -100)
        untrained_after_first += sum(lab == -100 for lab in labels[first:])
    assert untrained_after_first > 5  # the rows do have untrained tokens after the first trained one
    total, count = _trained_logps(model, tok, rows)

    got = perplexity_on_rows(model, tok, rows, max_length=512)

    assert got["tokens"] == count and got["n"] == 2
    assert math.isclose(got["perplexity"], math.exp(-total / count), rel_tol=1e-5)


def test_perplexity_keeps_a_row_trained_from_its_first_token():
    """A plain-text row with an empty prompt (no BOS) is trained from position 0; it was dropped silently (n 1 of
    2) and alone raised. Scored from its second token, as training's shifted loss does."""
    tok, model = load_tokenizer("tiny-random"), load_model("tiny-random", device="cpu").eval()
    rows = [SFTRow([{"role": "user", "content": ""}, {"role": "assistant", "content": "The cat sat on the mat."}], 1,
                   chat=False),
            SFTRow([{"role": "user", "content": "Story:"}, {"role": "assistant", "content": " A quick brown fox."}], 1,
                   chat=False)]
    assert tokenize_sft(rows[0], tok, 512).labels[0] != -100
    total, count = _trained_logps(model, tok, rows)
    got = perplexity_on_rows(model, tok, rows, max_length=512)
    assert got["n"] == 2 and got["tokens"] == count
    assert math.isclose(got["perplexity"], math.exp(-total / count), rel_tol=1e-5)
    assert perplexity_on_rows(model, tok, rows[:1], max_length=512)["n"] == 1


def test_reference_with_another_vocabulary_is_refused():
    """kl and dpo_accuracy score the policy's token ids under the reference: another tokenizer scored other text
    (a 512-token model against SmolLM2's 49,152 reported kl_k3 42.5)."""
    tok, model = load_tokenizer("tiny-random"), load_model("tiny-random", device="cpu").eval()
    assert check_same_vocabulary((model, tok), (model, tok), "a", "b") is model

    class Other:  # the same sizes, one token string moved
        def get_vocab(self):
            vocab = dict(tok.get_vocab())
            first = next(iter(vocab))
            vocab[first + "x"] = vocab.pop(first)
            return vocab

    with pytest.raises(AlignlabError, match="another vocabulary"):
        check_same_vocabulary((model, tok), (model, Other()), "policy", "ref")
