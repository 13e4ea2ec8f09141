"""Column mappings: the syntax, list-valued cells, and majority votes with ties dropped."""

import pytest

from alignlab.data.formats import Dropped
from alignlab.data.mapping import convert, parse_columns
from alignlab.data.rows import PreferenceRow, PromptRow, RowProblem, SFTRow, UnpairedRow
from alignlab.errors import AlignlabError

PANDA = "prompt=instruction+input,responses=response1+response2,votes=annotator1+annotator2+annotator3"


def U(t):
    return {"role": "user", "content": t}


def A(t):
    return {"role": "assistant", "content": t}


def panda(votes, r1="one", r2="two", inp="x"):
    return {"instruction": "Do", "input": inp, "response1": r1, "response2": r2,
            **{f"annotator{i + 1}": v for i, v in enumerate(votes)}}


def test_parse_string_and_dict_forms_agree():
    a = parse_columns('prompt=Question,chosen="Best Answer",rejected=Incorrect Answers[0],list_sep=;')
    b = parse_columns({"prompt": "Question", "chosen": "Best Answer", "rejected": "Incorrect Answers[0]"})
    assert a == b
    assert a.fields == {"prompt": [("Question", None)], "chosen": [("Best Answer", None)],
                        "rejected": [("Incorrect Answers", 0)]}
    assert a.task == "preference" and parse_columns(PANDA).task == "preference"
    assert parse_columns("prompt=q,completion=a").task == "sft"
    assert parse_columns("prompt=q,completion=a,label=l").task == "unpaired"
    assert parse_columns("prompt=q,answer=a").task == "prompt"


@pytest.mark.parametrize("spec,match", [
    ("prompt=q,bogus=x", "unknown field 'bogus'"),
    ("prompt=q,chosen=a", "chosen with rejected"),
    ("chosen=a,rejected=b", "needs prompt"),
    ("prompt=q,responses=a+b+c,votes=v", "exactly two"),
    ("prompt", "field=COLUMN"),
    ("prompt=q,chosen=a+b,rejected=c", "takes one column"),
    # accepted and ignored: a column named and never read
    ("prompt=q,label=l", "label is not read by a mapping with answer, prompt, system"),
    ("prompt=q,completion=a,margin=m", "margin is not read"),
    ("prompt=q,chosen=a,rejected=b,completion=c", "completion is not read"),
    ("prompt=q,chosen=a,rejected=b,answer=c", "answer is not read"),
    ("prompt=q,responses=a+b,votes=v,chosen=c,rejected=d", "chosen, rejected is not read"),
    ("prompt=q,prompt=a", "'prompt' is given twice"),
])
def test_bad_mappings_are_clean_errors(spec, match):
    with pytest.raises(AlignlabError, match=match):
        parse_columns(spec)


@pytest.mark.parametrize("votes,winner", [
    ((2, 2, 2), "two"), ((1, 1, 0), "one"), ((2, 1, 2), "two"), (("1", "2", "1"), "one"), (("a", "b", "b"), "two"),
])
def test_majority_vote_picks_chosen(votes, winner):
    (row,) = convert(panda(votes), parse_columns(PANDA))
    loser = "one" if winner == "two" else "two"
    assert row == PreferenceRow([U("Do\n\nx")], [A(winner)], [A(loser)])


@pytest.mark.parametrize("votes", [(0, 0, 0), (2, 0, 0), (0, 0, 1), (1, 2, 0), (1, 2)])
def test_ties_are_dropped(votes):
    """Tie votes winning (2,0,0: one vote for 2, two ties) or two answers level (1,2,0) make a tie."""
    with pytest.raises(Dropped) as e:
        convert(panda(votes), parse_columns(PANDA.replace("+annotator3", "") if len(votes) == 2 else PANDA))
    assert e.value.reason == "tie"


