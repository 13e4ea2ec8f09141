"""Self-instruct: parsing, the stated heuristics, the ROUGE-L filter and the stage counts, with a scripted
chat backend standing in for the generator (an external model, not our code)."""

import pytest

from alignlab.data.self_instruct import (
    Task,
    instruction_problem,
    load_seed_tasks,
    parse_instance,
    parse_instructions,
    self_instruct,
)
from alignlab.errors import AlignlabError


def test_shipped_seed_tasks_load():
    seeds = load_seed_tasks()
    assert len(seeds) >= 20 and all(t.origin == "seed" and t.instruction for t in seeds)
    assert len({t.instruction for t in seeds}) == len(seeds)


def test_parsers():
    assert parse_instructions("Task 9: Name two rivers in Spain.\nTask 10: Spell 'cat' backwards.") == [
        "Name two rivers in Spain.", "Spell 'cat' backwards."]
    assert parse_instructions("\n  Describe  a sunset.\nmore") == ["Describe a sunset."]
    assert parse_instructions("   ") == []
    assert parse_instance("Input: 3, 1, 2\nOutput: 1, 2, 3") == ("3, 1, 2", "1, 2, 3")
    assert parse_instance("Input: none\nOutput: Paris.") == ("", "Paris.")
    # an input mentioning "output:" was cut there (the first match anywhere)
    assert parse_instance("Input: What is the expected output: of print(2+2)?\nOutput: 4") == (
        "What is the expected output: of print(2+2)?", "4")
    assert parse_instance("Input: 5 Output: 10") == ("5", "10")
    assert parse_instance("Just the answer.") == ("", "Just the answer.")


@pytest.mark.parametrize("text,why", [
    ("Hi there", "too_short"), ("word " * 151, "too_long"), ("Draw a cat in the snow", "blocked_word"),
    ("Describe this image of a dog", "blocked_word"), ("- List three fruits please", "bad_start"),
    ("Écris un poème sur la mer", "bad_start"), ("Write a program that sorts numbers", "write_a_program"),
    ("List three fruits that are red", None), ("Explain the mapping between keys", None)])
def test_heuristics(text, why):
    assert instruction_problem(text, 3, 150) == why


def test_pipeline_counts_and_rouge_filter():
    """Round 1 (batch 4): replies are a near-copy of a seed (ROUGE-L 0.93 > 0.7: dropped), a blocked word,
    and two new tasks; the instance stage then gets one empty output (dropped) and one good one.
    Round 2: the same new task again (ROUGE-L 1 with the pooled task: dropped) and a fresh one (kept)."""
    seeds = [Task("Give three tips for remembering people's names.", origin="seed"),
             Task("Translate the sentence into French.", origin="seed")]
    scripted = iter([
        ["Task 3: Give three tips for remembering people's faces.", "Task 3: Draw a map of your town.",
         "Task 3: Name the largest planet in the solar system.", "Task 3: Suggest a name for a pet turtle."],
        ["Output: Jupiter.", "Output: "],
        ["Task 3: Name the largest planet in the solar system.", "Task 3: Count the vowels in a word."],
        ["Input: banana\nOutput: 3"],
    ])
    seen = []

    def chat(convs):
        seen.append(convs)
        return next(scripted)

    res = self_instruct(chat, seeds, target=2, max_requests=6, batch=4, in_context=2, machine_in_context=1)
    assert [t.alpaca() for t in res.tasks] == [
        {"instruction": "Name the largest planet in the solar system.", "input": "", "output": "Jupiter."},
        {"instruction": "Count the vowels in a word.", "input": "banana", "output": "3"}]
    c = res.counts
    assert (c["requests"], c["generated"], c["dropped_rouge"], c["dropped_blocked_word"]) == (6, 6, 2, 1)
    assert (c["kept_instructions"], c["dropped_instance_empty_output"], c["written"]) == (3, 1, 2)
    assert "Task 2:" in seen[0][0][0]["content"] and seen[2][0][0]["content"].count("Task ") == 3
    assert "Name the largest planet" in " ".join(m["content"] for conv in seen[2] for m in conv)  # machine task


def test_bad_seed_file(tmp_path):
    p = tmp_path / "seeds.jsonl"
    p.write_text('{"instruction": "ok task here"}\n\n{"input": "no instruction"}\n')
    with pytest.raises(AlignlabError, match=r"seeds.jsonl:3 \(record 1\)"):  # its line, past the blank one
        load_seed_tasks(p)


def test_seed_files_are_read_by_the_data_layers_reader(tmp_path):
    """A BOM and a U+2028 inside a JSON string (a line break to str.splitlines, not to JSON lines) both load."""
    import json

    from alignlab.data.self_instruct import load_seed_tasks

    p = tmp_path / "seeds.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + (json.dumps({"instruction": "Join\u2028these lines."}, ensure_ascii=False)
                                      + "\n" + json.dumps({"instruction": "Name three fruits."}) + "\n").encode())
    assert [t.instruction for t in load_seed_tasks(p)] == ["Join\u2028these lines.", "Name three fruits."]
