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
