"""Format detection and conversion: each format's records become the canonical rows written out by hand."""

import pytest

from alignlab.data.formats import CONVERTERS, detect_format, hh_turns
from alignlab.data.rows import PreferenceRow, PromptRow, RowProblem, SFTRow, UnpairedRow


def U(t):
    return {"role": "user", "content": t}


def A(t):
    return {"role": "assistant", "content": t}


def S(t):
    return {"role": "system", "content": t}


def convert(rec):
    fmt = detect_format(rec)
    return fmt, CONVERTERS[fmt](rec)


def test_trl_standard_preference_is_plain_text():
    fmt, row = convert({"prompt": "2+2=", "chosen": "4", "rejected": "5"})
    assert fmt == "preference"
    assert row == PreferenceRow([U("2+2=")], [A("4")], [A("5")], chat=False)


def test_trl_conversational_preference_with_explicit_prompt():
    rec = {"prompt": [U("hi")], "chosen": [A("hello")], "rejected": [A("go away")], "margin": 2.0}
    assert convert(rec) == ("preference", PreferenceRow([U("hi")], [A("hello")], [A("go away")], margin=2.0))


def test_implicit_prompt_is_longest_common_prefix_of_message_lists():
    shared = [S("sys"), U("q1"), A("a1"), U("q2")]
    fmt, row = convert({"chosen": shared + [A("good")], "rejected": shared + [A("bad")]})
    assert fmt == "preference"
    assert row == PreferenceRow(shared, [A("good")], [A("bad")])


def test_implicit_prompt_never_swallows_the_answer():
    """Identical lists share everything; the last turn must stay the answer (then validation flags it)."""
    _, row = convert({"chosen": [U("q"), A("same")], "rejected": [U("q"), A("same")]})
    assert row.prompt == [U("q")] and row.chosen == row.rejected == [A("same")]


def test_chosen_messages_alias_with_typed_content_parts():
    def parts(role, text):
        return {"role": role, "content": [{"type": "text", "value": text}],
                "loss_weight": 1.0 if role == "assistant" else 0.0}  # LLaMA-Factory v1's weights

    rec = {"chosen_messages": [parts("system", "s"), parts("user", "q"), parts("assistant", "yes")],
           "rejected_messages": [parts("system", "s"), parts("user", "q"), parts("assistant", "no")]}
    assert convert(rec) == ("preference", PreferenceRow([S("s"), U("q")], [A("yes")], [A("no")]))


def test_prompt_completion_text_and_conversational_and_unpaired_and_prompt_only():
    assert convert({"prompt": "p", "completion": "c"}) == ("prompt-completion", SFTRow([U("p"), A("c")], 1, chat=False))
    assert convert({"prompt": [U("p")], "completion": [A("c")]})[1] == SFTRow([U("p"), A("c")], 1)
    assert convert({"prompt": "p", "completion": "c", "label": False}) == (
        "unpaired", UnpairedRow([U("p")], [A("c")], False, chat=False))
    assert convert({"prompt": [U("p")]}) == ("prompt-only", PromptRow([U("p")]))


def test_sharegpt_preference_keeps_system_and_multi_turn_history():
    rec = {"conversations": [{"from": "system", "value": "sys"}, {"from": "human", "value": "q1"},
                             {"from": "gpt", "value": "a1"}, {"from": "human", "value": "q2"}],
           "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}}
    assert convert(rec) == ("sharegpt", PreferenceRow([S("sys"), U("q1"), A("a1"), U("q2")], [A("good")], [A("bad")]))


def test_sharegpt_sft_trains_every_assistant_turn_and_adds_the_system_column():
    rec = {"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
                             {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}], "system": "sys"}
    fmt, row = convert(rec)
    assert fmt == "sharegpt"
    assert row == SFTRow([S("sys"), U("q1"), A("a1"), U("q2"), A("a2")], num_prompt=2)


def test_messages_with_label_is_unpaired_on_the_last_turn():
    rec = {"messages": [U("q1"), A("a1"), U("q2"), A("a2")], "label": True}
    assert convert(rec) == ("messages", UnpairedRow([U("q1"), A("a1"), U("q2")], [A("a2")], True))


