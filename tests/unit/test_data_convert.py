"""data/convert.py: rows written in TRL format read back as the same rows, for every task, plain and chat."""

from alignlab.data.convert import to_record, write_records
from alignlab.data.rows import PreferenceRow, PromptRow, SFTRow, UnpairedRow
from alignlab.data.sources import load_rows

U, A = {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}
B = {"role": "assistant", "content": "Go away."}


def roundtrip(tmp_path, row, task):
    path = write_records(tmp_path / f"{task}.jsonl", [to_record(row)])
    return load_rows(path, task=task).rows[0]


def test_every_row_kind_round_trips(tmp_path):
    rows = [(PreferenceRow([U], [A], [B], chat=True, margin=1.5), "preference"),
            (PreferenceRow([U], [A], [B], chat=False), "preference"),
            (SFTRow([U, A], 1, chat=False), "sft"),
            (SFTRow([U, A, {"role": "user", "content": "More?"}, B], 1, chat=True), "sft"),
            (UnpairedRow([U], [B], False, chat=True), "unpaired"),
            (PromptRow([U], chat=False, answer="42"), "prompt")]
    for row, task in rows:
        back = roundtrip(tmp_path, row, task)
        back.origin = None
        assert back == row, (task, to_record(row))
    assert to_record(rows[1][0]) == {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}
    assert "messages" in to_record(rows[3][0])


def test_a_file_holds_one_shape_so_every_row_reads_back(tmp_path):
    """A reader detects the format from the first record: when one conversation trains several assistant turns
    (messages), a single-turn one is written as messages too (it reads back the same); a row that trains only
    its last turn after earlier assistant turns cannot share such a file."""
    import pytest

    from alignlab.data.convert import to_records
    from alignlab.errors import AlignlabError

    multi = SFTRow([U, A, {"role": "user", "content": "More?"}, B], 1, chat=True)
    single = SFTRow([U, A], 1, chat=True)
    path = write_records(tmp_path / "mixed.jsonl", to_records([multi, single]))
    import json

    assert [set(json.loads(line)) for line in path.read_text().splitlines()] == [{"messages"}, {"messages"}]
    back = load_rows(path, task="sft").rows
    assert len(back) == 2
    for row, original in zip(back, (multi, single)):
        row.origin = None
        assert row == original
    last_turn_only = SFTRow([U, A, {"role": "user", "content": "More?"}, B], 3, chat=True)
    with pytest.raises(AlignlabError, match="row 1"):
        to_records([multi, last_turn_only])
    assert to_records([single, last_turn_only]) == [to_record(single), to_record(last_turn_only)]


def test_written_files_get_a_plain_files_mode(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = write_records(tmp_path / "out.jsonl", [to_record(SFTRow([U, A], 1))])
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_context_turn_stays_untrained_when_read_back(tmp_path):
    # written as "train": false, which the reader ignored: the context answer was trained after the round trip
    import json

    src = tmp_path / "lw.jsonl"
    src.write_text(json.dumps({"messages": [{"role": "user", "content": "q1"},
                                            {"role": "assistant", "content": "context", "loss_weight": 0},
                                            {"role": "user", "content": "q2"},
                                            {"role": "assistant", "content": "trained"}]}) + "\n")
    (row,) = load_rows(str(src)).rows
    back = roundtrip(tmp_path, row, "sft")
    assert back.messages == row.messages and back.num_prompt == row.num_prompt
    assert [m.get("train", True) for m in back.messages if m["role"] == "assistant"] == [False, True]


def test_a_prompt_records_other_columns_survive_conversion(tmp_path):
    """convert wrote prompt and answer only: a code reward's tests, a difficulty were gone. Keys that name another
    format (question, completion, ...) stay out, so the record still reads back as a prompt."""
    src = write_records(tmp_path / "in.jsonl", [{"prompt": "Write add.", "tests": ["assert add(1, 2) == 3"],
                                                 "difficulty": 2, "answer": "3"}])
    rows = load_rows(src, task="prompt").rows
    rec = to_record(rows[0])
    assert rec == {"prompt": "Write add.", "tests": ["assert add(1, 2) == 3"], "difficulty": 2, "answer": "3"}
    back = load_rows(write_records(tmp_path / "out.jsonl", [rec]), task="prompt")
    assert back.format == "prompt-only" and back.rows[0].fields == rows[0].fields
    qa = PromptRow([U], chat=False, answer="4", fields={"question": "Hi?", "completion": "x", "level": 1})
    assert to_record(qa) == {"prompt": "Hi?", "level": 1, "answer": "4"}
