"""Chat backends for LLM judges: a local model through our sampler, or any OpenAI-compatible endpoint.

A backend answers many conversations at once: `chat_many(conversations) -> list[str | BackendError]`.
One failed request is returned in its slot rather than raised, so a judge can count it and go on.

`OpenAIBackend` speaks `POST {base_url}/chat/completions` with the standard library's urllib (no new
dependency). It retries 429 and 5xx answers and connection errors with exponential backoff (honouring a
short `Retry-After`), and gives up after `max_retries`. The API key is read from the environment
variable named in the config at the moment a request is built; only the variable's NAME is stored on the
object, so it cannot reach a repr, a saved config, a report or a log. Error texts from the server are
scrubbed of the key before they travel anywhere.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from alignlab.errors import AlignlabError

Message = dict[str, str]

__all__ = ["BackendError", "ChatBackend", "LocalBackend", "OpenAIBackend"]


class BackendError(AlignlabError):
    """A judge request that produced no usable reply; `kind` is 'request_failed' or 'bad_response'."""

    def __init__(self, message: str, kind: str = "request_failed"):
        super().__init__(message)
        self.kind = kind


class ChatBackend(Protocol):
    def chat_many(self, conversations: Sequence[list[Message]]) -> list[str | BackendError]: ...


class LocalBackend:
    """Replies from a local causal LM via `rollout.generate` (chat template, our KV-cache sampler)."""

    def __init__(self, model: Any, tokenizer: Any, sampling: Any = None):
        from alignlab.rollout.generate import SamplingConfig

        self.model, self.tokenizer = model, tokenizer
        self.sampling = sampling or SamplingConfig(max_new_tokens=64, greedy=True)

    def chat_many(self, conversations: Sequence[list[Message]]) -> list[str | BackendError]:
        from alignlab.rollout.generate import generate

        if not conversations:
            return []
        try:
            return [s.text for s in generate(self.model, self.tokenizer, list(conversations), self.sampling).samples]
        except Exception:  # find the conversation(s) that fail (e.g. too long for the judge's context)
            pass
        out: list[str | BackendError] = []
        for conv in conversations:
            try:
                out.append(generate(self.model, self.tokenizer, [conv], self.sampling).samples[0].text)
            except Exception as e:  # one failed judge request is counted by the judge, not fatal
                out.append(BackendError(f"local judge: {type(e).__name__}: {e}"[:300]))
        return out


class OpenAIBackend:
    """An OpenAI-compatible chat endpoint (`alignlab serve`, vLLM, llama.cpp server, OpenAI itself)."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None, max_tokens: int = 256,
                 temperature: float = 0.0, timeout: float = 300.0, max_retries: int = 3, backoff: float = 0.5,
                 concurrency: int = 4, seed: int | None = 0, top_p: float = 1.0):
        if not base_url.startswith(("http://", "https://")):
            raise AlignlabError(f"judge base_url must start with http:// or https://, got {base_url!r}")
        if api_key_env is not None and api_key_env not in os.environ:
            raise AlignlabError(f"judge api_key_env: environment variable {api_key_env} is not set")
        self.base_url = base_url.rstrip("/")
        self.model, self.api_key_env = model, api_key_env
        self.max_tokens, self.temperature, self.seed, self.top_p = max_tokens, temperature, seed, top_p
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.concurrency = max(1, concurrency)

    def __repr__(self) -> str:  # the key variable's name only, never its value
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def _key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def _scrub(self, text: str) -> str:
        key = self._key()
        return text.replace(key, "***") if key else text

    def chat_many(self, conversations: Sequence[list[Message]]) -> list[str | BackendError]:
        if self.concurrency == 1 or len(conversations) < 2:
            return [self._one(c) for c in conversations]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._one, conversations))

    def _one(self, messages: list[Message]) -> str | BackendError:
        payload: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                                   "temperature": self.temperature}
        if self.seed is not None:
            payload["seed"] = self.seed
        if self.top_p != 1.0:  # sent only when set: 1 is every server's default
            payload["top_p"] = self.top_p
        try:
            body = self.post("/chat/completions", payload)
        except BackendError as e:
            return e
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return BackendError(f"{self.base_url}: reply has no choices[0].message.content", "bad_response")
        if not isinstance(content, str):
            return BackendError(f"{self.base_url}: message content is {type(content).__name__}, not text",
                                "bad_response")
        return content

    def post(self, path: str, payload: dict) -> dict:
        """POST JSON with retries on 429/5xx/connection errors; raises BackendError (key-free message)."""
        data = json.dumps(payload).encode("utf-8")
        url = self.base_url + path
        last = ""
        for attempt in range(self.max_retries + 1):
            headers = {"Content-Type": "application/json"}
            key = self._key()
            if key:
                headers["Authorization"] = f"Bearer {key}"
            req = urllib.request.Request(url, data=data, headers=headers, method="POST")
            retry_after = None
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                try:
                    out = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise BackendError(f"{url}: reply is not JSON", "bad_response") from None
                if not isinstance(out, dict):
                    raise BackendError(f"{url}: reply is not a JSON object", "bad_response")
                return out
            except urllib.error.HTTPError as e:
                detail = self._scrub(_error_text(e))
                last = f"HTTP {e.code}: {detail}"
                if e.code != 429 and e.code < 500:
                    raise BackendError(f"{url}: {last}") from None
                retry_after = _retry_after(e)
            # http.client's protocol errors (a body cut short, a garbled status line) are not OSErrors.
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError, http.client.HTTPException) as e:
                last = self._scrub(f"{type(e).__name__}: {getattr(e, 'reason', e)}")
            if attempt < self.max_retries:
                # Exponential backoff with jitter, so parallel workers do not retry in lockstep.
                delay = self.backoff * (2**attempt) * (0.5 + random.random())
                time.sleep(min(retry_after if retry_after is not None else delay, 30.0))
        raise BackendError(f"{url}: gave up after {self.max_retries + 1} attempts; last error {last}")


def _error_text(e: urllib.error.HTTPError) -> str:
    try:
        body = e.read(2000).decode("utf-8", "replace")
        msg = json.loads(body).get("error", {}).get("message")
        return str(msg) if msg else body[:200]
    except Exception:  # an unreadable error body is still an HTTP error with a code
        return str(e.reason)


def _retry_after(e: urllib.error.HTTPError) -> float | None:
    value = e.headers.get("Retry-After") if e.headers else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
