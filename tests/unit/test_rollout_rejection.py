"""Rejection sampling's pool: the best sample per prompt across rounds, worked out by hand."""

from alignlab.rollout.generate import Sample
from alignlab.rollout.rejection import BestPerPrompt
from alignlab.rollout.sampling import ScoredGroup


def _group(prompt_ids, completions, rewards):
    # as generate() gives them: an answer that ends at once is [EOS] (id 2 here) with text ''
    samples = [Sample(0, j, prompt_ids, c, f"t{c}" if c and c != [2] else "", "eos") for j, c in enumerate(completions)]
    return ScoredGroup("p", samples, rewards)


def test_keeps_the_best_across_rounds():
    """Round 1: prompt 0 rewards (0.2, 0.9) -> keeps [12]; prompt 1 (0.5, 0.5) -> first of equals, [21].
    Round 2: prompt 0 best 0.4 < 0.9 -> unchanged; prompt 1 best 0.7 > 0.5 -> replaced by [23]; an empty
    completion ([EOS] alone, text '') with reward 5 never enters. Pool mean after round 2: (0.9 + 0.7) / 2 = 0.8."""
    pool = BestPerPrompt()
    s1 = pool.update([_group([1], [[11], [12]], [0.2, 0.9]), _group([2], [[21], [22]], [0.5, 0.5])], 1)
    assert s1["pool_reward_mean"] == 0.7 and s1["replaced"] == 0 and s1["round_best_mean"] == 0.7
    assert s1["sample_reward_mean"] == (0.2 + 0.9 + 0.5 + 0.5) / 4
    s2 = pool.update([_group([1], [[13], [14]], [0.4, 0.1]), _group([2], [[2], [23]], [5.0, 0.7])], 2)
    assert abs(s2["pool_reward_mean"] - 0.8) < 1e-12 and s2["replaced"] == 1
    assert [(k.completion_ids, k.round) for k in pool.best.values()] == [([12], 1), ([23], 2)]
    assert pool.examples() == [{"input_ids": [1, 12], "labels": [-100, 12]},
                               {"input_ids": [2, 23], "labels": [-100, 23]}]


def test_examples_are_cut_to_max_length_as_the_data_layer_cuts():
    """Prompt of 6 tokens, answer of 5, max_length 8: the prompt keeps its last max_length // 2 = 4 tokens and the
    answer the 4 left after it: [3, 4, 5, 6 | 10, 11, 12, 13]. Within max_length nothing changes."""
    pool = BestPerPrompt()
    pool.update([_group([1, 2, 3, 4, 5, 6], [[10, 11, 12, 13, 14]], [1.0])], 1)
    assert pool.examples(8) == [{"input_ids": [3, 4, 5, 6, 10, 11, 12, 13], "labels": [-100] * 4 + [10, 11, 12, 13]}]
    assert pool.examples(11) == pool.examples() == [{"input_ids": [1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 14],
                                                     "labels": [-100] * 6 + [10, 11, 12, 13, 14]}]


def test_a_negative_min_margin_is_refused_rather_than_pairing_ties():
    import pytest

    from alignlab.errors import AlignlabError
    from alignlab.rollout.sampling import BestOfN, preference_records

    res = BestOfN([_group([1], [[11], [12]], [0.5, 0.5])], {})
    assert preference_records(res, 0.0) == [] and res.dropped == {"tie": 1}
    with pytest.raises(AlignlabError, match="min-margin must be >= 0"):
        preference_records(res, -1.0)


def test_prompt_tables_in_no_known_format_are_read_through_columns(tmp_path):
    # the README promises `columns` / `data_format` to every command that reads data; rejection sampling and medusa
    # refused both keys, so a table such as TruthfulQA's CSV could not be used
    from alignlab.recipes.rejection_sampling import RejectionSamplingConfig, _split

    table = tmp_path / "questions.csv"
    table.write_text("Question,Best Answer\n" + "".join(f"What is {i} plus {i}?,{2 * i}\n" for i in range(8)))
    cfg = RejectionSamplingConfig(data=str(table), columns={"prompt": "Question"}, prompts=8, eval_split=0.25,
                                  output_dir=str(tmp_path / "out"))
    split = _split(cfg)
    assert len(split.train) == 6 and len(split.scored) == 2
    assert {r.prompt[0]["content"] for r in split.train + split.scored} == {f"What is {i} plus {i}?" for i in range(8)}


def test_best_of_n_can_leave_out_cut_samples_and_keeps_distinct_texts():
    """Samples cut at max_new_tokens were written as finished answers (sft and dpo then train an EOS after the cut),
    with nothing said; `drop_truncated` leaves them out, counted. sft mode with keep 2 wrote "hello" twice and
    dropped "hey"."""
    from alignlab.rollout.sampling import BestOfN, preference_records, sft_records

    samples = [Sample(0, 0, [1], [11], "hello", "eos"), Sample(0, 1, [1], [11], "hello", "eos"),
               Sample(0, 2, [1], [12], "hey", "eos"), Sample(0, 3, [1], [13, 14], "a long one cut", "length")]
    res = BestOfN([ScoredGroup("p", samples, [1.0, 1.0, 0.5, 2.0])], {})
    assert [r["completion"] for r in sft_records(res, keep=2)] == ["a long one cut", "hello"]
    assert [r["completion"] for r in sft_records(res, keep=2, drop_truncated=True)] == ["hello", "hey"]
    assert res.dropped["cut_at_max_new_tokens"] == 1 and res.dropped["duplicate"] == 1
    pair = preference_records(res, drop_truncated=True)[0]
    assert (pair["chosen"], pair["rejected"]) == ("hello", "hey")
    assert preference_records(res)[-1]["chosen"] == "a long one cut"  # kept by default, as before
