"""Format detection and conversion of raw records to canonical rows.

Each converter takes one record (a dict) and returns the row of the format's natural task (or a
list of rows), raising `RowProblem` for a record it cannot use and `Dropped` for one it leaves out
on purpose (a tied vote). Formats (name: what a record looks like -> natural task):

- `sharegpt`: `conversations` [{from, value}] (+ optional `system`, and `tools`: function schemas, written into
  the system turn after `TOOLS_PREAMBLE`, one JSON schema a line); with `chosen`/`rejected` message
  objects -> preference, with `label` (or `kto_tag`) -> unpaired, else -> sft (every assistant turn trained).
- `messages`: the same with `messages` [{role, content}] (OpenAI / TRL conversational, LLaMA-Factory KTO).
- `preference`: TRL `prompt`/`chosen`/`rejected`, strings (standard, chat=False) or message lists
  (conversational); without `prompt` the prompt is the longest common prefix of the chosen and rejected
  message lists (TRL's implicit prompt; plain-text pairs need `prompt`, or are HH transcripts).
  `chosen_messages`/`rejected_messages` are read the same way.
- `prompt-completion`: TRL `prompt`/`completion` -> sft; `unpaired`: with `label` -> unpaired;
  `prompt-only`: `prompt` -> prompt.
- `alpaca`: `instruction`, `input`, `output` (+ optional `system`, `history` [[q, a], ...]) -> sft, or
  with `chosen`/`rejected` strings instead of `output` -> preference; the user turn is instruction and
  input joined by a blank line.
- `question-answer`: `question`, `answer` (GSM8K) -> sft.
- `text`: TRL's language-modelling rows, `text` alone -> plain-text sft, empty prompt, all trained (as SFTTrainer).
- `hh`: Anthropic HH `chosen`/`rejected` transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ...") split into
  turns; the dialogue before the last answer must be the same in both, else a `prompt_mismatch` problem.
  Read for prompts only (task "prompt"), an HH or explicit-prompt preference record is read through
  `PROMPT_CONVERTERS`: only the prompt's fields are read and checked.
- `columns`: anything else through a column mapping (see `alignlab.data.mapping`).

Role names are normalised: human/user -> user, gpt/assistant/bot/model/function_call -> assistant,
observation/tool/function -> tool, system -> system. Content may be a string or a list of typed parts
(`{"type": "text", "text"|"value": ...}`), as in LLaMA-Factory's v1 files; other part types are rejected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from alignlab.data.rows import Message, PreferenceRow, PromptRow, Row, RowProblem, SFTRow, UnpairedRow

ROLE_ALIASES = {
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
    "chatgpt": "assistant", "function_call": "assistant",
    "system": "system",
    "tool": "tool", "observation": "tool", "function": "tool", "ipython": "tool",
}


class Dropped(Exception):
    """A record left out on purpose (not a problem), e.g. a tied vote; `reason` is the count key."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# -- field helpers ------------------------------------------------------------------------------


def need(rec: dict, key: str) -> Any:
    if key not in rec or rec[key] is None:
        raise RowProblem("missing_field", key, f"field '{key}' is missing")
    return rec[key]


def need_text(rec: dict, key: str, *, optional: bool = False) -> str:
    if optional and rec.get(key) is None:
        return ""
    value = need(rec, key)
    if not isinstance(value, str):
        raise RowProblem("wrong_type", key, f"expected text, got {type(value).__name__}")
    return value


def user(text: str) -> Message:
    return {"role": "user", "content": text}


def assistant(text: str) -> Message:
    return {"role": "assistant", "content": text}


