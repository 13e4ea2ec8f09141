"""`alignlab serve`: an OpenAI-compatible HTTP server for any model alignlab loads.

Endpoints: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`, `GET /health`.
Honoured request fields: temperature (0 = greedy), top_p, max_tokens (or max_completion_tokens), stop,
n, seed; unknown fields are ignored as OpenAI's own clients expect; a known field with a wrong type or
range is a 400 in OpenAI's error shape `{"error": {"message", "type", "param", "code"}}`. Responses
carry `usage` token counts. `stream: true` is refused (400) rather than silently answered whole.

Why the standard library (`http.server.ThreadingHTTPServer`) and not FastAPI: it adds no dependency
(FastAPI + uvicorn + pydantic would be three new packages for four routes), and generation on one
model is serial anyway: model calls hold one lock, so an async event loop would buy nothing. What
matters is that a slow or stalled client never blocks others, and threads per connection give that:
each connection is read by its own thread with a socket timeout, and the body is read in full BEFORE
the model lock is taken, so a client that sends half a request ties up only its own thread, and only
until the timeout. Bodies larger than `max_body_bytes` are refused with 413 from the Content-Length
header without being read; a request without Content-Length gets 411.
Nothing from a request's headers is ever logged (a client's Authorization header stays private).
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from alignlab.errors import AlignlabError

__all__ = ["ModelServer", "RequestError", "make_http_server"]

ROLES = ("system", "user", "assistant", "tool", "developer")


class RequestError(Exception):
    """A client error: HTTP status, message, the offending parameter and an OpenAI-style code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def _bad(message: str, param: str | None = None, code: str = "invalid_value") -> RequestError:
    return RequestError(400, message, param, code)


def _number(body: dict, key: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"{key} must be a number, got {type(value).__name__}", key, "invalid_type")
    if not math.isfinite(value):  # Python's json reads NaN and Infinity; OpenAI's API does not take them
        raise _bad(f"{key} must be finite, got {value}", key)
    if value < low or value > high or (low_open and value == low):
        raise _bad(f"{key} must be in {'(' if low_open else '['}{low}, {high}], got {value}", key)
    return float(value)


