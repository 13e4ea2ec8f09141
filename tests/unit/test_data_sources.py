"""load_rows: every bad-input kind is located (file, line, field); skip drops exactly the bad rows."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignlab.data.rows import DataError, PreferenceRow, PromptRow, SFTRow, UnpairedRow
from alignlab.data.sources import extract_answer, load_rows
from alignlab.errors import AlignlabError

GOOD = {"prompt": "2+2=", "chosen": " 4", "rejected": " 5"}

# One bad line of every kind, each on a known line of a .jsonl (line 1 and the last line are good).
BAD_LINES = [
    ('{"prompt": "p", "chosen": "c", "rejec', "invalid_json", None),  # truncated line
    (b'{"prompt": "p", "chosen": "caf\xe9", "rejected": "r"}', "invalid_utf8", "chosen"),
    ('{"prompt": "p", "chosen": "c"}', "missing_field", "rejected"),
    ('{"prompt": "p", "chosen": "c", "rejected": 5}', "wrong_type", "rejected"),
    ('{"prompt": "p", "chosen": "   ", "rejected": "r"}', "empty_completion", "chosen"),
    ('{"prompt": "p", "chosen": "same", "rejected": "same"}', "identical_pair", "chosen"),
    ('{"prompt": "", "chosen": "c", "rejected": "r"}', "empty_prompt", "prompt"),
    ('["not", "an", "object"]', "wrong_type", None),
]


@pytest.fixture
def bad_file(tmp_path):
    lines = [json.dumps(GOOD).encode()]
    for text, _, _ in BAD_LINES:
        lines.append(text if isinstance(text, bytes) else text.encode())
    lines.append(json.dumps({**GOOD, "chosen": " four"}).encode())
    p = tmp_path / "pairs.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    return p


def test_error_mode_names_file_line_and_field_of_every_problem(bad_file):
    with pytest.raises(DataError) as e:
        load_rows(bad_file)
    got = [(p.kind, p.line, p.field) for p in e.value.problems]
    assert got == [(kind, i + 2, field) for i, (_, kind, field) in enumerate(BAD_LINES)]
    assert all(p.file == str(bad_file) for p in e.value.problems)
    msg = str(e.value)
    assert f"{bad_file}:3 (record 2) field 'chosen': invalid_utf8" in msg
    assert f"{bad_file}:5 (record 4) field 'rejected': wrong_type" in msg
    assert isinstance(e.value, AlignlabError)


def test_skip_mode_drops_exactly_the_bad_rows_and_counts_them(bad_file):
    res = load_rows(bad_file, on_bad_row="skip")
    assert [r.chosen[0]["content"] for r in res.rows] == [" 4", " four"]
    assert [r.origin.line for r in res.rows] == [1, 10]
    assert res.skipped == {"invalid_json": 1, "invalid_utf8": 1, "missing_field": 1, "wrong_type": 2,
                           "empty_completion": 1, "identical_pair": 1, "empty_prompt": 1}
    assert res.records == 10 and len(res.problems) == len(BAD_LINES)
    assert (res.format, res.task) == ("preference", "preference")


def test_a_row_with_two_problems_is_skipped_once(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"prompt": "p", "chosen": "", "rejected": ""}) + "\n" + json.dumps(GOOD) + "\n")
    res = load_rows(p, on_bad_row="skip")
    assert len(res.rows) == 1 and res.skipped == {"empty_completion": 1}
    assert [(x.kind, x.field) for x in res.problems] == [("empty_completion", "chosen"),
                                                         ("empty_completion", "rejected")]


def test_json_array_problems_carry_record_index_and_line(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('[\n{"instruction": "a", "input": "", "output": "b"},\n{"instruction": "c", "input": "", "output": ""}\n]')
    with pytest.raises(DataError, match=r"d.json:3 \(record 1\) field 'output': empty_completion"):
        load_rows(p)


@pytest.mark.parametrize("record, field", [
    ({"question": "2+2?", "answer": " "}, "answer"),
    ({"prompt": "q", "completion": ""}, "completion"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": ""}]}, "conversations"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
      "rejected": "b"}, "rejected"),
])
def test_a_bad_record_is_reported_at_its_own_field(tmp_path, record, field):
    """The field named is one the file has: an empty GSM8K answer is 'answer', not the rows' 'messages'; a pair
    with one answer as text and the other as messages names the text one."""
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match=rf"d.jsonl:1 \(record 0\) field '{field}'"):
        load_rows(p)


def test_csv_with_mapping_reports_line_and_column(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("q,good,bad\nQ1,yes,no\nQ2,same,same\n")
    with pytest.raises(DataError, match=r"d.csv:3 \(record 1\) field 'chosen': identical_pair"):
        load_rows(p, columns="prompt=q,chosen=good,rejected=bad")


@pytest.fixture
def pairs(tmp_path):
    p = tmp_path / "pairs.json"
    p.write_text(json.dumps([
        {"prompt": [{"role": "user", "content": "q1"}], "chosen": [{"role": "assistant", "content": "good"}],
         "rejected": [{"role": "assistant", "content": "bad"}]},
        {"prompt": [{"role": "user", "content": "q2 #### 9"}], "chosen": [{"role": "assistant", "content": "g2"}],
         "rejected": [{"role": "assistant", "content": "b2"}]},
    ]))
    return p


def test_preference_converts_to_sft_unpaired_and_prompt(pairs):
    u, a = {"role": "user", "content": "q1"}, {"role": "assistant", "content": "good"}
    sft = load_rows(pairs, task="sft")
    assert sft.task == "sft" and sft.rows[0] == SFTRow([u, a], 1, origin=sft.rows[0].origin)
    unp = load_rows(pairs, task="unpaired").rows
    assert [(r.completion[0]["content"], r.label) for r in unp] == [("good", True), ("bad", False),
                                                                    ("g2", True), ("b2", False)]
    assert all(isinstance(r, UnpairedRow) for r in unp)
    prompts = load_rows(pairs, task="prompt").rows
    assert prompts[0] == PromptRow([u], origin=prompts[0].origin) and prompts[1].answer is None


def test_sft_to_prompt_takes_the_answer_after_hashes(tmp_path):
    p = tmp_path / "gsm.jsonl"
    p.write_text(json.dumps({"question": "1+1?", "answer": "1+1 = <<1+1=2>>2\n#### 2"}) + "\n"
                 + json.dumps({"question": "Hi?", "answer": " Hello. "}) + "\n")
    res = load_rows(p, task="prompt")
    assert [(r.prompt[0]["content"], r.answer) for r in res.rows] == [("1+1?", "2"), ("Hi?", "Hello.")]
    assert extract_answer("a #### 1 #### 42 ") == "42"


def test_unpaired_to_sft_keeps_desirable_rows_and_counts_the_rest(tmp_path):
    p = tmp_path / "kto.jsonl"
    p.write_text("\n".join(json.dumps({"prompt": "p", "completion": c, "label": lab})
                           for c, lab in [("a", True), ("b", False), ("c", True)]))
    res = load_rows(p, task="sft")
    assert [r.messages[1]["content"] for r in res.rows] == ["a", "c"] and res.dropped == {"undesirable": 1}


def test_impossible_task_and_bad_arguments_are_clean_errors(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps([{"instruction": "i", "input": "", "output": "o"}]))
    with pytest.raises(AlignlabError, match="cannot become a preference row; .* can become: sft, prompt"):
        load_rows(p, task="preference")
    with pytest.raises(AlignlabError, match="task must be one of"):
        load_rows(p, task="dpo")
    with pytest.raises(AlignlabError, match="on_bad_row"):
        load_rows(p, on_bad_row="ignore")
    with pytest.raises(AlignlabError, match="format must be one of"):
        load_rows(p, format="xml")


def test_format_override_and_undetectable_file(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"body": "hello"}) + "\n")
    with pytest.raises(AlignlabError, match=r"cannot tell the format .*keys: \['body'\]"):
        load_rows(p)
    q = tmp_path / "qa.jsonl"
    q.write_text(json.dumps({"prompt": "p", "completion": "c", "question": "x"}) + "\n")
    assert load_rows(q, format="prompt-completion").rows[0].messages[1]["content"] == "c"


def test_file_of_only_broken_lines_raises_data_error(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"prompt": \n{"x\n')
    with pytest.raises(DataError) as e:
        load_rows(p)
    assert [x.line for x in e.value.problems] == [1, 2]


def test_hh_mismatch_is_reported_with_its_line(tmp_path):
    p = tmp_path / "hh.jsonl"
    rows = [{"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: b"},
            {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: yo\n\nAssistant: b"}]
    p.write_text("\n".join(json.dumps(r) for r in rows))
    res = load_rows(p, on_bad_row="skip")
    assert res.format == "hh" and len(res.rows) == 1 and isinstance(res.rows[0], PreferenceRow)
    assert [(x.kind, x.line, x.field) for x in res.problems] == [("prompt_mismatch", 2, "rejected")]


def test_misspelt_mapped_column_is_one_clear_error(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("Question,Best Answer\nQ,A\n")
    with pytest.raises(AlignlabError, match=r"\['Best answer'\] from the mapping are not in the file; "
                                            r"its columns are: \['Question', 'Best Answer'\]"):
        load_rows(p, columns="prompt=Question,completion=Best answer")


def test_error_message_shows_the_first_ten_and_counts_the_rest(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"prompt": f"p{i}", "chosen": "x", "rejected": "x"}) for i in range(13)))
    with pytest.raises(DataError) as e:
        load_rows(p)
    msg = str(e.value)
    assert msg.startswith(f"13 problem(s) in {p} (identical_pair: 13):")
    assert f"{p}:10 (record 9)" in msg and f"{p}:11 (record 10)" not in msg and "... and 3 more" in msg


def test_invalid_utf8_in_csv_and_json_array_names_line_and_column(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes(b"q,a\nfine,ok\nbad,caf\xe9\n")
    with pytest.raises(DataError, match=r"d.csv:3 \(record 1\) field 'a': invalid_utf8"):
        load_rows(p, columns="prompt=q,completion=a")
    j = tmp_path / "d.json"
    j.write_bytes(b'[\n{"question": "q", "answer": "a"},\n{"question": "\xff", "answer": "a"}\n]')
    with pytest.raises(DataError, match=r"d.json:3 \(record 1\) field 'question': invalid_utf8"):
        load_rows(j)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from([b'{"prompt": "p", "chosen": "a", "rejected": "b"}', b'{"prompt": ', b"[", b"]",
                              b'{"messages": [{"role": "x"}]}', b'{"conversations": 3}', b'"s"', b"\xff\xfe",
                              b'{"instruction": 1, "output": []}', b'{"chosen": "\\n\\nHuman: a", "rejected": 2}',
                              b"q,a", b'"x', b"\t", b"null", b"{}"]), max_size=8).map(b"\n".join)),
       suffix=st.sampled_from([".jsonl", ".json", ".csv", ".tsv"]), skip=st.booleans())
def test_no_input_crashes_with_anything_but_an_alignlab_error(tmp_path, body, suffix, skip):
    """Arbitrary bytes under every text suffix: load_rows returns or raises AlignlabError, nothing else."""
    p = tmp_path / f"fuzz{suffix}"
    p.write_bytes(body)
    columns = "prompt=q,completion=a" if suffix in (".csv", ".tsv") else None
    try:
        load_rows(p, columns=columns, on_bad_row="skip" if skip else "error")
    except AlignlabError:
        pass


def test_task_is_reported_even_when_no_row_is_usable(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"prompt": "p", "chosen": "x", "rejected": "x"}) + "\n")
    res = load_rows(p, on_bad_row="skip")
    assert (res.rows, res.format, res.task, res.skipped) == ([], "preference", "preference", {"identical_pair": 1})


def test_prompt_task_checks_only_the_prompt(tmp_path):
    """An Alpaca record with an empty output and a preference pair with an empty answer are bad training rows
    but good prompts; an empty prompt is a bad prompt."""
    from alignlab.data.sources import load_rows as load

    f = tmp_path / "a.json"
    f.write_text('[{"instruction": "Say hi", "output": ""}, {"instruction": " ", "output": "x"}]')
    assert load(f, task="sft", on_bad_row="skip").skipped == {"empty_completion": 1}
    res = load(f, task="prompt", on_bad_row="skip")
    assert [r.prompt[-1]["content"] for r in res.rows] == ["Say hi"] and res.skipped == {"empty_prompt": 1}
    g = tmp_path / "p.jsonl"
    g.write_text('{"prompt": "Q", "chosen": "", "rejected": "no"}\n')
    assert load(g, task="prompt").rows[0].prompt == [{"role": "user", "content": "Q"}]


def test_a_conversation_opening_with_an_assistant_turn_is_a_bad_row(tmp_path):
    # its first trained turn has nothing before it: chat templates refuse to render an empty conversation (the
    # SFT run stopped blaming the template) and SmolLM2's would have trained its own default system turn
    p = tmp_path / "greeting.jsonl"
    p.write_text(json.dumps({"conversations": [{"from": "gpt", "value": "Hi! How can I help?"},
                                               {"from": "human", "value": "A joke?"},
                                               {"from": "gpt", "value": "Why did the chicken cross the road?"}]})
                 + "\n" + json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                                   {"role": "assistant", "content": "Hello!"}]}) + "\n")
    with pytest.raises(DataError, match=r"record 0\) field 'conversations': empty_prompt: the conversation opens"):
        load_rows(p)
    res = load_rows(p, on_bad_row="skip")
    assert len(res.rows) == 1 and res.skipped == {"empty_prompt": 1}


def test_prompt_rows_carry_their_other_columns_to_rewards(tmp_path):
    # only `answer` reached a reward (and only as text): a code reward's `tests` never arrived in grpo, against
    # TRL's convention (every column but prompt and completion) that rollout/rewards.py documents
    from alignlab.rollout.sampling import row_fields

    p = tmp_path / "tasks.jsonl"
    p.write_text(json.dumps({"prompt": "add", "answer": "3", "tests": ["assert f(1) == 2"], "difficulty": 2}) + "\n"
                 + json.dumps({"prompt": "sub", "solution": "1"}) + "\n")
    rows = load_rows(p, task="prompt").rows
    assert rows[0].fields == {"answer": "3", "tests": ["assert f(1) == 2"], "difficulty": 2}
    fields = row_fields(rows, 2)
    assert fields == {"answer": ["3", "3", "1", "1"], "difficulty": [2, 2, None, None],
                      "solution": [None, None, "1", "1"], "tests": [["assert f(1) == 2"]] * 2 + [None, None]}
