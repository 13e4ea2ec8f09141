"""eval/measures.py against direct computations on a tiny model."""

import math

import torch

from alignlab.data.rows import SFTRow
from alignlab.data.tokenize import tokenize_sft
from alignlab.eval.measures import perplexity_on_rows
from alignlab.models.load import load_model, load_tokenizer
from alignlab.ops.logprobs import token_logprobs


def test_perplexity_scores_only_trained_tokens_of_a_multi_turn_row():
    """The second user turn and the template's text after each end-of-turn token are context, not targets: the
    perplexity is exp of the mean NLL over exactly the tokens with labels != -100 (one plain forward each)."""
    tok, model = load_tokenizer("tiny-random"), load_model("tiny-random", device="cpu").eval()
    rows = [SFTRow([{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}], 1),
            SFTRow([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
                    {"role": "user", "content": "And times 3, explained in detail?"},
                    {"role": "assistant", "content": "12"}], 1)]
    total, count, untrained_after_first = 0.0, 0, 0
    for r in rows:
        t = tokenize_sft(r, tok, 512)
        labels = torch.tensor([t.labels])
        with torch.no_grad():
            lp = token_logprobs(model(input_ids=torch.tensor([t.input_ids])).logits[:, :-1], labels[:, 1:])
        trained = labels[:, 1:] != -100
        total, count = total + float(lp[trained].sum()), count + int(trained.sum())
        first = next(i for i, lab in enumerate(t.labels) if lab != -100)
        untrained_after_first += sum(lab == -100 for lab in t.labels[first:])
    assert untrained_after_first > 5  # the rows do have untrained tokens after the first trained one

    got = perplexity_on_rows(model, tok, rows, max_length=512)

    assert got["tokens"] == count and got["n"] == 2
    assert math.isclose(got["perplexity"], math.exp(-total / count), rel_tol=1e-5)