def _integer(body: dict, key: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{key} must be an integer, got {type(value).__name__}", key, "invalid_type")
    if not low <= value <= high:
        raise _bad(f"{key} must be between {low} and {high}, got {value}", key)
    return value


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise _bad("stop must be a non-empty string or a list of at most 4 non-empty strings", "stop", "invalid_type")
    return stop


def _content(value: Any, i: int) -> str:
    """Message content: a string, or a list of text parts ({"type": "text", "text": ...})."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                       and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    raise _bad(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content",
               "invalid_type")


def _messages(body: dict) -> list[dict[str, str]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("messages must be a non-empty list of {role, content} objects", "messages",
                   "invalid_type" if msgs is not None else "missing_required_parameter")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}] must be an object", f"messages[{i}]", "invalid_type")
        if m.get("role") not in ROLES:
            raise _bad(f"messages[{i}].role must be one of {', '.join(ROLES)}", f"messages[{i}].role")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": _content(m.get("content"), i)})
    return out


def _prompts(body: dict) -> list[Any]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        return [prompt]  # one prompt as token ids
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise _bad("prompt must be a string, a list of strings or a list of token ids", "prompt",
               "invalid_type" if prompt is not None else "missing_required_parameter")


_FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


class ModelServer:
    """The model side: validates OpenAI request bodies and answers them with rollout.generate.

    `record` > 0 keeps the last `record` requests' prompts in `self.seen` (in memory only; for tests and
    debugging), never headers."""

    def __init__(self, model: Any, tokenizer: Any, *, model_id: str = "alignlab", max_body_bytes: int = 1 << 20,
                 max_tokens_limit: int = 2048, max_n: int = 16, default_max_tokens: int = 256, record: int = 0):
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        self.max_body_bytes, self.max_tokens_limit, self.max_n = max_body_bytes, max_tokens_limit, max_n
        self.default_max_tokens = default_max_tokens
        self.lock = threading.Lock()
        self.seen: deque = deque(maxlen=max(record, 1))
        self.record = record
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 0)

    def _sampling(self, body: dict, default_max: int):
        from alignlab.rollout.generate import SamplingConfig

        temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
        limit = self.max_tokens_limit
        max_tokens = _integer(body, "max_tokens", None, 1, limit)
        max_tokens = _integer(body, "max_completion_tokens", max_tokens, 1, limit) or min(default_max, limit)
        n = _integer(body, "n", 1, 1, self.max_n)
        seed = _integer(body, "seed", None, -(2**63), 2**63 - 1)
        if body.get("stream") is True:
            raise _bad("stream is not supported by alignlab serve; send stream: false", "stream", "unsupported")
        cfg = SamplingConfig(max_new_tokens=max_tokens, temperature=temperature if temperature > 0 else 1.0,
                             top_p=top_p, greedy=temperature == 0, stop=_stop(body),
                             seed=seed if seed is not None else random.getrandbits(63))
        return cfg, n

    def _generate(self, prompts: list[Any], cfg: Any, n: int):
        from alignlab.rollout.encode import encode_prompt
        from alignlab.rollout.generate import generate

        with self.lock:  # one generation at a time on the one model; request parsing happens outside
            for p in prompts:
                ids = encode_prompt(self.tokenizer, p)
                if self.context and len(ids) + cfg.max_new_tokens > self.context:
                    raise RequestError(400, f"prompt ({len(ids)} tokens) + max_tokens ({cfg.max_new_tokens}) "
                                       f"exceeds the model's context of {self.context} tokens", "messages",
                                       "context_length_exceeded")
            return generate(self.model, self.tokenizer, prompts, cfg, n=n)

    def _remember(self, endpoint: str, prompts: list[Any]) -> None:
        if self.record:
            self.seen.append({"endpoint": endpoint, "prompts": prompts, "time": time.time()})

    @staticmethod
    def _usage(result: Any, n: int) -> dict:
        # Every sample of a prompt shares its prompt tokens: count each prompt once, as OpenAI does.
        prompt_tokens = sum(len(s.prompt_ids) for s in result.samples if s.sample_index == 0)
        completion_tokens = sum(len(s.completion_ids) for s in result.samples)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def chat_completions(self, body: dict) -> dict:
        messages = _messages(body)
        cfg, n = self._sampling(body, self.default_max_tokens)
        self._remember("chat", [messages])
        result = self._generate([messages], cfg, n)
        choices = [{"index": s.sample_index, "message": {"role": "assistant", "content": s.text},
                    "finish_reason": _FINISH[s.finish_reason], "logprobs": None} for s in result.samples]
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model_id, "choices": choices, "usage": self._usage(result, n)}

    def completions(self, body: dict) -> dict:
        prompts = _prompts(body)
        cfg, n = self._sampling(body, 16)  # OpenAI's legacy endpoint defaults to 16 tokens
        self._remember("completions", prompts)
        result = self._generate(prompts, cfg, n)
        choices = [{"index": s.prompt_index * n + s.sample_index, "text": s.text,
                    "finish_reason": _FINISH[s.finish_reason], "logprobs": None} for s in result.samples]
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.model_id, "choices": choices, "usage": self._usage(result, n)}

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_id, "object": "model", "created": 0,
                                             "owned_by": "alignlab"}]}


def _handler(server: ModelServer, socket_timeout: float, quiet: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = socket_timeout  # a stalled client frees its thread after this many seconds
        server_version = "alignlab"

        def log_message(self, format: str, *args: Any) -> None:  # request line and status only, no headers
            if not quiet:
                super().log_message(format, *args)

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, e: RequestError) -> None:
            self.close_connection = True
            try:
                self._send(e.status, e.body())
            except OSError:  # the client is gone; there is nobody left to tell
                return
            if e.status == 413:
                self._drain()

        def _drain(self, limit: int = 64 << 20, seconds: float = 1.0) -> None:
            """Read (and drop) what the client is still sending, briefly: closing a socket with unread
            data makes Linux send a reset, and the client would lose the 413 it was just sent."""
            try:
                self.wfile.flush()
                self.connection.settimeout(0.2)
                deadline, got = time.monotonic() + seconds, 0
                while got < limit and time.monotonic() < deadline:
                    chunk = self.connection.recv(65536)
                    if not chunk:
                        break
                    got += len(chunk)
            except OSError:
                pass

        def do_GET(self) -> None:
            route = self.path.split("?", 1)[0].rstrip("/")
            if route == "/health":
                self._send(200, {"status": "ok", "model": server.model_id})
            elif route == "/v1/models":
                self._send(200, server.models())
            else:
                self._error(RequestError(404, f"no route GET {route or '/'}", None, "not_found"))

        def _body(self) -> dict:
            length = self.headers.get("Content-Length")
            if length is None:
                raise RequestError(411, "a Content-Length header is required", None, "length_required")
            try:
                size = int(length)
            except ValueError:
                raise RequestError(400, "Content-Length is not a number", None, "invalid_header") from None
            if size < 0:
                raise RequestError(400, "Content-Length is negative", None, "invalid_header")
            if size > server.max_body_bytes:
                raise RequestError(413, f"request body of {size} bytes exceeds the limit of "
                                   f"{server.max_body_bytes} bytes", None, "request_too_large")
            raw = self.rfile.read(size)
            if len(raw) < size:
                raise RequestError(400, "request body ended early", None, "incomplete_body")
            try:
                body = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise RequestError(400, f"request body is not valid JSON: {e}", None, "invalid_json") from None
            except RecursionError:  # e.g. 100k nested brackets: within the size limit, beyond the parser
                raise RequestError(400, "request body is nested too deeply", None, "invalid_json") from None
            if not isinstance(body, dict):
                raise RequestError(400, "request body must be a JSON object", None, "invalid_json")
            return body

        def do_POST(self) -> None:
            route = self.path.split("?", 1)[0].rstrip("/")
            handlers = {"/v1/chat/completions": server.chat_completions, "/v1/completions": server.completions}
            try:
                if route not in handlers:
                    raise RequestError(404, f"no route POST {route or '/'}", None, "not_found")
                self._send(200, handlers[route](self._body()))
            except RequestError as e:
                self._error(e)
            except AlignlabError as e:  # e.g. a prompt the chat template cannot render
                self._error(RequestError(400, str(e), None, "invalid_value"))
            except (TimeoutError, ConnectionError):
                self.close_connection = True  # the client went away or stalled; nobody to answer
            except Exception as e:  # a bug or OOM in generation: the server stays up, the client learns why
                self._error(RequestError(500, f"{type(e).__name__}: {e}"[:500], None, "internal_error"))

        def _method_not_allowed(self) -> None:
            self._error(RequestError(405, f"method {self.command} is not allowed", None, "method_not_allowed"))

        do_PUT = do_DELETE = do_PATCH = _method_not_allowed

    return Handler


class _BoundedServer(ThreadingHTTPServer):
    """One thread per connection, but at most `max_connections` at once: beyond that a connection gets an
    immediate 503 instead of a thread, so a flood of idle connections cannot exhaust the process."""

    daemon_threads = True  # a stuck connection thread never keeps the process alive at shutdown
    max_connections = 64

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(self.max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            body = json.dumps(RequestError(503, "server busy: too many open connections", None,
                                           "too_many_connections").body()).encode()
            try:
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 1\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def make_http_server(server: ModelServer, host: str = "127.0.0.1", port: int = 0, *, socket_timeout: float = 30.0,
                     quiet: bool = False, max_connections: int = 64) -> ThreadingHTTPServer:
    """Bind (port 0 = any free port) and return the HTTP server; call `serve_forever()` to run it."""
    cls = type("AlignlabHTTPServer", (_BoundedServer,), {"max_connections": max_connections})
    return cls((host, port), _handler(server, socket_timeout, quiet))


def base_url(httpd: ThreadingHTTPServer) -> str:
    """The OpenAI base URL (ending in /v1) of a bound server."""
    host, port = httpd.server_address[:2]
    host = f"[{host}]" if ":" in str(host) else host
    return f"http://{host}:{port}/v1"
