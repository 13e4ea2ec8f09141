"""Self-instruct (Wang et al. 2023, "Self-Instruct: Aligning Language Models with Self-Generated Instructions",
Sec. 2.2; the recipe Stanford Alpaca scaled up): grow an instruction dataset from a few seed tasks.

Round by round: (1) instruction generation: a chat request shows `in_context` tasks sampled from the pool
(human seed tasks and, once there are some, machine-made ones, as the paper's 6 + 2) numbered "Task 1: ...",
and asks for the next task; (2) filtering: stated heuristics drop unusable instructions (below), then an
instruction whose ROUGE-L F-measure with any instruction already in the pool exceeds `rouge_threshold`
(0.7 in the paper) is a near-duplicate and is dropped (scored with Google's `rouge-score` package); (3)
instance generation: each kept instruction is sent back for an "Input:" (optional) and an "Output:"; empty
or degenerate instances are dropped. The paper's separate classification-task branch (output-first
generation) is not done: every task is generated input-first.

Heuristics (the paper's, Sec. 2.2 "Filtering and postprocessing", and our length bounds): an instruction is
dropped when it has fewer than `min_words` or more than `max_words` words; names something a text model
cannot see or produce (image, picture, graph, file, map, draw, plot, video, audio, music, flowchart,
diagram, ... as the paper's keyword list); starts with punctuation or a non-ASCII character; or starts
with "Write a program" (the paper drops these as ambiguous about input). An instance is dropped when its
output is empty, repeats the instruction, or repeats its input. Every stage is counted.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.errors import AlignlabError

__all__ = ["BLOCKED_WORDS", "SEED_TASKS", "Task", "instruction_problem", "load_seed_tasks", "parse_instance",
           "parse_instructions", "self_instruct"]

SEED_TASKS = Path(__file__).with_name("seed_tasks.jsonl")
BLOCKED_WORDS = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
                 "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram")

Chat = Callable[[list[list[dict[str, str]]]], list[Any]]  # conversations -> replies (str or an error object)


@dataclass
class Task:
    """One instruction with its instance (Alpaca fields)."""

    instruction: str
    input: str = ""
    output: str = ""
    origin: str = "machine"
    """seed or machine."""

    def alpaca(self) -> dict[str, str]:
        return {"instruction": self.instruction, "input": self.input, "output": self.output}


def load_seed_tasks(path: str | Path | None = None) -> list[Task]:
    """Seed tasks from a JSONL/JSON file of {instruction, input?, output?} records (default: the shipped set), read
    by the data layer's reader (a BOM, U+2028 inside strings, problems named by line)."""
    from alignlab.data.readers import read_records
    from alignlab.data.rows import Origin

    p = Path(path) if path else SEED_TASKS
    if not p.is_file():
        raise AlignlabError(f"self-instruct: seed file {p} does not exist")
    out = read_records(p)
    if out.problems:
        first = out.problems[0]
        raise AlignlabError(f"{p}: not valid JSON/JSONL (line {first.line}: {first.message})")
    tasks = []
    for rec in out.records:
        r = rec.value
        if not isinstance(r, dict) or not isinstance(r.get("instruction"), str) or not r["instruction"].strip():
            raise AlignlabError(f"{Origin(str(p), rec.index, rec.line)}: needs a non-empty string field 'instruction'")
        tasks.append(Task(r["instruction"].strip(), str(r.get("input") or ""), str(r.get("output") or ""), "seed"))
    if not tasks:
        raise AlignlabError(f"{p}: no seed tasks")
    return tasks


def instruction_prompt(examples: Sequence[Task]) -> list[dict[str, str]]:
    """The chat request for one new instruction: the in-context tasks numbered, then "Task N+1:"."""
    lines = [f"Task {i + 1}: {t.instruction}" for i, t in enumerate(examples)]
    text = ("Come up with a new, diverse task instruction for an AI assistant, different from the ones below. "
            "Reply with the new task only, on one line.\n\n" + "\n".join(lines) + f"\nTask {len(lines) + 1}:")
    return [{"role": "user", "content": text}]


def instance_prompt(instruction: str) -> list[dict[str, str]]:
    text = ("Complete the task. If it needs an input, first write 'Input:' and a suitable input; then write "
            f"'Output:' and the answer.\n\nTask: {instruction}")
    return [{"role": "user", "content": text}]


