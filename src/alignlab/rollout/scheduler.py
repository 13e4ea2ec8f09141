"""Continuous batching: one scheduler thread owns the model and decodes every live sequence together.

Waiting prompts that fit are prefilled together (a prompt's n samples share its prefill), their rows JOIN the
running batch, and a row LEAVES the batch (and the KV cache) the step it finishes or its client goes away. One
decode step is one forward over all live rows, so 8 concurrent 32-token requests cost 31 decode steps, not
8 x 32 (iteration-level scheduling: Orca, Yu et al. 2022, OSDI, Sec. 3; vLLM). A prompt's n rows join when n of
`max_batch` slots are free (or the batch is empty). The batched KV cache (rollout/kvcache.py, generate()'s too)
is right-aligned with per-row position ids: a row sees the positions it would alone.

Each request has its own `torch.Generator` seeded with its seed and draws one uniform per live row per step in
row order, as `generate()` draws (or, with the alignlab_first_prompt extension, per-row keyed draws, as
generate()'s per_row_seed); tokens are picked by `generate.sample_next`. So a seeded request gives the same
tokens whatever else shares the batch (while its rows fit), and those of `generate(..., SamplingConfig(seed=s,
batch_size=max_batch), n=n)` up to float reassociation of batched kernels. Log-probs are under
softmax(logits / T), like `SamplingConfig.logprobs` (what an RL trainer needs; greedy: T = 1).
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alignlab.errors import AlignlabError
from alignlab.rollout.encode import eos_token_ids
from alignlab.rollout.generate import SamplingConfig, forward_kwargs, sample_next, stop_tail
from alignlab.rollout.kvcache import full_attention, new_cache
from alignlab.rollout.request import QueueFull, Request, SeqParams
from alignlab.rollout.weights import keep_last

__all__ = ["Engine", "QueueFull", "Request", "SeqParams"]


@dataclass
class _Row:
    req: Request
    seq: int
    gen: Any
    cfg: SamplingConfig
    pos: int
    tokens: list[int] = field(default_factory=list)


def _keys(r: _Row) -> tuple[list[int], list[int]] | None:
    """per_row_seed requests: the row's global id and its own token position (as generate() keys them)."""
    return ([r.cfg.first_prompt * r.req.n + r.seq], [len(r.tokens)]) if r.cfg.per_row_seed else None


def _stop_hit(tokenizer: Any, stops: list[str], ids: list[int], skip_special: bool = True) -> bool:
    """Decode only the tail (enough tokens to spell the longest stop string: generate.stop_tail): O(1) per step."""
    text = tokenizer.decode(stop_tail(ids, stops, set(tokenizer.all_special_ids) if skip_special else ()),
                            skip_special_tokens=skip_special)
    return any(s in text for s in stops)


class _Call:
    """A function run on the scheduler thread between two decode steps (e.g. swapping weights)."""

    def __init__(self, fn: Callable[[], Any]):
        self.fn, self.done, self.result, self.error = fn, threading.Event(), None, None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as e:  # handed to the caller's thread, which re-raises it
            self.error = e
        self.done.set()