def test_tool_roles_are_normalised():
    rec = {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{}"},
                             {"from": "observation", "value": "r"}, {"from": "gpt", "value": "a"}]}
    _, row = convert(rec)
    assert [m["role"] for m in row.messages] == ["user", "assistant", "tool", "assistant"]


def test_unknown_role_is_a_bad_value_naming_the_field():
    with pytest.raises(RowProblem) as e:
        convert({"conversations": [{"from": "narrator", "value": "q"}]})
    assert (e.value.kind, e.value.field) == ("bad_value", "conversations[0].from")


def test_alpaca_joins_instruction_and_input_and_keeps_history():
    rec = {"instruction": "Translate", "input": "chat", "output": "cat", "system": "sys",
           "history": [["hi", "hello"]]}
    fmt, row = convert(rec)
    assert fmt == "alpaca"
    assert row == SFTRow([S("sys"), U("hi"), A("hello"), U("Translate\n\nchat"), A("cat")], num_prompt=4)
    assert convert({"instruction": "Say hi", "input": "", "output": "hi"})[1].messages[0] == U("Say hi")


def test_alpaca_preference():
    fmt, row = convert({"instruction": "Pick", "input": "", "chosen": "a", "rejected": "b"})
    assert (fmt, row) == ("alpaca", PreferenceRow([U("Pick")], [A("a")], [A("b")]))


def test_question_answer():
    assert convert({"question": "1+1?", "answer": "so 2\n#### 2"}) == (
        "question-answer", SFTRow([U("1+1?"), A("so 2\n#### 2")], 1))


def test_trl_language_modelling_text_trains_every_token_as_sft_trainer():
    """TRL's standard language-modelling rows ({"text"}) were refused by sft ("cannot tell the format"): SFTTrainer
    trains them as text + EOS with every token a target; so does this plain-text row with an empty prompt."""
    from alignlab.data.tokenize import tokenize_sft
    from alignlab.models.load import load_tokenizer

    rec = {"text": "The quick brown fox jumps over the lazy dog."}
    assert detect_format(rec) == "text" and detect_format({"text": "a", "id": 3}) is None
    row = CONVERTERS["text"](rec)
    assert isinstance(row, SFTRow) and not row.chat and row.messages[1]["content"] == rec["text"]
    tok = load_tokenizer("tiny-random")
    t = tokenize_sft(row, tok, 64)
    assert t.input_ids == tok(rec["text"] + tok.eos_token).input_ids and t.labels == t.input_ids
    with pytest.raises(RowProblem, match="expected text"):
        CONVERTERS["text"]({"text": 3})


def test_hh_transcript_split_into_turns():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: fine"
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: go away"
    fmt, row = convert({"chosen": chosen, "rejected": rejected})
    assert fmt == "hh"
    assert row == PreferenceRow([U("hi"), A("hello"), U("how are you?")], [A("fine")], [A("go away")])


def test_hh_pairs_that_disagree_before_the_last_answer_are_reported():
    with pytest.raises(RowProblem) as e:
        convert({"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: bye\n\nAssistant: b"})
    assert (e.value.kind, e.value.field) == ("prompt_mismatch", "rejected")
    with pytest.raises(RowProblem, match="does not end with an Assistant"):
        hh_turns("\n\nHuman: hi\n\nAssistant: a\n\nHuman: more?", "chosen")


@pytest.mark.parametrize("rec,kind,field", [
    ({"prompt": "p", "chosen": "c", "rejected": 3}, "wrong_type", "rejected"),
    ({"chosen": [A("a")], "rejected": [A("b")], "margin": "big"}, "wrong_type", "margin"),
    ({"instruction": "i", "output": None}, "missing_field", "output"),
    ({"conversations": [{"from": "human"}]}, "missing_field", "conversations[0].value"),
    ({"messages": [U("q"), {"role": "assistant", "content": 5}]}, "wrong_type", "messages[1].content"),
    ({"prompt": "p", "completion": "c", "label": "maybe"}, "bad_value", "label"),
])
def test_mistyped_and_missing_fields_name_the_field(rec, kind, field):
    with pytest.raises(RowProblem) as e:
        convert(rec)
    assert (e.value.kind, e.value.field) == (kind, field)


