"""Canonical rows: the one internal shape of every dataset, and the problems found while building them.

Prompts are always lists of messages (`{"role", "content"}`); plain-text data keeps `chat=False`
and holds its text as one user message (prompt) and one assistant message (completion), so the
tokeniser knows to skip the chat template and append EOS instead.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Any, Union

from alignlab.errors import AlignlabError

Message = dict[str, Any]  # {"role": "system"|"user"|"assistant"|"tool", "content": str}; "train": False, a context turn

ROLES = ("system", "user", "assistant", "tool")

# Problem kinds, in the order a report lists them.
PROBLEM_KINDS = (
    "invalid_utf8",  # bytes that are not UTF-8 (or lone surrogates)
    "invalid_json",  # a line / file that is not valid JSON (e.g. truncated)
    "missing_field",  # a field the format needs is absent
    "wrong_type",  # a field has the wrong type (e.g. a number where text is expected)
    "bad_value",  # a field has an unusable value (unknown role, vote, label)
    "empty_prompt",  # no non-empty prompt text
    "empty_completion",  # a completion / chosen / rejected / assistant answer that is empty
    "identical_pair",  # chosen == rejected: no preference signal
    "prompt_mismatch",  # chosen and rejected transcripts disagree before the last answer (HH)
)


@dataclass(frozen=True)
class Origin:
    """Where a row came from: file (or hub id), 0-based record index, 1-based line when the file has lines."""

    file: str
    index: int
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where} (record {self.index})"


@dataclass
class SFTRow:
    """messages[:num_prompt] are context only; every assistant message at index >= num_prompt is trained."""

    messages: list[Message]
    num_prompt: int
    chat: bool = True
    origin: Origin | None = None
    field: str = dataclasses.field(default="messages", compare=False)
    """The record's field that holds the trained answer(s) (output, answer, completion, ...): where an empty
    answer is reported."""


@dataclass
class PreferenceRow:
    """chosen/rejected are the final assistant turn(s) after the shared prompt."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    chat: bool = True
    margin: float | None = None
    origin: Origin | None = None


@dataclass
class UnpairedRow:
    """One completion with a desirable (True) / undesirable (False) label, as KTO uses."""

    prompt: list[Message]
    completion: list[Message]
    label: bool
    chat: bool = True
    origin: Origin | None = None


@dataclass
class PromptRow:
    """A prompt alone (online RL, generation); `answer` is a reference for verifiable rewards."""

    prompt: list[Message]
    chat: bool = True
    answer: str | None = None
    origin: Origin | None = None
    fields: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)
    """The record's other columns (all but prompt and completion), given to rewards as keywords (TRL's
    convention): a code reward's `tests`, a difficulty, a second reference."""


Row = Union[SFTRow, PreferenceRow, UnpairedRow, PromptRow]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one record: kind (see PROBLEM_KINDS), where, which field, what."""

    kind: str
    file: str
    index: int | None
    line: int | None
    field: str | None
    message: str

    def location(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.index is not None:
            where += f" (record {self.index})"
        return where + (f" field '{self.field}'" if self.field else "")

    def __str__(self) -> str:
        return f"{self.location()}: {self.kind}: {self.message}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "file": self.file, "line": self.line, "index": self.index,
                "field": self.field, "message": self.message}


class RowProblem(Exception):
    """Raised by converters for a record that cannot become a row; sources turns it into a Problem."""

    def __init__(self, kind: str, field: str | None, message: str):
        super().__init__(message)
        self.kind, self.field, self.message = kind, field, message


class DataError(AlignlabError):
    """Bad rows found with on_bad_row='error'; `problems` holds every one, the message the first few."""

    def __init__(self, problems: list[Problem], source: str, shown: int = 10):
        self.problems = problems
        counts = Counter(p.kind for p in problems)
        summary = ", ".join(f"{k}: {n}" for k, n in counts.most_common())
        lines = [f"{len(problems)} problem(s) in {source} ({summary}):"]
        lines += [f"  {p}" for p in problems[:shown]]
        if len(problems) > shown:
            lines.append(f"  ... and {len(problems) - shown} more")
        lines.append("  (pass on_bad_row='skip' / --on-bad-row skip to drop these rows and go on)")
        super().__init__("\n".join(lines))


def text_of(messages: list[Message]) -> str:
    """All message contents joined: the plain text of a chat=False prompt or completion."""
    return "".join(m["content"] for m in messages)


def validate_row(row: Row, allow_empty_response: bool = False) -> list[tuple[str, str, str]]:
    """Checks every row kind needs before training: (kind, field, message) for each failure.

    `allow_empty_response`: a judged pair (two given responses and votes) may have one empty side.
    """
    out: list[tuple[str, str, str]] = []
    prompt = row.messages[: row.num_prompt] if isinstance(row, SFTRow) else row.prompt
    if not any(m["content"].strip() for m in prompt if m["role"] != "system") and not isinstance(row, SFTRow):
        out.append(("empty_prompt", "prompt", "the prompt has no non-empty user text"))
    if isinstance(row, SFTRow):
        trained = [m for m in row.messages[row.num_prompt:] if m["role"] == "assistant"]
        if row.chat and row.num_prompt == 0 and trained:
            # no turn to render before it (chat templates refuse an empty conversation, and SmolLM2's would put
            # its default system turn inside the trained span); LLaMA-Factory refuses such rows too
            out.append(("empty_prompt", row.field, "the conversation opens with an assistant turn: add the user (or "
                                                   "system) turn it answers"))
        if not trained:
            out.append(("empty_completion", row.field, "no assistant message to train on"))
        elif any(not m["content"].strip() for m in trained):
            out.append(("empty_completion", row.field, "an assistant message is empty"))
    elif isinstance(row, PreferenceRow):
        for name in ("chosen", "rejected"):
            if not text_of(getattr(row, name)).strip() and not allow_empty_response:
                out.append(("empty_completion", name, f"'{name}' is empty"))
        if row.chosen == row.rejected and text_of(row.chosen).strip():
            out.append(("identical_pair", "chosen", "chosen and rejected are identical"))
        out += [p for name in ("chosen", "rejected") if (p := answer_turns(getattr(row, name), name))]
    elif isinstance(row, UnpairedRow):
        if not text_of(row.completion).strip():
            out.append(("empty_completion", "completion", "the completion is empty"))
        if problem := answer_turns(row.completion, "completion"):
            out.append(problem)
    return out


def answer_turns(turns: list[Message], name: str) -> tuple[str, str, str] | None:
    """A completion is the model's answer: assistant turns (tool replies between them), ending with one; a user
    turn in it would be trained as the model's own words."""
    for i, m in enumerate(turns):
        if m["role"] not in ("assistant", "tool"):
            return ("prompt_mismatch", name, f"'{name}' turn {i} is a {m['role']} turn: an answer holds assistant "
                                             "turns only (dialogues that differ before the last answer are no pair)")
    if turns and turns[-1]["role"] != "assistant":
        return ("prompt_mismatch", name, f"'{name}' must end with an assistant turn")
    return None
