"""Hand-computed tests for pass@k (Chen et al. 2021) and maj@k."""

import itertools
import math

import pytest

from alignlab.errors import AlignlabError
from alignlab.eval.passk import (
    evaluate_passk,
    group_equal,
    maj_at_k,
    mean_and_stderr,
    pass_at_k,
    passk_summary,
)


def test_pass_at_k_hand_values():
    """n = 5, c = 2: pass@1 = c/n = 0.4; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7;
    pass@4 = 1 - C(3,4)/C(5,4) = 1 (n - c < k); c = 0 -> 0."""
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 4) == 1.0
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(200, 13, 100) == pytest.approx(1 - math.comb(187, 100) / math.comb(200, 100))


def test_pass_at_k_is_the_subset_average():
    """Unbiased: equals the fraction of all k-subsets of the n samples containing a correct one."""
    samples = [True, False, False, True, False, False]
    for k in range(1, 7):
        subsets = list(itertools.combinations(samples, k))
        exact = sum(any(s) for s in subsets) / len(subsets)
        assert pass_at_k(6, 2, k) == pytest.approx(exact)


def test_pass_at_k_rejects_bad_counts():
    for n, c, k in ((3, 4, 1), (3, 1, 4), (3, 1, 0)):
        with pytest.raises(AlignlabError):
            pass_at_k(n, c, k)


def test_maj_at_k_votes_ties_and_missing_answers():
    """answers (72, 70, 72, None, 70, 70), right answer 72.
    maj@3: 72 twice vs 70 once -> 72 -> 1. maj@6: 70 three times vs 72 twice -> 0.
    maj@2: one each, tie -> first seen (72) -> 1. All None -> 0."""
    answers = [72.0, 70.0, 72.0, None, 70.0, 70.0]
    correct = [a == 72.0 for a in answers]
    assert maj_at_k(answers, correct, 3) == 1.0
    assert maj_at_k(answers, correct, 6) == 0.0
    assert maj_at_k(answers, correct, 2) == 1.0
    assert maj_at_k([None, None], [False, False], 2) == 0.0
    with pytest.raises(AlignlabError):
        maj_at_k(answers, correct, 7)


def test_equal_answers_written_differently_are_one_vote():
    """Reference 1000; extracted answers "1,000", "1000 apples", "1000.0", "900", "900". Verbatim, 900 wins the vote
    (2 against 1 each) -> maj@5 = 0; grouped by the math reward's equality, 1000 has 3 votes -> 1."""
    from alignlab.rollout.verify_math import math_equal

    answers = ["1,000", "1000 apples", "1000.0", "900", "900"]
    correct = [math_equal(a, "1000") for a in answers]
    assert correct == [True, True, True, False, False]
    assert maj_at_k(answers, correct, 5) == 0.0
    grouped = group_equal(answers, math_equal)
    assert grouped == ["1,000", "1,000", "1,000", "900", "900"]
    assert maj_at_k(grouped, correct, 5) == 1.0
    assert group_equal([None, "7", None, "7.0"], math_equal) == [None, "7", None, "7"]


def test_mean_and_stderr():
    """values (1, 0, 1, 0): mean 0.5, sample var = 4 * 0.25 / 3 = 1/3, se = sqrt(1/12)."""
    mean, se = mean_and_stderr([1.0, 0.0, 1.0, 0.0])
    assert mean == 0.5 and se == pytest.approx(math.sqrt(1 / 12))
    assert mean_and_stderr([0.3]) == (0.3, 0.0)


def test_passk_summary_threshold_and_maj():
    """Problem 1 rewards (1, 0, 0.5) with threshold 1 -> c = 1 of n = 3; problem 2 (1, 1, 1) -> c = 3.
    pass@1 = mean(1/3, 1) = 2/3; pass@2 = mean(1 - C(2,2)/C(3,2), 1) = mean(2/3, 1) = 5/6.
    maj@3: problem 1 answers (7, 8, 8) -> 8 wins, wrong -> 0; problem 2 (5, 5, 5) -> 1; mean 0.5."""
    out = passk_summary([[1.0, 0.0, 0.5], [1.0, 1.0, 1.0]], [1, 2, 3], answers=[[7, 8, 8], [5, 5, 5]])
    assert out["pass@1"] == pytest.approx(2 / 3) and out["pass@2"] == pytest.approx(5 / 6)
    assert out["maj@3"] == 0.5 and out["n"] == 3 and out["problems"] == 2
    assert passk_summary([[0.5, 0.0]], [1], threshold=0.5)["pass@1"] == 0.5
    with pytest.raises(AlignlabError, match="same number"):
        passk_summary([[1.0], [1.0, 0.0]], [1])