_ENGINES: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Stop every engine after its current step before the interpreter tears torch down (a daemon thread
    killed inside a forward aborts the process)."""
    for engine in list(_ENGINES):
        engine.close()


class Engine:
    """The scheduler thread and its batch. `submit` a Request, read its events; `call` runs a function on the
    scheduler thread between steps; `pause`/`resume` hold admission and decoding (maintenance, tests).

    Counters (read from any thread): `steps` (batched decode forwards), `prefills` (one per prompt),
    `tokens` (sampled tokens), `finished` (sequences by finish reason), `history` (the last finished requests:
    id, submitted/admitted/finished step, tokens per sample, finish reasons)."""

    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int = 64, max_queue: int = 256, context: int = 0):
        if not full_attention(model):
            raise AlignlabError("serve: continuous batching needs a model whose layers are all full attention "
                                "(sliding-window or linear-attention layers are not supported yet)")
        if max_batch < 1 or max_queue < 1:  # every request passes through the queue, if only for a step
            raise AlignlabError(f"serve: max_batch and max_queue must be >= 1, got {max_batch}, {max_queue}")
        self.model, self.tokenizer, self.context = model, tokenizer, context
        self.max_batch, self.max_queue = max_batch, max_queue
        self.eos = set(eos_token_ids(model, tokenizer))
        self.rows: list[_Row] = []
        self.cache = self.mask = self.logits = None  # logits: the live rows' next-token logits, not yet sampled
        self._units: deque = deque()  # (request, prompt index) admitted from _waiting, not yet prefilled
        self.steps = self.prefills = self.tokens = self.requests_done = 0
        self.finished: dict[str, int] = {}
        self.history: deque = deque(maxlen=256)
        self._rate: deque = deque()
        self._waiting: deque[Request] = deque()
        self._calls: list[_Call] = []
        self._cond = threading.Condition()
        self._open = threading.Event()
        self._open.set()
        self._stopping = False
        self._kv = forward_kwargs(model)
        model.eval()
        self._thread = threading.Thread(target=self._loop, name="alignlab-scheduler", daemon=True)
        self._thread.start()
        _ENGINES.add(self)

    # ------------------------------------------------------------ API for other threads
    def submit(self, req: Request) -> Request:
        """Queue `req`; its sampling settings are checked here, so a bad one is the caller's error (it was met only
        at admission, on the scheduler thread, where it cancelled every live request)."""
        req.params.sampling_config()
        with self._cond:
            if self.queue_depth >= self.max_queue:  # a request whose client left holds no slot (finished at admission)
                raise QueueFull(f"serve: the queue is full ({self.max_queue} requests waiting)")
            req.submitted_step = self.steps
            self._waiting.append(req)
            self._cond.notify()
        return req

    def call(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run fn() on the scheduler thread between two steps and return its result (or raise its error)."""
        c = _Call(fn)
        with self._cond:
            self._calls.append(c)
            self._cond.notify()
        if not c.done.wait(timeout):
            raise TimeoutError("serve: the scheduler did not run the call in time")
        if c.error is not None:
            raise c.error
        return c.result

    def pause(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        with self._cond:
            self._open.set()
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=10)

    @property
    def queue_depth(self) -> int:
        return sum(not r.cancelled for r in self._waiting.copy())  # a copy: the scheduler thread pops meanwhile

    def tokens_per_second(self, window: float = 10.0) -> float:
        """Sampled tokens per second over the last `window` seconds of decoding."""
        now, rate = time.monotonic(), list(self._rate)
        recent = [(t, k) for t, k in rate if t >= now - window]
        if len(recent) < 2:
            return 0.0
        span = recent[-1][0] - recent[0][0]
        return sum(k for _, k in recent[1:]) / span if span > 0 else 0.0

    # ------------------------------------------------------------ the scheduler thread

    def _loop(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stopping and not self._calls and (not self._open.is_set() or (
                            not self.rows and not self._waiting and not self._units)):
                        self._cond.wait(0.5)
                    if self._stopping:
                        return
                    calls, self._calls = self._calls, []
                for c in calls:
                    c.run()
                if calls:
                    self._kv = forward_kwargs(self.model)  # a call may have wrapped the model (a LoRA adapter)
                if not self._open.is_set():
                    continue
                try:
                    self._drop_cancelled()
                    self._admit()
                    if self.rows:
                        self._sample_and_step()
                except Exception as e:  # e.g. out of memory: every live request learns why; the engine stays up
                    self._fail_all(f"{type(e).__name__}: {e}"[:500])

    def _admit(self) -> None:
        """Prefill waiting prompts while the batch has room: a prompt's n rows join when n slots are free (one
        prompt at least when the batch is empty), prompts in generate()'s order (longest first), all the
        prompts joining at one step in one left-padded forward. So a request is decoded as generate() with
        continuous batching and batch_size = max_batch decodes it."""
        free, take = self.max_batch - len(self.rows), []
        while True:
            if not self._units:
                # a request leaves the queue only when its first prompt joins now: until then it is one of the
                # max_queue waiting ones (queue_depth), not held outside the count; one whose client left is
                # taken at once (its rows finish as cancelled below) instead of waiting for slots it won't use
                head = self._waiting[0] if self._waiting else None
                if head is None or (not head.cancelled and (self.rows or take) and free < head.n):
                    break
                req = self._waiting.popleft()
                try:
                    self._open_request(req)
                except Exception as e:  # this request fails alone; the others go on
                    req.cancel()
                    req.events.put(("error", f"{type(e).__name__}: {e}"[:500]))
                continue
            req, i = self._units[0]
            if req.cancelled:
                self._units.popleft()
                for j in range(req.n):
                    self._finish(req, i * req.n + j, "cancelled")
                continue
            if (self.rows or take) and free < req.n:
                break
            take.append(self._units.popleft())
            free -= req.n
        if not take:
            return
        try:
            self._prefill(take)
        except Exception as e:  # these requests fail; the rows already decoding go on
            for req in {id(r): r for r, _ in take}.values():
                req.cancel()
                req.events.put(("error", f"{type(e).__name__}: {e}"[:500]))

    def _open_request(self, req: Request) -> None:
        req.admitted_step = self.steps
        req.gen, req.cfg = req.params.generator(self.model.device), req.params.sampling_config()
        self._units.extend((req, i) for i in sorted(range(len(req.prompts)), key=lambda i: -len(req.prompts[i])))

    def _prefill(self, units: list[tuple[Request, int]]) -> None:
        """One forward over the joining prompts, left-padded (position ids from the mask), then each prompt's
        cache row, mask row and logits repeated for its n samples (prefix sharing)."""
        import torch

        dev, prompts = self.model.device, [req.prompts[i] for req, i in units]
        width = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        cache = new_cache(self.model)[0]
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                            use_cache=True, logits_to_keep=keep_last(ids), **{self._kv: cache}).logits[:, -1]
        self.prefills += len(units)
        counts = torch.tensor([req.n for req, _ in units], device=dev)
        rows = [_Row(req, i * req.n + j, req.gen, req.cfg, pos=len(req.prompts[i]))
                for req, i in units for j in range(req.n)]
        self._join(rows, [(layer.keys.repeat_interleave(counts, 0), layer.values.repeat_interleave(counts, 0))
                          for layer in cache.layers], mask.repeat_interleave(counts, 0),
                   logits.repeat_interleave(counts, 0))

    def _join(self, rows: list[_Row], kv: list[tuple[Any, Any]], new_mask: Any, logits: Any) -> None:
        """Append prefilled rows to the batch: cache and mask right-aligned, and their first tokens' logits
        after the pending logits of the rows already there (generate()'s row order)."""
        import torch

        if self.cache is None:
            self.cache, self.mask = new_cache(self.model)[0], None
        for mine, (keys, values) in zip(self.cache.layers, kv):
            mine.append_kv(keys, values, spare=keys.shape[-2])
        old, width = (self.mask.shape[1] if self.mask is not None else 0), new_mask.shape[1]
        total = max(old, width)
        mask = torch.zeros((len(self.rows) + len(rows), total), dtype=torch.long, device=self.model.device)
        if self.mask is not None:
            mask[:len(self.rows), total - old:] = self.mask
        mask[len(self.rows):, total - width:] = new_mask
        self.mask = mask
        self.logits = logits if self.logits is None else torch.cat([self.logits, logits])
        self.rows.extend(rows)

    def _sample_and_step(self) -> None:
        """Sample every live row's next token from its pending logits, drop the rows that finished, and run
        one decode forward over the rest (their next pending logits)."""
        import torch

        done = self._sample(self.rows, self.logits)
        self.logits = None
        if any(done):
            self._compact([i for i, d in enumerate(done) if not d])
        if not self.rows:
            return
        dev, rows = self.model.device, self.rows
        inp = torch.tensor([[r.tokens[-1]] for r in rows], device=dev)
        pos = torch.tensor([[r.pos] for r in rows], device=dev)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(rows), 1)], dim=1)
        self.logits = self.model(input_ids=inp, attention_mask=self.mask, position_ids=pos, use_cache=True,
                                 logits_to_keep=1, **{self._kv: self.cache}).logits[:, -1]
        self.steps += 1
        for r in rows:
            r.pos += 1

    def _sample(self, rows: list[_Row], logits: Any) -> list[bool]:
        """Draw one token per row (each with its own generator), emit it, and say which rows finished."""
        import torch

        logits = logits.float()
        toks = [int(sample_next(logits[i:i + 1], r.cfg, r.gen, _keys(r))[0][0]) for i, r in enumerate(rows)]
        want = [i for i, r in enumerate(rows) if r.req.params.logprobs is not None]
        lps: dict[int, tuple[float, list | None]] = {}
        if want:
            temps = torch.tensor([1.0 if rows[i].cfg.greedy else rows[i].cfg.temperature for i in want],
                                 device=logits.device)
            logp = torch.log_softmax(logits[want] / temps[:, None], -1)
            chosen = logp.gather(-1, torch.tensor([toks[i] for i in want], device=logits.device)[:, None])[:, 0]
            top_k = max(rows[i].req.params.logprobs for i in want)
            top = logp.topk(top_k, -1) if top_k else None
            for w, i in enumerate(want):
                k = rows[i].req.params.logprobs
                alts = list(zip(top.indices[w, :k].tolist(), top.values[w, :k].tolist())) if k else None
                lps[i] = (float(chosen[w]), alts)
        done = []
        for i, r in enumerate(rows):
            r.tokens.append(toks[i])
            lp, alts = lps.get(i, (None, None))
            r.req.events.put(("token", r.seq, toks[i], lp, alts))
            reason = self._reason(r)
            if reason:
                self._finish(r.req, r.seq, reason, len(r.tokens))
            done.append(reason is not None)
        self.tokens += len(rows)
        self._rate.append((time.monotonic(), len(rows)))
        while len(self._rate) > 4096:
            self._rate.popleft()
        return done

    def _reason(self, r: _Row) -> str | None:
        p = r.req.params
        if not p.ignore_eos and r.tokens[-1] in self.eos:
            return "eos"
        if p.stop and _stop_hit(self.tokenizer, p.stop, r.tokens, p.skip_special):
            return "stop"
        if len(r.tokens) >= p.max_tokens or (self.context and r.pos >= self.context):
            return "length"
        return None

    def _finish(self, req: Request, seq: int, reason: str, length: int = 0) -> None:
        if req.reasons[seq] is not None:  # already finished (a failure right after its last token)
            return
        req.events.put(("finish", seq, reason))
        req.lengths[seq], req.reasons[seq] = length, reason
        self.finished[reason] = self.finished.get(reason, 0) + 1
        req.remaining -= 1
        if req.remaining == 0:
            self.requests_done += 1
            self.history.append({"id": req.id, "submitted_step": req.submitted_step,
                                 "admitted_step": req.admitted_step, "finished_step": self.steps,
                                 "tokens": list(req.lengths), "reasons": list(req.reasons)})

    def _drop_cancelled(self) -> None:
        gone = [i for i, r in enumerate(self.rows) if r.req.cancelled]
        if not gone:
            return
        for i in gone:
            r = self.rows[i]
            self._finish(r.req, r.seq, "cancelled", len(r.tokens))
        self._compact([i for i, r in enumerate(self.rows) if not r.req.cancelled])

    def _compact(self, keep: list[int]) -> None:
        """Drop finished rows from the cache, and leading columns that are padding in every remaining row."""
        import torch

        if not keep:
            self.rows, self.cache, self.mask, self.logits = [], None, None, None
            return
        idx = torch.tensor(keep, device=self.mask.device)
        if self.logits is not None:
            self.logits = self.logits[idx]
        mask = self.mask[idx]
        lead = int((mask.cumsum(-1) == 0).sum(-1).min())
        for layer in self.cache.layers:
            layer.select(idx, lead)
        self.mask = mask[:, lead:]
        self.rows = [self.rows[i] for i in keep]

    def _fail_all(self, message: str) -> None:
        for req in {id(r.req): r.req for r in self.rows}.values():
            req.cancel()
            req.events.put(("error", message))
        for r in self.rows:
            self._finish(r.req, r.seq, "cancelled", len(r.tokens))
        self.rows, self.cache, self.mask, self.logits = [], None, None, None