def test_bad_vote_value_and_missing_column():
    with pytest.raises(RowProblem) as e:
        convert(panda((1, 9, 1)), parse_columns(PANDA))
    assert (e.value.kind, e.value.field) == ("bad_value", "annotator2")
    rec = panda((1, 1, 1))
    del rec["response2"]
    with pytest.raises(RowProblem) as e:
        convert(rec, parse_columns(PANDA))
    assert (e.value.kind, e.value.field) == ("missing_field", "response2")


def test_empty_input_is_left_out_of_the_prompt_and_scalars_become_text():
    (row,) = convert(panda((1, 1, 1), r1=True, inp=""), parse_columns(PANDA))
    assert row.prompt == [U("Do")] and row.chosen == [A("True")]


TQA = {"Question": "Q?", "Best Answer": "Right", "Incorrect Answers": "Wrong A; Wrong B;  "}


def test_list_cell_selectors():
    (row,) = convert(TQA, parse_columns("prompt=Question,chosen=Best Answer,rejected=Incorrect Answers[1]"))
    assert row == PreferenceRow([U("Q?")], [A("Right")], [A("Wrong B")])
    rows = convert(TQA, parse_columns("prompt=Question,chosen=Best Answer,rejected=Incorrect Answers[*]"))
    assert [r.rejected for r in rows] == [[A("Wrong A")], [A("Wrong B")]]
    rows = convert({**TQA, "Incorrect Answers": "x| y"}, parse_columns("prompt=Question,chosen=Best Answer,"
                                                                       "rejected=Incorrect Answers[*],list_sep=|"))
    assert [r.rejected[0]["content"] for r in rows] == ["x", "y"]


def test_list_cell_without_selector_is_a_problem_not_a_silent_join():
    with pytest.raises(RowProblem, match=r"pick one with c\[0\]"):
        convert({"q": "Q", "c": ["a", "b"]}, parse_columns("prompt=q,completion=c"))
    with pytest.raises(RowProblem) as e:
        convert(TQA, parse_columns("prompt=Question,chosen=Best Answer,rejected=Incorrect Answers[5]"))
    assert (e.value.kind, e.value.field) == ("missing_field", "Incorrect Answers[5]")


def test_sft_unpaired_and_prompt_mappings_with_system_and_plain_text():
    m = parse_columns("prompt=q,completion=a,system=s,chat=false")
    (row,) = convert({"q": "Q", "a": "A", "s": "S"}, m)
    assert row == SFTRow([U("S\n\nQ"), A("A")], 1, chat=False)
    (row,) = convert({"q": "Q", "a": "A", "s": "S"}, parse_columns("prompt=q,completion=a,system=s"))
    assert row == SFTRow([{"role": "system", "content": "S"}, U("Q"), A("A")], 2)
    (row,) = convert({"q": "Q", "a": "A", "ok": "no"}, parse_columns("prompt=q,completion=a,label=ok"))
    assert row == UnpairedRow([U("Q")], [A("A")], False)
    (row,) = convert({"q": "Q", "a": 7}, parse_columns("prompt=q,answer=a"))
    assert row == PromptRow([U("Q")], answer="7")


def test_a_null_cell_under_a_selector_is_a_problem_not_the_text_none():
    m = parse_columns("prompt=q,chosen=good,rejected=bad[0]")
    (row,) = convert({"q": "Q", "good": "yes", "bad": ["no", "nope"]}, m)
    assert row.rejected[0]["content"] == "no"
    with pytest.raises(RowProblem) as e:
        convert({"q": "Q", "good": "yes", "bad": None}, m)
    assert (e.value.kind, e.value.field) == ("missing_field", "bad")


@pytest.mark.parametrize("cell", ["nan", "inf", float("nan")])
def test_a_margin_column_must_be_finite(cell):
    m = parse_columns("prompt=q,chosen=a,rejected=b,margin=m")
    with pytest.raises(RowProblem, match="finite") as e:
        convert({"q": "Q", "a": "A", "b": "B", "m": cell}, m)
    assert e.value.field == "m"
