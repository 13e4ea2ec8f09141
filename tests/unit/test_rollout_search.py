"""MCTS on the implicit reward: exhaustive search recovers the brute-force best answer of a small Markov
"language model", the budget in model calls holds, and a policy equal to its reference has reward 0."""

import itertools
import math

import pytest
import torch
from torch import nn

from alignlab.errors import AlignlabError
from alignlab.rollout.search import MCTSConfig, mcts_search

EOS, V = 3, 4


class Markov(nn.Module):
    """Next-token logits depend on the last token only: logits = table[last]."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.tensor(table, dtype=torch.float32)
        self.calls = 0

    @property
    def device(self):
        return torch.device("cpu")

    def forward(self, input_ids, **kw):
        self.calls += 1
        return type("Out", (), {"logits": self.table[input_ids[:, -1]][:, None, :]})()


class Tok:
    eos_token_id = EOS

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids if not (skip_special_tokens and i == EOS))


POLICY = [[2.0, 0.5, 0.1, 0.0], [0.1, 1.0, 2.0, 0.3], [1.5, 0.2, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
REFERENCE = [[0.5, 0.5, 0.5, 0.5], [1.0, 0.0, 0.0, 1.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]


def _brute_force(beta, max_new, prompt_last=0):
    lp = torch.log_softmax(torch.tensor(POLICY), -1)
    lr = torch.log_softmax(torch.tensor(REFERENCE), -1)
    best = (-math.inf, None)
    for n in range(1, max_new + 1):
        for seq in itertools.product(range(V), repeat=n):
            if EOS in seq[:-1] or (n < max_new and seq[-1] != EOS):
                continue  # a complete answer ends at its first EOS or at max_new tokens
            prev, r = prompt_last, 0.0
            for t in seq:
                r += beta * float(lp[prev, t] - lr[prev, t])
                prev = t
            best = max(best, (r, list(seq)), key=lambda x: x[0])
    return best


def test_exhaustive_search_finds_the_best_answer():
    """top_k = vocabulary and a budget well above the 2 x 13 calls that expand every non-terminal prefix of
    length < 3: the answer is the brute-force maximiser of sum beta * log pi / pi_ref."""
    cfg = MCTSConfig(budget=200, beta=0.5, top_k=V, max_new_tokens=3)
    (res,) = mcts_search(Markov(POLICY), Markov(REFERENCE), Tok(), [[1, 0]], cfg)
    want, seq = _brute_force(0.5, 3)
    assert res.implicit_reward == pytest.approx(want, abs=1e-5)
    assert res.completion_ids == seq
    assert res.calls <= 2 * 13 and res.stats["completed_in_search"]


def test_budget_is_counted_in_model_calls():
    policy, ref = Markov(POLICY), Markov(REFERENCE)
    (res,) = mcts_search(policy, ref, Tok(), [[1, 0]], MCTSConfig(budget=6, top_k=2, max_new_tokens=8))
    assert res.stats["search_calls"] <= 6
    assert res.calls == policy.calls + ref.calls  # every forward is counted, greedy completion included
    assert len(res.completion_ids) <= 8 and res.finish_reason in ("eos", "length")


def test_policy_equal_to_reference_has_zero_implicit_reward():
    m = Markov(POLICY)
    (res,) = mcts_search(m, m, Tok(), [[2]], MCTSConfig(budget=20, top_k=2, max_new_tokens=4))
    assert res.implicit_reward == 0.0


def test_bad_config():
    with pytest.raises(AlignlabError):
        MCTSConfig(budget=1).validate()
