"""ModelServer: the model side of `alignlab serve`, between the HTTP layer (serve/http.py) and the
continuous-batching engine (rollout/scheduler.py).

A request is parsed and tokenised on its connection's thread, then queued for the engine (a full queue is a
503); the connection's thread then waits for its events, checking between events that its client is still
there: a client that went away cancels its request, and its rows leave the batch at the next decode step.
"""

from __future__ import annotations

import hmac
import os
import queue
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any

from alignlab.errors import AlignlabError
from alignlab.rollout.encode import encode_prompt
from alignlab.rollout.scheduler import Engine, QueueFull, Request
from alignlab.serve import output, protocol, weights
from alignlab.serve.protocol import Job, RequestError


class ClientGone(Exception):
    """The client closed its connection before the answer was complete."""


class ModelServer:
    """Validates OpenAI request bodies and answers them from one continuous-batching Engine.

    `model_id` (and `aliases`) are the model names requests may ask for; `max_batch` sequences decode
    together, `max_queue` requests may wait beyond them (more: 503). `load_weights` enables
    POST /v1/load_weights; with `admin_token_env` that endpoint needs `Authorization: Bearer <$VAR>`; with
    `weights_root` only directories under it load. `record` > 0 keeps the last `record` requests' prompts in
    `self.seen` (in memory only; for tests and debugging), never headers. `speculative` = (Medusa heads,
    rollout.speculative.MedusaDecoding): single-prompt n = 1 requests without log-probs are decoded with the
    heads, one at a time (serve/speculative.py)."""

    def __init__(self, model: Any, tokenizer: Any, *, model_id: str = "alignlab", aliases: tuple[str, ...] = (),
                 max_body_bytes: int = 1 << 20, max_tokens_limit: int = 2048, max_n: int = 64,
                 default_max_tokens: int = 256, record: int = 0, max_batch: int = 64, max_queue: int = 256,
                 load_weights: bool = True, admin_token_env: str | None = None, weights_root: str | None = None,
                 speculative: tuple[Any, Any] | None = None):
        if admin_token_env is not None and not os.environ.get(admin_token_env):
            raise AlignlabError(f"serve: admin_token_env: environment variable {admin_token_env} is not set")
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        self.names = {model_id, *aliases}
        self.max_body_bytes, self.max_tokens_limit, self.max_n = max_body_bytes, max_tokens_limit, max_n
        self.default_max_tokens = default_max_tokens
        self.allow_load, self.admin_token_env, self.weights_root = load_weights, admin_token_env, weights_root
        self.seen: deque = deque(maxlen=max(record, 1))
        self.record = record
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self.vocab = int(model.get_input_embeddings().num_embeddings)
        self.engine = Engine(model, tokenizer, max_batch=max_batch, max_queue=max_queue, context=self.context)
        self.speculative = None
        if speculative is not None:  # (Medusa heads, MedusaDecoding): serve/speculative.py
            from alignlab.serve.speculative import SpeculativeWorker

            self.speculative = SpeculativeWorker(self.engine, *speculative, max_queue=max_queue)
        self.outcomes: Counter = Counter()
        self.prompt_tokens = self.weights_version = 0
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()

    def close(self) -> None:
        if self.speculative is not None:
            self.speculative.close()
        self.engine.close()

    def count(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] += 1

    # ------------------------------------------------------------ requests

    def _check_model(self, body: dict) -> None:
        name = body.get("model")
        if name is not None and (not isinstance(name, str) or name not in self.names):
            raise RequestError(404, f"The model `{name}` does not exist; this server serves {self.model_id!r}",
                               "model", "model_not_found")

    def submit(self, body: dict, chat: bool) -> tuple[Job, Request]:
        """Parse, tokenise and queue a chat (chat=True) or completions body."""
        self._check_model(body)
        raw = [protocol.messages(body)] if chat else protocol.prompts(body)
        job = protocol.parse_job(body, chat, default_max=self.default_max_tokens if chat else 16,
                                 max_tokens_limit=self.max_tokens_limit, max_n=self.max_n)
        if self.record:
            self.seen.append({"endpoint": "chat" if chat else "completions", "prompts": raw, "time": time.time()})
        job.prompt_ids = [encode_prompt(self.tokenizer, p) for p in raw]
        if self.context and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            # no budget asked for: the default, cut to the context the longest prompt leaves (as vLLM does)
            room = self.context - max(len(ids) for ids in job.prompt_ids)
            job.params.max_tokens = max(1, min(job.params.max_tokens, room))
        for ids in job.prompt_ids:
            if not ids:
                raise protocol.bad("a prompt encodes to no tokens", "messages" if chat else "prompt")
            if min(ids) < 0 or max(ids) >= self.vocab:
                bad_id = min(ids) if min(ids) < 0 else max(ids)
                raise protocol.bad(f"prompt token id {bad_id} is outside the vocabulary [0, {self.vocab})", "prompt")
            if self.context and len(ids) + job.params.max_tokens > self.context:
                raise protocol.bad(f"prompt ({len(ids)} tokens) + max_tokens ({job.params.max_tokens}) exceeds the "
                                   f"model's context of {self.context} tokens", "messages" if chat else "prompt",
                                   "context_length_exceeded")
        req = Request(job.prompt_ids, job.n, job.params, uuid.uuid4().hex)
        try:
            if self.speculative is not None and self.speculative.eligible(req):
                self.speculative.submit(req)
            else:
                self.engine.submit(req)
        except QueueFull as e:
            self.count("rejected")
            raise RequestError(503, str(e), None, "queue_full") from None
        with self._lock:
            self.prompt_tokens += sum(len(p) for p in job.prompt_ids)
        return job, req

    def _events(self, req: Request, alive: Callable[[], bool], poll: float) -> Iterator[tuple]:
        """The request's engine events until every sample finished; cancels it if the client goes away."""
        left, checked = len(req.prompts) * req.n, time.monotonic()
        while left:
            if time.monotonic() - checked >= poll:  # by the clock: events may never pause long enough to wait
                if not alive():
                    req.cancel()
                    raise ClientGone()
                checked = time.monotonic()
            try:
                ev = req.events.get(timeout=poll)
            except queue.Empty:
                continue
            if ev[0] == "error":
                req.cancel()
                raise RuntimeError(f"generation failed: {ev[1]}")
            if ev[0] == "finish":
                left -= 1
                if ev[2] == "cancelled":
                    raise ClientGone()
            yield ev

    def outputs(self, job: Job) -> list[output.SeqOut]:
        return [output.SeqOut(self.tokenizer, job, ids) for ids in job.prompt_ids for _ in range(job.n)]

    def collect(self, job: Job, req: Request, alive: Callable[[], bool], poll: float = 0.05) -> dict:
        """The whole response, once every sample finished."""
        outs = self.outputs(job)
        for ev in self._events(req, alive, poll):
            if ev[0] == "token":
                outs[ev[1]].add(*ev[2:])
            else:
                outs[ev[1]].reason = ev[2]
        return output.response(job, self.model_id, outs)

    def stream(self, job: Job, req: Request, alive: Callable[[], bool], poll: float = 0.05) -> Iterator[dict]:
        """Chunks as tokens arrive (one per sample and token at most), then a usage chunk if asked."""
        outs = self.outputs(job)
        head = {"id": output.new_id(job), "object": "chat.completion.chunk" if job.chat else "text_completion",
                "created": int(time.time()), "model": self.model_id}
        started = [False] * len(outs)
        for ev in self._events(req, alive, poll):
            out = outs[ev[1]]
            if ev[0] == "token":
                out.add(*ev[2:])
            else:
                out.reason = ev[2]
            c = output.chunk(job, head, ev[1], out, not started[ev[1]])
            if c is not None:
                started[ev[1]] = True
                yield c
        if job.include_usage:
            yield {**head, "choices": [], "usage": output.usage(job, outs)}

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_id, "object": "model", "created": 0,
                                             "owned_by": "alignlab"}]}

    # ------------------------------------------------------------ operations

    def health(self) -> dict:
        e = self.engine
        return {"status": "ok", "model": self.model_id, "running": len(e.rows), "queue_depth": e.queue_depth,
                "weights_version": self.weights_version}

    def metrics(self) -> str:
        """Prometheus text exposition (version 0.0.4)."""
        e = self.engine
        lines = ["# HELP alignlab_requests_total Requests by outcome.", "# TYPE alignlab_requests_total counter"]
        with self._lock:
            outcomes = dict(self.outcomes)
        for k in ("ok", "error", "rejected", "cancelled"):
            lines.append(f'alignlab_requests_total{{outcome="{k}"}} {outcomes.get(k, 0)}')
        for name, kind, value, doc in (
                ("generated_tokens_total", "counter", e.tokens, "Tokens sampled."),
                ("prompt_tokens_total", "counter", self.prompt_tokens, "Prompt tokens of accepted requests."),
                ("decode_steps_total", "counter", e.steps, "Batched decode forwards."),
                ("prefills_total", "counter", e.prefills, "Prompt prefills."),
                ("tokens_per_second", "gauge", round(e.tokens_per_second(), 3), "Tokens/s over the last 10 s."),
                ("queue_depth", "gauge", e.queue_depth, "Requests waiting for a batch slot."),
                ("running_sequences", "gauge", len(e.rows), "Sequences in the decode batch."),
                ("weights_version", "gauge", self.weights_version, "Weight loads since start.")):
            lines += [f"# HELP alignlab_{name} {doc}", f"# TYPE alignlab_{name} {kind}", f"alignlab_{name} {value}"]
        return "\n".join(lines) + "\n"

    def load_weights(self, body: dict, authorization: str | None) -> dict:
        if not self.allow_load:
            raise RequestError(403, "load_weights is disabled on this server", None, "forbidden")
        if self.admin_token_env is not None:
            expected = f"Bearer {os.environ.get(self.admin_token_env, '')}"
            if not hmac.compare_digest((authorization or "").encode(), expected.encode()):
                raise RequestError(401, "load_weights needs the admin bearer token", None, "unauthorized")
        try:
            path = weights.checked_dir(body.get("path"), self.weights_root)
        except PermissionError as e:
            raise RequestError(403, str(e), "path", "forbidden") from None
        except AlignlabError as e:
            raise RequestError(400, str(e), "path", "invalid_value") from None
        with self._load_lock:  # one load at a time; requests keep being answered meanwhile
            try:
                kind, apply = weights.prepare(path, self.engine.model)
            except AlignlabError as e:
                raise RequestError(400, str(e), "path", "invalid_value") from None
            try:
                self.engine.call(lambda: self._swap(apply))
            except Exception as e:  # e.g. an adapter whose targets or shapes do not fit the served model
                raise RequestError(400, f"load_weights: could not apply {path}: {type(e).__name__}: {e}"[:500],
                                   "path", "invalid_value") from None
            self.weights_version += 1
        return {"status": "ok", "path": str(path), "model": self.model_id, "kind": kind,
                "weights_version": self.weights_version}

    def _swap(self, apply: Callable[[Any], Any]) -> None:
        """On the scheduler thread, between steps."""
        self.engine.model = self.model = apply(self.engine.model)
