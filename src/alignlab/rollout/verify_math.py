"""The `math` reward: extract a completion's final answer and check it against the reference by
mathematical equivalence (``1/2`` = ``0.5`` = ``\\frac{1}{2}``, ``x^2+1`` = ``1+x^2``), not string match.

Extraction (ours, so the rule is stated in one place): the last ``\\boxed{...}`` / ``\\fbox{...}``
(nested braces allowed), else the text after the last ``####`` (GSM8K), else what follows the last
"answer is" / "answer:", else the last number in the text. The reference is read the same way, so a
full GSM8K solution ("... #### 72") and a bare answer ("72", "\\frac{3}{4}") both work.

Equivalence: the HuggingFace ``math-verify`` package (sympy-based LaTeX/expression parser and
comparator) decides; a plain number followed by words ("18 dollars", "1,000 apples") is compared
numerically first, so GSM8K answers keep working however the model phrases the unit.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from alignlab.errors import AlignlabError

__all__ = ["extract_final_answer", "make_math_reward", "math_equal"]

MAX_ANSWER_CHARS = 300
"""Longer extracted answers score 0 unparsed: parsing is unbounded in time off the main thread."""

# A number (thousands separated by commas only in groups of three, so "1,2" is not 12) and maybe a unit: words of
# two or more letters after a space ("18 dollars"), or written on, a word of three or more ("18dollars") or a common
# two-letter unit or ordinal ("5cm", "20GB", "2nd"); never a lone letter, a constant or two letters that read as a
# product of variables ("2x", "3i", "4 pi", "5xy" are not 2, 3, 4, 5).
_UNIT_ON = r"(?:[A-Za-z]{3,}|(?i:cm|mm|km|kg|mg|ml|ft|in|lb|oz|hr|gb|mb|kb|st|nd|rd|th|am|pm)\b)"
_PLAIN_NUMBER = re.compile(r"^\s*\\?\$?\s*(-?(?:\d{1,3}(?:,\d{3})+|\d*)(?:\.\d+)?)\s*(?:\\%|%)?"
                           rf"(?:(?:\s+|(?={_UNIT_ON}))(?!(?:pi|e|i)\b)[A-Za-z]{{2,}}\.?)*\s*$")


def _braced(text: str, start: int) -> str | None:
    """The content of the brace group opening at ``text[start] == '{'``, or None when unbalanced."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i]
    return None


def extract_final_answer(text: str) -> str | None:
    """The final answer in ``text`` as a string (see the module docstring for the order), or None."""
    last = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if last >= 0:
        inner = _braced(text, text.index("{", last))
        if inner is not None and inner.strip():
            return inner.strip()
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip().splitlines()
        if tail and tail[0].strip():
            return tail[0].strip().rstrip(".")
    phrase = list(re.finditer(r"answer\s*(?:is|:)\s*(.+)", text, flags=re.IGNORECASE))
    if phrase:
        found = phrase[-1].group(1).strip().rstrip(".")
        if found:
            return found.strip("$ ")
    # commas only between groups of three digits: "$18, every day" ends in 18, not "18,"
    numbers = re.findall(r"-?\$?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\$?\d+(?:\.\d+)?|-?\.\d+", text)
    return numbers[-1].replace("$", "") if numbers else None


def _plain_number(answer: str) -> float | None:
    m = _PLAIN_NUMBER.match(answer)
    if not m or not any(ch.isdigit() for ch in m.group(1)):
        return None
    try:
        return float(m.group(1).replace(",", ""))
    except ValueError:
        return None


def numbers_equal(a: float, b: float) -> bool:
    """Equal final answers: within 1e-6, absolute (math-verify rounds floats to 6 decimals). A tolerance relative to
    the reference's size would pass GSM8K's 1450001 for 1450000."""
    return abs(a - b) <= 1e-6


def math_equal(prediction: str | None, reference: str | None) -> bool:
    """True when two extracted answers are mathematically equal (numbers first, then math-verify)."""
    if not prediction or not reference or len(prediction) > MAX_ANSWER_CHARS:
        return False
    a, b = _plain_number(prediction), _plain_number(reference)
    if a is not None and b is not None:
        return numbers_equal(a, b)
    try:
        from math_verify import parse, verify
    except ImportError as e:  # a declared dependency; say how to get it rather than scoring 0 silently
        raise AlignlabError("reward math: the math-verify package is missing (pip install math-verify)") from e
    # math-verify times out with signal.alarm, which only works on the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold = parse("\\boxed{" + reference + "}", parsing_timeout=timeout)
    pred = parse("\\boxed{" + prediction + "}", parsing_timeout=timeout)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout))


def reference_answer(text: str) -> str:
    """A row's reference answer: its marked final answer (\\boxed{}, ####, "answer is"), else the whole text. A
    bare reference is the answer as written (MATH's "\\frac{2}{3}"), never its last number ("3"), which the
    last-number fallback of `extract_final_answer` would take: that fallback is for completions."""
    marked = "\\boxed{" in text or "\\fbox{" in text or "####" in text or re.search(r"answer\s*(?:is|:)", text, re.I)
    return (extract_final_answer(text) if marked else None) or text.strip().strip("$ ").strip()


def make_math_reward(answer_field: str = "answer"):
    """RewardFn: 1.0 when the completion's final answer equals the row's ``answer_field``, else 0.0."""

    def math_reward(prompts: Any, completions: list[str], **fields: Any) -> list[float]:
        refs = fields.get(answer_field)
        if refs is None:
            raise AlignlabError(f"reward math: the rows have no '{answer_field}' field with reference answers")
        out = []
        for completion, ref in zip(completions, refs):
            gold = reference_answer(str(ref)) if ref is not None else None
            out.append(1.0 if math_equal(extract_final_answer(completion), gold) else 0.0)
        return out

    return math_reward
