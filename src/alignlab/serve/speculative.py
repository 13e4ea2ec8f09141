"""`alignlab serve --speculative medusa=DIR`: requests decoded with Medusa heads (rollout/speculative.py).

Tree verification runs one sequence at a time (batch 1), so speculative requests do not join the continuous
batch: a request with one prompt, n = 1 and no log-probs is queued here instead, and a worker thread decodes
the queued requests one after another. Each of its steps (a prefill, or one tree verification) runs on the
engine's scheduler thread through `Engine.call`, between two batched decode steps, so the model is only ever
used by one thread, weight loads stay atomic, and batched requests keep decoding while a speculative one is
served. Other requests (several prompts, n > 1, log-probs) go through the continuous batcher as before.
Sampling parameters are the request's (greedy for temperature 0: the same tokens as without heads);
the tree and typical-acceptance settings are the server's.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from alignlab.rollout.request import QueueFull, Request
from alignlab.rollout.speculative import MedusaDecoder, MedusaDecoding, SpeculativeStats, check_full_attention

__all__ = ["SpeculativeWorker"]


class SpeculativeWorker:
    """Decodes eligible requests with Medusa `heads`, one at a time, each step on `engine`'s thread.
    `stats` accumulates acceptance over every request served."""

    def __init__(self, engine: Any, heads: Any, decoding: MedusaDecoding, max_queue: int = 256):
        check_full_attention(engine.model)  # at start-up, not as each request's failure
        self.engine, self.heads, self.decoding, self.max_queue = engine, heads, decoding, max_queue
        self.tree = decoding.tree(heads.num_heads)
        self.stats = SpeculativeStats(0, 0, [0] * (self.tree.max_depth + 1))
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="alignlab-speculative", daemon=True)
        self._thread.start()

    @staticmethod
    def eligible(req: Request) -> bool:
        return len(req.prompts) == 1 and req.n == 1 and req.params.logprobs is None

    def submit(self, req: Request) -> None:
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(f"serve: the speculative queue is full ({self.max_queue} requests waiting)")
        self._queue.put(req)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            req = self._queue.get()
            if req is None:
                return
            try:
                self._serve(req)
            except Exception as e:  # this request fails; the worker goes on with the next
                req.cancel()
                req.events.put(("error", f"{type(e).__name__}: {e}"[:500]))

    def _decoder(self, req: Request) -> MedusaDecoder:
        """On the scheduler thread: the request's decoder, prefilled (the engine built its cfg and generator)."""
        from alignlab.rollout.scheduler import _stop_hit

        engine, p = self.engine, req.params
        req.admitted_step = engine.steps
        req.gen, req.cfg = p.generator(engine.model.device), p.sampling_config()
        stop = (lambda ids: _stop_hit(engine.tokenizer, p.stop, ids, p.skip_special)) if p.stop else None
        dec = MedusaDecoder(engine.model, self.heads, self.tree, req.prompts[0], req.cfg, self.decoding,
                            eos=set() if p.ignore_eos else engine.eos, gen=req.gen, stats=self.stats,
                            stop_hit=stop)
        dec.start()
        engine.prefills += 1
        return dec

    def _serve(self, req: Request) -> None:
        dec = self.engine.call(lambda: self._decoder(req))
        while dec.reason is None:
            if req.cancelled:
                self._finish(req, "cancelled", len(dec.done))
                return
            for tok in self.engine.call(lambda: self._step(dec)):
                req.events.put(("token", 0, tok, None, None))
        self._finish(req, dec.reason, len(dec.done))

    def _step(self, dec: MedusaDecoder) -> list[int]:
        toks = dec.step()
        self.engine.tokens += len(toks)
        return toks

    def _finish(self, req: Request, reason: str, length: int) -> None:
        """Through the engine's bookkeeping (finish counts, history), on its thread."""
        self.engine.call(lambda: self.engine._finish(req, 0, reason, length))