def _content(value: Any, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # typed parts: [{"type": "text", "text"|"value": ...}]
        out = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type", "text") != "text":
                raise RowProblem("wrong_type", f"{field}[{i}]", "only text content parts are supported")
            text = part.get("text", part.get("value"))
            if not isinstance(text, str):
                raise RowProblem("wrong_type", f"{field}[{i}]", "a text part needs a string 'text' or 'value'")
            out.append(text)
        return "".join(out)
    raise RowProblem("wrong_type", field, f"message content must be text, got {type(value).__name__}")


def to_message(value: Any, field: str, default_role: str | None = None) -> Message:
    """{role, content} or ShareGPT {from, value} -> a canonical message."""
    if not isinstance(value, dict):
        raise RowProblem("wrong_type", field, f"expected a message object, got {type(value).__name__}")
    role_key, content_key = ("from", "value") if "from" in value or "value" in value else ("role", "content")
    raw_role = value.get(role_key, default_role)
    if raw_role is None:
        raise RowProblem("missing_field", f"{field}.{role_key}", f"message has no '{role_key}'")
    role = ROLE_ALIASES.get(str(raw_role).lower()) if isinstance(raw_role, str) else None
    if role is None:
        raise RowProblem("bad_value", f"{field}.{role_key}", f"unknown role {raw_role!r}")
    if value.get(content_key) is None:
        raise RowProblem("missing_field", f"{field}.{content_key}", f"message has no '{content_key}'")
    message: Message = {"role": role, "content": _content(value[content_key], f"{field}.{content_key}")}
    weight = value.get("loss_weight")  # LLaMA-Factory v1: a turn at weight 0 is context, not trained
    if weight is not None:
        trains = role == "assistant"
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or float(weight) not in (0.0, 1.0):
            raise RowProblem("bad_value", f"{field}.loss_weight", f"0 or 1 are supported, got {weight!r}")
        if weight and not trains:
            raise RowProblem("bad_value", f"{field}.loss_weight", f"only assistant turns train; this is a {role} turn")
        if trains and not weight:
            message["train"] = False
    return message


def to_messages(value: Any, field: str, default_role: str | None = None) -> list[Message]:
    """A message list; a single message object or a bare string (an assistant answer) also count."""
    if isinstance(value, str) and default_role:
        return [{"role": default_role, "content": value}]
    if isinstance(value, dict):
        return [to_message(value, field, default_role)]
    if not isinstance(value, list):
        raise RowProblem("wrong_type", field, f"expected a list of messages, got {type(value).__name__}")
    return [to_message(m, f"{field}[{i}]", default_role) for i, m in enumerate(value)]


def common_prefix_len(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def first_assistant(messages: list[Message], field: str) -> int:
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            return i
    raise RowProblem("empty_completion", field, "the conversation has no assistant turn to train on")


def parse_label(value: Any, field: str) -> bool:
    """bool, 0/1, or the strings true/false/1/0/yes/no (CSV cells are strings)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise RowProblem("bad_value", field, f"label must be true/false (or 1/0), got {value!r}")


# -- converters ---------------------------------------------------------------------------------


TOOLS_PREAMBLE = ("You can call these tools. To call one, answer with a JSON object {\"name\": ..., "
                  "\"arguments\": {...}}; its result comes back as a tool message.")


def tools_text(rec: dict) -> str:
    """The record's `tools` (function schemas: a list, or its JSON text, as LLaMA-Factory's tool-call files hold
    them) as system-turn text, one schema a line after TOOLS_PREAMBLE; '' without tools."""
    import json

    tools = rec.get("tools")
    if isinstance(tools, str):
        if not tools.strip():
            return ""
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise RowProblem("bad_value", "tools", f"tools is not valid JSON ({e.msg})") from None
    if tools is None or tools == []:
        return ""
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise RowProblem("wrong_type", "tools", f"expected a list of tool schemas, got {type(tools).__name__}")
    return "\n".join([TOOLS_PREAMBLE, *(json.dumps(t, ensure_ascii=False) for t in tools)])


def _conversation(rec: dict, key: str) -> Row:
    conv = to_messages(need(rec, key), key)
    system = need_text(rec, "system", optional=True)
    if system and not (conv and conv[0]["role"] == "system"):
        conv = [{"role": "system", "content": system}, *conv]
    tools = tools_text(rec)
    if tools:  # the model must see the schemas it is trained to call (chat templates differ in tool support)
        if conv and conv[0]["role"] == "system":
            conv = [{"role": "system", "content": f"{conv[0]['content']}\n\n{tools}"}, *conv[1:]]
        else:
            conv = [{"role": "system", "content": tools}, *conv]
    if "chosen" in rec or "rejected" in rec:
        chosen = to_messages(need(rec, "chosen"), "chosen", "assistant")
        rejected = to_messages(need(rec, "rejected"), "rejected", "assistant")
        return PreferenceRow(conv, chosen, rejected)
    label_key = "label" if "label" in rec else "kto_tag" if "kto_tag" in rec else None
    if label_key:
        if not conv or conv[-1]["role"] != "assistant":
            raise RowProblem("empty_completion", key, "an unpaired example must end with an assistant turn")
        return UnpairedRow(conv[:-1], conv[-1:], parse_label(rec[label_key], label_key))
    return SFTRow(conv, first_assistant(conv, key), field=key)


def sharegpt(rec: dict) -> Row:
    return _conversation(rec, "conversations" if "conversations" in rec else "messages")


def messages(rec: dict) -> Row:
    return _conversation(rec, "messages")


def preference(rec: dict) -> Row:
    ck, rk = ("chosen_messages", "rejected_messages") if "chosen_messages" in rec else ("chosen", "rejected")
    chosen, rejected = need(rec, ck), need(rec, rk)
    if isinstance(chosen, str) != isinstance(rejected, str) and all(isinstance(v, (str, list)) for v in (chosen, rejected)):
        # one answer text, the other messages: name the one whose kind differs from the prompt's
        odd = ck if isinstance(chosen, str) != isinstance(rec.get("prompt"), str) else rk
        raise RowProblem("wrong_type", odd, f"'{ck}' and '{rk}' must both be text or both be message lists, as the "
                         "prompt is")
    margin = rec.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
        raise RowProblem("wrong_type", "margin", f"margin must be a number, got {type(margin).__name__}")
    if margin is not None and not math.isfinite(margin):  # the loss would be nan at the first step
        raise RowProblem("bad_value", "margin", f"margin must be finite, got {margin}")
    if isinstance(chosen, str) or isinstance(rejected, str):
        prompt = need_text(rec, "prompt")
        return PreferenceRow([user(prompt)], [assistant(need_text(rec, ck))], [assistant(need_text(rec, rk))],
                             chat=False, margin=margin)
    c, r = to_messages(chosen, ck, "assistant"), to_messages(rejected, rk, "assistant")
    given = rec.get("prompt")
    if given is not None and not (isinstance(given, str) and c and c[0]["role"] != "assistant"):
        return PreferenceRow(to_messages(given, "prompt", "user"), c, r, margin=margin)
    # TRL implicit prompt: the shared leading turns; stop before an assistant turn that ends either
    # list so the answers themselves are never swallowed into the prompt.
    n = common_prefix_len(c, r)
    while n and n >= min(len(c), len(r)):
        n -= 1
    if given is not None:  # UltraFeedback's layout: a text prompt beside lists that hold it (TRL maybe_extract_prompt)
        asked = [m["content"] for m in c[:n] if m["role"] == "user"]
        if not asked or asked[-1].strip() != given.strip():
            raise RowProblem("prompt_mismatch", "prompt", f"the text prompt is not the last user turn of '{ck}' "
                             f"and '{rk}', which hold the conversation")
    return PreferenceRow(c[:n], c[n:], r[n:], margin=margin)


def _text_or_messages(rec: dict, key: str, role: str) -> tuple[list[Message], bool]:
    value = need(rec, key)
    if isinstance(value, str):
        return [{"role": role, "content": value}], False
    return to_messages(value, key, role), True


def prompt_completion(rec: dict) -> Row:
    prompt, chat_p = _text_or_messages(rec, "prompt", "user")
    completion, chat_c = _text_or_messages(rec, "completion", "assistant")
    if chat_p != chat_c:
        raise RowProblem("wrong_type", "completion", "prompt and completion must both be text or both be messages")
    if "label" in rec:
        return UnpairedRow(prompt, completion, parse_label(rec["label"], "label"), chat=chat_p)
    return SFTRow(prompt + completion, len(prompt), chat=chat_p, field="completion")


def prompt_only(rec: dict) -> Row:
    prompt, chat = _text_or_messages(rec, "prompt", "user")
    answer = rec.get("answer", rec.get("solution"))
    return PromptRow(prompt, chat=chat, answer=answer if isinstance(answer, str) else None)


def text(rec: dict) -> Row:
    return SFTRow([user(""), assistant(need_text(rec, "text"))], 1, chat=False, field="text")


def join_parts(parts: list[str]) -> str:
    return "\n\n".join(p for p in parts if p.strip())


def alpaca(rec: dict) -> Row:
    msgs: list[Message] = []
    system = need_text(rec, "system", optional=True)
    if system:
        msgs.append({"role": "system", "content": system})
    history = rec.get("history") or []
    if not isinstance(history, list):
        raise RowProblem("wrong_type", "history", "history must be a list of [instruction, response] pairs")
    for i, turn in enumerate(history):
        if not (isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise RowProblem("wrong_type", f"history[{i}]", "expected [instruction, response] strings")
        msgs += [user(turn[0]), assistant(turn[1])]
    msgs.append(user(join_parts([need_text(rec, "instruction"), need_text(rec, "input", optional=True)])))
    if "chosen" in rec or "rejected" in rec:  # LLaMA-Factory's Alpaca-style preference data
        return PreferenceRow(msgs, [assistant(need_text(rec, "chosen"))], [assistant(need_text(rec, "rejected"))])
    msgs.append(assistant(need_text(rec, "output")))
    return SFTRow(msgs, len(msgs) - 1, field="output")


def question_answer(rec: dict) -> Row:
    return SFTRow([user(need_text(rec, "question")), assistant(need_text(rec, "answer"))], 1, field="answer")


_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")


def hh_turns(text: str, field: str) -> list[Message]:
    """Split an HH transcript into user/assistant messages; it must end with an Assistant turn."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise RowProblem("bad_value", field, "not an HH transcript: expected '\\n\\nHuman: ...\\n\\nAssistant: ...'")
    turns = [{"role": "user" if who == "Human" else "assistant", "content": body.strip()}
             for who, body in zip(parts[1::2], parts[2::2])]
    if turns[-1]["role"] != "assistant":
        raise RowProblem("bad_value", field, "the transcript does not end with an Assistant turn")
    return turns


def hh(rec: dict) -> Row:
    chosen = hh_turns(need_text(rec, "chosen"), "chosen")
    rejected = hh_turns(need_text(rec, "rejected"), "rejected")
    if chosen[:-1] != rejected[:-1]:
        turn = common_prefix_len(chosen[:-1], rejected[:-1])
        raise RowProblem("prompt_mismatch", "rejected",
                         f"chosen and rejected differ at turn {turn}, before the last answer; "
                         "the dialogue they share cannot be told from the answers")
    return PreferenceRow(chosen[:-1], chosen[-1:], rejected[-1:])


def hh_prompt(rec: dict) -> Row:
    """The prompt of an HH record for prompt-only use (generation, RL): the chosen transcript without its last
    answer. The answers and the rejected transcript are not read, so an empty answer or a rejected dialogue
    that differs earlier is no problem here."""
    return PromptRow(hh_turns(need_text(rec, "chosen"), "chosen")[:-1])


def preference_prompt(rec: dict) -> Row:
    """The prompt of a TRL preference record with an explicit `prompt`, the answers unread; without one the
    prompt is implicit in the answers, so the whole record is converted."""
    if rec.get("prompt") is None:
        return preference(rec)
    chat = not isinstance(rec.get("chosen"), str) and not isinstance(rec.get("rejected"), str)
    if not chat:
        return PromptRow([user(need_text(rec, "prompt"))], chat=False)
    return PromptRow(to_messages(rec["prompt"], "prompt", "user"))


# Formats whose prompt can be read without the rest of the record (the answers): task "prompt" uses these,
# so a command that needs only prompts never rejects a record over fields it does not use.
PROMPT_CONVERTERS: dict[str, Callable[[dict], Row | list[Row]]] = {"hh": hh_prompt, "preference": preference_prompt}


CONVERTERS: dict[str, Callable[[dict], Row | list[Row]]] = {
    "sharegpt": sharegpt,
    "messages": messages,
    "preference": preference,
    "prompt-completion": prompt_completion,
    "unpaired": prompt_completion,
    "prompt-only": prompt_only,
    "alpaca": alpaca,
    "question-answer": question_answer,
    "hh": hh,
    "text": text,
}


def _is_hh(value: Any) -> bool:
    return isinstance(value, str) and value.lstrip(" ").startswith(("\n\nHuman:", "Human:"))


def detect_format(rec: Any) -> str | None:
    """The format name a record's keys point to, or None."""
    if not isinstance(rec, dict):
        return None
    keys = set(rec)
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        first = rec["messages"][0] if isinstance(rec["messages"], list) and rec["messages"] else {}
        return "sharegpt" if isinstance(first, dict) and "from" in first else "messages"
    if {"chosen_messages", "rejected_messages"} <= keys:
        return "preference"
    if {"instruction", "output"} <= keys or {"instruction", "chosen", "rejected"} <= keys:
        return "alpaca"
    if {"chosen", "rejected"} <= keys:
        return "hh" if "prompt" not in keys and _is_hh(rec["chosen"]) else "preference"
    if {"prompt", "completion"} <= keys:
        return "unpaired" if "label" in keys else "prompt-completion"
    if {"question", "answer"} <= keys:
        return "question-answer"
    if "prompt" in keys:
        return "prompt-only"
    if keys == {"text"}:
        return "text"
    return None