def test_undetectable_record():
    assert detect_format({"foo": 1}) is None and detect_format([1, 2]) is None


def test_tool_schemas_go_into_the_system_turn():
    """A tool-call conversation (LLaMA-Factory's glaive files: `tools` as JSON text) trains calls to tools the
    model is shown: the schemas follow the preamble in the system turn, after the record's own system text."""
    from alignlab.data.formats import TOOLS_PREAMBLE

    schema = '{"name": "add", "description": "Add two numbers", "parameters": {"type": "object"}}'
    rec = {"conversations": [{"from": "human", "value": "2 + 3?"},
                             {"from": "function_call", "value": '{"name": "add", "arguments": {"a": 2, "b": 3}}'},
                             {"from": "observation", "value": "5"}, {"from": "gpt", "value": "5"}],
           "system": "Be brief.", "tools": f"[{schema}]"}
    fmt, row = convert(rec)
    assert fmt == "sharegpt" and isinstance(row, SFTRow)
    assert row.messages[0] == S(f"Be brief.\n\n{TOOLS_PREAMBLE}\n{schema}")
    assert [m["role"] for m in row.messages] == ["system", "user", "assistant", "tool", "assistant"]
    _, no_system = convert({k: v for k, v in rec.items() if k != "system"})
    assert no_system.messages[0] == S(f"{TOOLS_PREAMBLE}\n{schema}")
    _, none = convert({**rec, "tools": "[]"})
    assert none.messages[0] == S("Be brief.")
    for bad, problem in (("[{", "bad_value"), ('"add"', "wrong_type")):
        with pytest.raises(RowProblem) as e:
            convert({**rec, "tools": bad})
        assert (e.value.kind, e.value.field) == (problem, "tools")


def test_a_text_prompt_beside_conversations_that_hold_it_is_their_implicit_prompt():
    # UltraFeedback-binarized's layout: the prompt was put before the lists again, and the user turn trained as part
    # of each answer (TRL's maybe_extract_prompt takes the implicit prompt here)
    q = "What color is the sky?"
    rec = {"prompt": q, "chosen": [U(q), A("It is blue.")], "rejected": [U(q), A("It is green.")]}
    assert convert(rec)[1] == PreferenceRow([U(q)], [A("It is blue.")], [A("It is green.")])
    with pytest.raises(RowProblem, match="not the last user turn") as e:
        convert({**rec, "prompt": "Another question?"})
    assert e.value.field == "prompt"
    # lists holding the answers alone still take the text prompt
    assert convert({"prompt": q, "chosen": [A("a")], "rejected": [A("b")]})[1] == PreferenceRow([U(q)], [A("a")],
                                                                                                 [A("b")])


@pytest.mark.parametrize("rec", [
    {"prompt": [U("q")], "chosen": [U("a")], "rejected": [A("b")]},  # an answer that is a user turn
    {"conversations": [U("q")], "chosen": {"from": "human", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}},
    {"chosen": [U("q"), A("x"), U("q2 a"), A("A")], "rejected": [U("q"), A("x"), U("q2 b"), A("B")]},
])
def test_an_answer_holding_a_user_turn_is_a_problem_not_trained_as_the_models_words(rec):
    from alignlab.data.rows import validate_row

    problems = validate_row(convert(rec)[1])
    assert problems and {k for k, _, _ in problems} == {"prompt_mismatch"}
    assert {f for _, f, _ in problems} <= {"chosen", "rejected"}


@pytest.mark.parametrize("margin", [float("nan"), float("inf"), True])
def test_a_margin_must_be_a_finite_number(margin):
    # nan passed, then the reward model stopped at step 1 with a nan loss and advice about the learning rate
    with pytest.raises(RowProblem) as e:
        convert({"prompt": "q", "chosen": "a", "rejected": "b", "margin": margin})
    assert e.value.field == "margin"
