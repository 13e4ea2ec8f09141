"""data/builtin.py (the builtin: prompt source) and the exact_match reward that scores its digit tasks."""

import pytest

from alignlab.data.builtin import builtin_rows, digit_problems
from alignlab.errors import AlignlabError
from alignlab.rollout.rewards import exact_match_reward, get_reward, score


def test_builtin_rows_are_seeded_plain_prompts_with_answers():
    a, b = builtin_rows("builtin:reverse", 5, seed=2), builtin_rows("reverse", 5, seed=2)
    assert [r.prompt for r in a] == [r.prompt for r in b]
    assert all(not r.chat and r.answer == r.prompt[0]["content"][:-1][::-1] for r in a)
    assert builtin_rows("builtin:sentiment", 3, seed=0)[0].answer is None
    with pytest.raises(AlignlabError, match="builtin:sentiment"):
        builtin_rows("builtin:nope", 1)
    assert all(p.endswith("=") for p, _ in digit_problems("add", 4))


def test_exact_match_by_name_and_by_function():
    """' 321' strips to '321' (1.0); '32' is wrong (0.0); the registry name gives the same function."""
    assert exact_match_reward(["1="] * 2, [" 321", "32"], answer=["321", "321"]) == [1.0, 0.0]
    assert score(get_reward("exact_match"), ["1="], ["7"], answer=["7"]) == [1.0]
    with pytest.raises(AlignlabError, match="answer"):
        exact_match_reward(["1="], ["1"])


def test_load_prompt_rows_reads_builtin_sets_and_files(tmp_path):
    from alignlab.data.prompts import load_prompt_rows

    rows = load_prompt_rows("builtin:add", n=4, seed=1)
    assert len(rows) == 4 and rows == builtin_rows("builtin:add", 4, seed=1)
    assert len(load_prompt_rows("builtin:sentiment", limit=3)) == 3  # limit doubles as n
    with pytest.raises(AlignlabError, match="number of prompts"):
        load_prompt_rows("builtin:add")
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a"}\n{"prompt": ""}\n{"prompt": "c"}\n')
    with pytest.raises(AlignlabError, match="empty_prompt"):
        load_prompt_rows(str(f))
    assert [r.prompt[0]["content"] for r in load_prompt_rows(str(f), on_bad_row="skip")] == ["a", "c"]
    assert len(load_prompt_rows(str(f), limit=1)) == 1  # the bad record after the first is never read


def test_arith_word_problems_have_the_answer_their_numbers_give():
    """Each template's answer recomputed from the numbers in its text; whole, non-negative; seeded; all templates."""
    import re

    from alignlab.data.builtin import arith_problems

    solve = {"A crate": lambda a, b: a * b, "A library": lambda a, b: a + b, "A tank": lambda s, a: s - a,
             "A farmer": lambda a, b, c: a * b + c, "A school": lambda a, b, c: a * b - c,
             "A bakery": lambda a, b, c: a * b * c}
    problems = arith_problems(300, seed=3)
    assert problems == arith_problems(300, seed=3) and problems != arith_problems(300, seed=4)
    seen = set()
    for question, answer in problems:
        numbers = [int(x) for x in re.findall(r"\d+", question)]
        kind = next((k for k in solve if question.startswith(k)), "shared")
        expected = numbers[0] // numbers[1] if kind == "shared" else solve[kind](*numbers)
        if kind == "shared":
            assert numbers[0] % numbers[1] == 0
        assert answer == str(expected) and expected >= 0, question
        seen.add(kind)
    assert seen == {*solve, "shared"}
    # pinned: the documented calculator runs (docs/online_rl.md) trained and were measured on these problems
    assert arith_problems(1)[0] == ("A farmer plants 321 rows of 39 trees and then 9232 more trees. How many trees "
                                    "are there?", "21751")
    rows = builtin_rows("builtin:arith", 4, seed=3)
    assert [(r.prompt[0]["content"], r.answer) for r in rows] == problems[:4]
