"""SFT NLL reductions, by hand.

token log-probs [[-1, -2, -3], [-4, 0, 0]], mask [[1, 1, 1], [1, 0, 0]]:
    trained-token NLLs 1, 2, 3 (row 0) and 4 (row 1); total 10 over 4 tokens.
"""

import pytest
import torch

from alignlab.losses.sft import nll

LP = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_token_mean_is_trl_convention():
    """10 / 4 = 2.5 (long rows weigh more); F.cross_entropy(mean) gives the same."""
    assert nll(LP, MASK).item() == pytest.approx(2.5)


def test_token_mean_with_accumulation_count():
    """Two micro-batches of one row each, num_tokens = 4: 6/4 + 4/4 = 2.5, same as the one-batch loss."""
    a = nll(LP[:1], MASK[:1], num_tokens=4)
    b = nll(LP[1:], MASK[1:], num_tokens=4)
    assert (a + b).item() == pytest.approx(2.5)


def test_sequence_reductions():
    """Per sequence: row 0 mean 6/3 = 2, row 1 mean 4/1 = 4; sequence_mean (2 + 4) / 2 = 3; sum 10."""
    torch.testing.assert_close(nll(LP, MASK, "per_sequence"), torch.tensor([2.0, 4.0]))
    assert nll(LP, MASK, "sequence_mean").item() == pytest.approx(3.0)
    assert nll(LP, MASK, "sum").item() == pytest.approx(10.0)
    with pytest.raises(ValueError):
        nll(LP, MASK, "bogus")