def parse_instructions(reply: str) -> list[str]:
    """New instructions in a reply: every "Task k: ..." line, or else the first non-empty line."""
    found = [m.strip() for m in re.findall(r"(?im)^\s*task\s*\d+\s*[:.]\s*(.+)$", reply)]
    if not found:
        first = next((ln.strip() for ln in reply.splitlines() if ln.strip()), "")
        found = [first] if first else []
    return [re.sub(r"\s+", " ", f).strip() for f in found if f.strip()]


def parse_instance(reply: str) -> tuple[str, str]:
    """(input, output) from "Input: ... Output: ..." (either marker optional); no markers: ("", reply)."""
    # the last "Output:" opening a line (an input that mentions "output:" mid-line is not cut there), else the last
    m = ([None] + (list(re.finditer(r"(?im)^\s*output\s*:[ \t]*", reply))
                   or list(re.finditer(r"(?i)output\s*:[ \t]*", reply))))[-1]
    output = reply[m.end():].strip() if m else reply.strip()
    head = reply[: m.start()] if m else ""
    i = re.search(r"(?is)input\s*:\s*(.*)$", head)
    inp = i.group(1).strip() if i else ""
    return ("" if inp.lower() in ("", "none", "n/a", "<noinput>", "no input") else inp), output


def instruction_problem(text: str, min_words: int, max_words: int) -> str | None:
    """Why a generated instruction is unusable (a stage name for the counts), or None when it passes."""
    words = text.split()
    if len(words) < min_words:
        return "too_short"
    if len(words) > max_words:
        return "too_long"
    low = text.lower()
    if any(re.search(rf"\b{re.escape(w)}\b", low) for w in BLOCKED_WORDS):
        return "blocked_word"
    if not text[0].isascii() or not text[0].isalnum():
        return "bad_start"
    if low.startswith("write a program"):
        return "write_a_program"
    return None


@dataclass
class SelfInstructResult:
    tasks: list[Task]
    """Machine-made tasks that passed every filter, in order of creation."""
    counts: Counter = field(default_factory=Counter)
    """Per stage: requests, generated, dropped_<reason>, dropped_rouge, kept_instructions, dropped_instance_<reason>, written."""


def _rouge():
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise AlignlabError("self-instruct needs the rouge-score package: pip install 'alignlab[extras]'") from None
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def self_instruct(chat: Chat, seeds: Sequence[Task], *, target: int, max_requests: int, batch: int = 8,
                  in_context: int = 8, machine_in_context: int = 2, rouge_threshold: float = 0.7,
                  min_words: int = 3, max_words: int = 150, seed: int = 0,
                  log: Callable[[str], None] | None = None) -> SelfInstructResult:
    """Grow `target` machine-made tasks from `seeds` with at most `max_requests` instruction requests."""
    scorer = _rouge()
    rng = random.Random(seed)
    pool = [t.instruction for t in seeds]
    made: list[Task] = []
    counts: Counter = Counter()
    while len(made) < target and counts["requests"] < max_requests:
        n = min(batch, max_requests - counts["requests"])
        convs = []
        for _ in range(n):
            machine = rng.sample(made, min(machine_in_context, len(made)))
            human = rng.sample(list(seeds), min(in_context - len(machine), len(seeds)))
            convs.append(instruction_prompt(human + machine))
        counts["requests"] += n
        fresh: list[str] = []
        for reply in chat(convs):
            if not isinstance(reply, str):
                counts["request_failed"] += 1
                continue
            for ins in parse_instructions(reply):
                counts["generated"] += 1
                why = instruction_problem(ins, min_words, max_words)
                if why is None and max((scorer.score(p, ins)["rougeL"].fmeasure for p in pool + fresh),
                                       default=0.0) > rouge_threshold:
                    why = "rouge"
                if why:
                    counts[f"dropped_{why}"] += 1
                else:
                    fresh.append(ins)
        counts["kept_instructions"] += len(fresh)
        for ins, reply in zip(fresh, chat([instance_prompt(i) for i in fresh])):
            inp, out = parse_instance(reply) if isinstance(reply, str) else ("", "")
            why = ("empty_output" if not out else "output_is_instruction" if out.strip() == ins
                   else "output_is_input" if inp and out.strip() == inp.strip() else None)
            if why:
                counts[f"dropped_instance_{why}"] += 1
                continue
            made.append(Task(ins, inp, out))
            pool.append(ins)
        if log:
            log(f"self-instruct: {counts['requests']} requests, {len(made)}/{target} tasks")
    counts["written"] = len(made[:target])
    return SelfInstructResult(made[:target], counts)
