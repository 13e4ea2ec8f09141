"""The OpenAI wire format: request bodies checked field by field, and choices, log-probs and chunks built.

Honoured request fields (chat and completions): model (an unknown name is a 404 `model_not_found`; absent
means the served model), temperature (0 = greedy), top_p, top_k (vLLM's; -1 or 0 = off), max_tokens (or
max_completion_tokens), stop, n, seed, stream, stream_options.include_usage, ignore_eos (vLLM's),
return_token_ids and return_tokens_as_token_ids (vLLM's: token ids per choice; log-prob tokens spelled
"token_id:<id>"), skip_special_tokens, include_stop_str_in_output; chat: logprobs (bool), top_logprobs
(0-20); completions: logprobs (int 0-20), prompt as a string, a list of strings, a list of token ids or a
list of token-id lists; `echo: true` with `max_tokens: 0` returns the prompt's own token log-probs (serve/echo.py).
Sampling fields this server does not implement (echo with generation, best_of other than n,
presence/frequency/repetition penalties, logit_bias, suffix, tools, functions, a non-text response_format)
are refused with 400 `unsupported` unless left at their neutral value. Other fields (user, metadata, ...) are
ignored, as OpenAI's own clients expect; a known field with a wrong type or range is a 400 in OpenAI's shape.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from alignlab.rollout.scheduler import SeqParams

ROLES = ("system", "user", "assistant", "tool", "developer")
MAX_TOP_LOGPROBS = 20


class RequestError(Exception):
    """A client error: HTTP status, message, the offending parameter and an OpenAI-style code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str = "invalid_value") -> RequestError:
    return RequestError(400, message, param, code)


def _number(body: dict, key: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(f"{key} must be a number, got {type(value).__name__}", key, "invalid_type")
    if not math.isfinite(value):  # Python's json reads NaN and Infinity; OpenAI's API does not take them
        raise bad(f"{key} must be finite, got {value}", key)
    if value < low or value > high or (low_open and value == low):
        raise bad(f"{key} must be in {'(' if low_open else '['}{low}, {high}], got {value}", key)
    return float(value)


def _integer(body: dict, key: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"{key} must be an integer, got {type(value).__name__}", key, "invalid_type")
    if not low <= value <= high:
        raise bad(f"{key} must be between {low} and {high}, got {value}", key)
    return value


def _flag(body: dict, key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(f"{key} must be true or false, got {type(value).__name__}", key, "invalid_type")
    return value


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise bad("stop must be a non-empty string or a list of at most 4 non-empty strings", "stop", "invalid_type")
    return stop


def _content(value: Any, i: int) -> str:
    """Message content: a string, or a list of text parts ({"type": "text", "text": ...})."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                       and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    raise bad(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content",
              "invalid_type")


def messages(body: dict) -> list[dict[str, str]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("messages must be a non-empty list of {role, content} objects", "messages",
                  "invalid_type" if msgs is not None else "missing_required_parameter")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}] must be an object", f"messages[{i}]", "invalid_type")
        if m.get("role") not in ROLES:
            raise bad(f"messages[{i}].role must be one of {', '.join(ROLES)}", f"messages[{i}].role")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": _content(m.get("content"), i)})
    return out


def _ids(p: Any) -> bool:
    return isinstance(p, list) and bool(p) and all(isinstance(t, int) and not isinstance(t, bool) for t in p)


def prompts(body: dict) -> list[Any]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if _ids(prompt):
        return [prompt]  # one prompt as token ids
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if isinstance(prompt, list) and prompt and all(_ids(p) for p in prompt):
        return list(prompt)  # several prompts as token ids (what rollout clients send)
    raise bad("prompt must be a string, a list of strings, a list of token ids or a list of token-id lists",
              "prompt", "invalid_type" if prompt is not None else "missing_required_parameter")


# Fields that change what is sampled but that this server does not implement: refused unless left at their
# neutral value, so a client never gets an answer it did not ask for.
_NEUTRAL = {"presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "repetition_penalty": (1, 1.0),
            "logit_bias": ({},), "suffix": ("",), "tools": ([],), "functions": ([],),
            # vLLM's sampling extensions
            "min_tokens": (0,), "min_p": (0, 0.0), "stop_token_ids": ([],), "bad_words": ([],),
            "length_penalty": (1, 1.0), "use_beam_search": (False,)}


def _refuse_unsupported(body: dict, n: int) -> None:
    for key, neutral in _NEUTRAL.items():
        value = body.get(key)
        if value is not None and not any(value == v and type(value) is type(v) for v in neutral):
            raise bad(f"{key} is not supported by alignlab serve", key, "unsupported")
    if body.get("best_of") not in (None, n):
        raise bad("best_of is not supported by alignlab serve (send n)", "best_of", "unsupported")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise bad("response_format other than text is not supported by alignlab serve", "response_format",
                  "unsupported")


@dataclass
class Job:
    """One parsed request: what to sample and how to answer."""

    chat: bool
    params: SeqParams
    n: int
    stream: bool = False
    include_usage: bool = False
    return_token_ids: bool = False
    tokens_as_ids: bool = False
    include_stop: bool = False
    prompt_ids: list[list[int]] = field(default_factory=list)


def parse_job(body: dict, chat: bool, *, default_max: int, max_tokens_limit: int, max_n: int) -> Job:
    """Check every honoured sampling field of a chat or completions body (see the module docstring)."""
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    if temperature < 1e-5:  # as vLLM: logits / 1e-40 overflow to inf, and softmax of inf drew token 0 with NaN log-probs
        temperature = 0.0
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
    top_k = _integer(body, "top_k", 0, -1, 1 << 20)
    max_tokens = _integer(body, "max_tokens", None, 1, max_tokens_limit)
    max_tokens = _integer(body, "max_completion_tokens", max_tokens, 1, max_tokens_limit)
    n = _integer(body, "n", 1, 1, max_n)
    seed = _integer(body, "seed", None, -(2**63), 2**63 - 1)
    if chat:
        want = _flag(body, "logprobs", False)
        top = _integer(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
        if top is not None and not want:
            raise bad("top_logprobs needs logprobs: true", "top_logprobs")
        logprobs = (top or 0) if want else None
    else:
        logprobs = _integer(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)
        if _flag(body, "echo", False):
            raise bad("echo is supported with max_tokens: 0 only (prompt log-probs)", "echo", "unsupported")
    _refuse_unsupported(body, n)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad("stream_options must be an object", "stream_options", "invalid_type")
    params = SeqParams(max_tokens=max_tokens or min(default_max, max_tokens_limit), temperature=temperature,
                       top_p=top_p, top_k=max(top_k, 0), stop=_stop(body),
                       seed=seed if seed is not None else random.getrandbits(63), logprobs=logprobs,
                       ignore_eos=_flag(body, "ignore_eos", False), skip_special=_flag(body, "skip_special_tokens", True),
                       first_prompt=_integer(body, "alignlab_first_prompt", None, 0, 2**31))
    return Job(chat=chat, params=params, n=n, stream=_flag(body, "stream", False),
               include_usage=_flag(options or {}, "include_usage", False),
               return_token_ids=_flag(body, "return_token_ids", False),
               tokens_as_ids=_flag(body, "return_tokens_as_token_ids", False),
               include_stop=_flag(body, "include_stop_str_in_output", False))


FINISH = {"eos": "stop", "stop": "stop", "length": "length"}
