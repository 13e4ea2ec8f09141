"""The HTTP layer of `alignlab serve`: routes, body reading, server-sent events, connection limits.

Why the standard library (`http.server.ThreadingHTTPServer`) and not FastAPI: it adds no dependency
(FastAPI + uvicorn + pydantic would be three new packages for a handful of routes), and the model work is
done by one scheduler thread anyway (rollout/scheduler.py): a connection's thread only parses, queues and
waits. What matters is that a slow or stalled client never blocks others, and threads per connection give
that: each connection is read by its own thread with a socket timeout, and the body is read in full BEFORE
the request is queued, so a client that sends half a request ties up only its own thread, and only until
the timeout. Bodies larger than `max_body_bytes` are refused with 413 from the Content-Length header without
being read; a request without Content-Length gets 411. While a request is generating, its thread checks
that the client is still connected; one that went away cancels the request (its rows leave the batch at the
next decode step). Nothing from a request's headers is ever logged (a client's Authorization stays private).
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from alignlab.errors import AlignlabError
from alignlab.serve.protocol import RequestError
from alignlab.serve.server import ClientGone, ModelServer

__all__ = ["base_url", "make_http_server"]


def _connected(sock: socket.socket) -> bool:
    """False once the peer closed its side (a readable socket with nothing to read). Pipelined bytes from a
    keep-alive client count as connected: they are peeked, never consumed."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return True
        return sock.recv(1, socket.MSG_PEEK) != b""
    except (OSError, ValueError):
        return False


class _Handler(BaseHTTPRequestHandler):
    """One connection's requests; `_handler` binds it to a ModelServer (the standard library makes a handler
    instance per connection from a class, so the server travels as class attributes)."""

    model_server: ModelServer
    quiet = False
    server_version = "alignlab"

    def log_message(self, format: str, *args: Any) -> None:  # request line and status only, no headers
        if not self.quiet:
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
            self._send(200, self.model_server.health())
        elif route == "/v1/models":
            self._send(200, self.model_server.models())
        elif route == "/metrics":
            data = self.model_server.metrics().encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
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
        if size > self.model_server.max_body_bytes:
            raise RequestError(413, f"request body of {size} bytes exceeds the limit of "
                               f"{self.model_server.max_body_bytes} bytes", None, "request_too_large")
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

    def _alive(self) -> bool:
        return _connected(self.connection)

    def _event(self, payload: dict) -> None:
        self.wfile.write(b"data: " + json.dumps(payload).encode("utf-8") + b"\n\n")
        self.wfile.flush()

    def _generate(self, chat: bool) -> None:
        body = self._body()
        if not chat and body.get("echo") is True:  # prompt log-probs only (serve/echo.py)
            from alignlab.serve.echo import echo_response

            self._send(200, echo_response(self.model_server, body))
            self.model_server.count("ok")
            return
        job, req = self.model_server.submit(body, chat)
        try:
            if not job.stream:
                self._send(200, self.model_server.collect(job, req, self._alive))
                self.model_server.count("ok")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()  # no Content-Length: the stream ends when the connection closes
            self.close_connection = True
            try:
                for c in self.model_server.stream(job, req, self._alive):
                    self._event(c)
            except RuntimeError as e:  # generation failed mid-stream: the status line is already sent
                self.model_server.count("error")
                self._event(RequestError(500, str(e)[:500], None, "internal_error").body())
                return  # no [DONE]: the stream ends with the error
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.model_server.count("ok")
        except (ClientGone, OSError):
            self.model_server.count("cancelled")
            raise ClientGone() from None
        finally:
            req.cancel()  # a no-op once every sample finished; otherwise its rows leave the batch

    def do_POST(self) -> None:
        route = self.path.split("?", 1)[0].rstrip("/")
        try:
            if route == "/v1/chat/completions":
                self._generate(chat=True)
            elif route == "/v1/completions":
                self._generate(chat=False)
            elif route == "/v1/load_weights":
                self._send(200, self.model_server.load_weights(self._body(), self.headers.get("Authorization")))
            else:
                raise RequestError(404, f"no route POST {route or '/'}", None, "not_found")
        except RequestError as e:
            self._error(e)
        except AlignlabError as e:  # e.g. a prompt the chat template cannot render
            self._error(RequestError(400, str(e), None, "invalid_value"))
        except (ClientGone, TimeoutError, ConnectionError):
            self.close_connection = True  # the client went away or stalled; nobody to answer
        except Exception as e:  # a bug or OOM in generation: the server stays up, the client learns why
            self.model_server.count("error")
            self._error(RequestError(500, f"{type(e).__name__}: {e}"[:500], None, "internal_error"))

    def _method_not_allowed(self) -> None:
        self._error(RequestError(405, f"method {self.command} is not allowed", None, "method_not_allowed"))

    do_PUT = do_DELETE = do_PATCH = _method_not_allowed


def _handler(server: ModelServer, socket_timeout: float, quiet: bool) -> type[BaseHTTPRequestHandler]:
    # timeout: a stalled client frees its thread after this many seconds
    return type("Handler", (_Handler,), {"model_server": server, "timeout": socket_timeout, "quiet": quiet})


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