@pytest.mark.slow  # loads transformers and tiny-random: ~18 s on the shared 2-core box
def test_evaluate_passk_keeps_samples_aligned_with_their_problem():
    """tiny-random's answers are noise, so the reward reads the row field: problem 0 ('yes') is right for
    every sample, problem 1 ('no') for none. pass@k = 0.5 for every k only if each sample was scored
    with its own problem's field (prompt-major order)."""
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.rollout.generate import SamplingConfig

    model, tok = load_model("tiny-random", device="cpu"), load_tokenizer("tiny-random")

    def reward(prompts, completions, answer, **_):
        return [1.0 if a == "yes" else 0.0 for a in answer]

    out = evaluate_passk(model, tok, ["What is 1+1?", "Name a colour."], {"answer": ["yes", "no"]}, reward,
                         n=3, ks=[1, 3], sampling=SamplingConfig(max_new_tokens=4), extract=lambda t: "same")
    assert out["pass@1"] == 0.5 and out["pass@3"] == 0.5 and out["maj@3"] == 0.5
    assert out["mean_reward"] == 0.5
    with pytest.raises(AlignlabError, match="k must be"):
        evaluate_passk(model, tok, ["x"], {}, reward, n=2, ks=[3])


def test_summary_refuses_mismatched_answers_and_non_finite_rewards():
    # answers for 2 of 3 problems: zip scored maj@k on 2 while reporting 3 problems
    with pytest.raises(AlignlabError, match="answers for 2 problems but rewards for 3"):
        passk_summary([[1.0], [0.0], [1.0]], [1], answers=[["a"], ["b"]])
    # NaN >= threshold is False: a NaN reward was a wrong answer, silently
    with pytest.raises(AlignlabError, match="non-finite reward nan for problem 1, sample 0"):
        passk_summary([[1.0, 0.0], [float("nan"), 1.0]], [1])


def test_the_passk_command_checks_its_record_range():
    # offset=-1 scored record 0 alone (another set than asked) and exited 0
    from alignlab.errors import AlignlabError
    from alignlab.eval.passk_command import PassKConfig, eval_config

    for kw in ({"offset": -1, "limit": 2}, {"limit": 0}):
        with pytest.raises(AlignlabError, match="data_limit >= 1, data_offset >= 0"):
            eval_config(PassKConfig(model="tiny-random", data="x.jsonl", **kw), "out")
    # k=[] sampled every problem, then crashed with an IndexError
    with pytest.raises(AlignlabError, match=r"every k in \[1, n\] \(n=2, k=\[\]\)"):
        eval_config(PassKConfig(model="tiny-random", data="x.jsonl", n=2, k=[]), "out")


def test_passk_options_on_another_kind_are_refused_even_at_their_defaults():
    # {n: 8} (the default n) on a mean_reward item was accepted and ignored
    from alignlab.config import from_dict
    from alignlab.errors import AlignlabError
    from alignlab.eval.runner import EvalConfig

    for passk in ({"n": 8}, {"majority": False}):
        with pytest.raises(AlignlabError, match="passk options are read by kind passk only"):
            from_dict(EvalConfig, {"checkpoints": ["m"], "evaluations": [
                {"kind": "mean_reward", "data": "x.jsonl", "reward": "math", "passk": passk}]})
    ok = from_dict(EvalConfig, {"checkpoints": ["m"], "evaluations": [{"kind": "passk", "data": "x", "reward": "math"}]})
    assert ok.evaluations[0].passk is None  # the defaults, read as PassKSpec() by passk_results
