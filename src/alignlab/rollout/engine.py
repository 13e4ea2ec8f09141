"""The decode loop: prefix-shared prefill, a reserved KV cache, finished rows dropped, and continuous batching.

`Engine.run` decodes every (prompt, sample) row of a generate() call with at most `batch_size` rows in
flight. A step samples one token for every live row, records it, drops the rows that finished, runs one
forward over the rest, and then, when at least n slots are free and prompts are waiting, prefills the next
waiting prompts (once per prompt; their cache rows are repeated for the n samples) and appends their rows to
the running batch (rollout/kvcache.py right-aligns them). So the batch stays full while rows of ragged
length finish, instead of decoding an ever smaller batch until its longest row ends.

Greedy output is the same whatever joins or leaves the batch: a row attends only to its own columns
(masked gap on its left) and its position ids count its own tokens (tests/unit/test_rollout_engine.py).
Sampled output is a function of (seed, prompts, n, batch_size, sort order): the private generator draws
one uniform per live row per step, in row order.
"""

from __future__ import annotations

from collections import deque
from typing import Any

EngineRow = tuple[list[int], "list[float] | None", str]


def left_pad(prompts: list[list[int]], pad_id: int, device):
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[r, width - len(p):] = 1
    return ids.to(device), mask.to(device)


class Engine:
    """One generate() call's rows. `forward(**kwargs) -> logits` is the model call (plain or with bf16 weights:
    see rollout/weights.py); `sample(logits, rows) -> (tokens, log-probs)` picks the tokens
    (`rows`: the global row ids of the live rows, for per-row constraints); `on_token(rows, tokens)` sees
    every sampled token (constraint state); `stop_hit(ids) -> bool` checks stop strings."""

    def __init__(self, model: Any, forward, prompts: list[list[int]], order: list[int], n: int, cfg: Any,
                 eos: list[int], pad_id: int, sample, stop_hit=None, on_token=None):
        import torch

        self.model, self.forward, self.prompts, self.n, self.cfg = model, forward, prompts, n, cfg
        self.sample, self.stop_hit, self.on_token, self.pad_id = sample, stop_hit, on_token, pad_id
        self.device = model.device
        self.cache_dtype = getattr(forward, "cache_dtype", None)  # KV cache dtype the forward wants (weights.py)
        self.waiting = deque(order)
        self.eos = torch.tensor(eos or [-1], device=self.device)
        total = len(prompts) * n
        self.toks = torch.full((total, cfg.max_new_tokens), pad_id, dtype=torch.long, device=self.device)
        self.lps = torch.zeros((total, cfg.max_new_tokens), device=self.device) if cfg.logprobs else None
        self.length = [0] * total
        self.reason = ["length"] * total
        self.cache = self.growing = None
        self.live = torch.zeros(0, dtype=torch.long, device=self.device)  # global row ids of the batch rows
        self.count = torch.zeros(0, dtype=torch.long, device=self.device)  # tokens generated per batch row
        self.mask = self.pos = self.logits = None
        self.prefills = self.steps = 0  # prefill and decode forwards run: tests read them

    def run(self) -> list[EngineRow]:
        from alignlab.rollout.kvcache import new_cache

        while self.waiting or self.live.numel():
            if not self.live.numel():  # a fresh batch (first one, or after a static batch ended)
                self.cache, self.growing = new_cache(self.model, self._reserve(), self.cache_dtype)
                self.mask = None
                self._admit()
            tok, lp = self.sample(self.logits, self.live, self.count)
            done = self._record(tok, lp)
            keep = (~done).nonzero()[:, 0]
            if keep.numel() < done.numel():
                self._drop(keep)
                tok = tok[keep]
            if self.live.numel():
                self._step(tok)
            if self._can_join():
                self._admit()
        rows = self.toks.tolist()
        lps = self.lps.tolist() if self.lps is not None else None
        return [(rows[r][:self.length[r]], lps[r][:self.length[r]] if lps else None, self.reason[r])
                for r in range(len(rows))]

    def _can_join(self) -> bool:
        """Continuous batching: a waiting prompt joins once its n rows fit beside the running ones."""
        live = self.live.numel()
        return bool(self.growing and self.cfg.continuous_batching and self.waiting and live
                    and self.cfg.batch_size - live >= self.n)

    def _reserve(self) -> int:
        return max(len(p) for p in self.prompts) + self.cfg.max_new_tokens

    def _admit(self) -> None:
        """Prefill the next waiting prompts that fit (at least one) and add their n rows each to the batch."""
        import torch

        from alignlab.rollout.kvcache import new_cache

        free = max(self.n, self.cfg.batch_size - self.live.numel())
        take = [self.waiting.popleft() for _ in range(min(len(self.waiting), max(1, free // self.n)))]
        ids, mask = left_pad([self.prompts[i] for i in take], self.pad_id, self.device)
        joining = self.live.numel() > 0
        cache = new_cache(self.model, dtype=self.cache_dtype)[0] if joining else self.cache  # merged at once: no reserve
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.forward(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache)
        self.prefills += 1
        rows = torch.tensor([i * self.n + j for i in take for j in range(self.n)], device=self.device)
        if self.n > 1:  # prefix sharing: the n samples of a prompt share one prefill
            for layer in cache.layers:
                layer.repeat_rows(self.n) if self.growing else layer.batch_repeat_interleave(self.n)
            logits, mask = logits.repeat_interleave(self.n, 0), mask.repeat_interleave(self.n, 0)
        pos = mask.sum(-1, keepdim=True)
        if joining:
            for layer, new in zip(self.cache.layers, cache.layers):
                grown = layer.append_rows(new, self.cfg.max_new_tokens)
            width = self.mask.shape[1] + grown
            self.mask = torch.cat([self.mask.new_zeros(self.mask.shape[0], grown), self.mask], 1)
            mask = torch.cat([mask.new_zeros(mask.shape[0], width - mask.shape[1]), mask], 1)
            self.mask, self.pos = torch.cat([self.mask, mask]), torch.cat([self.pos, pos])
            self.logits = torch.cat([self.logits, logits])
            self.live, self.count = torch.cat([self.live, rows]), torch.cat([self.count, torch.zeros_like(rows)])
        else:
            self.mask, self.pos, self.logits, self.live = mask, pos, logits, rows
            self.count = torch.zeros_like(rows)

    def _record(self, tok, lp):
        """Store this step's tokens; return the rows that finished (EOS, stop string, or length)."""
        import torch

        self.toks[self.live, self.count] = tok
        if self.lps is not None:
            self.lps[self.live, self.count] = lp
        if self.on_token is not None:
            self.on_token(self.live, tok)
        self.count = self.count + 1
        eos = torch.isin(tok, self.eos)
        full = self.count >= self.cfg.max_new_tokens
        done = eos | full
        for r in done.nonzero()[:, 0].tolist():
            row = int(self.live[r])
            self.length[row] = int(self.count[r])
            if eos[r]:
                self.reason[row] = "eos"
        if self.stop_hit is not None:
            for r in (~eos).nonzero()[:, 0].tolist():
                row, c = int(self.live[r]), int(self.count[r])
                if self.stop_hit(self.toks[row, :c]):  # a view: the checker reads only its tail
                    self.length[row], self.reason[row] = c, "stop"
                    done[r] = True
        return done

    def _drop(self, keep) -> None:
        """Drop finished rows from the batch and the cache; with our cache, also the leading columns that
        are padding in every remaining row (later steps attend over fewer columns)."""
        self.live, self.count, self.pos = self.live[keep], self.count[keep], self.pos[keep]
        self.mask = self.mask[keep]
        if not keep.numel():
            return
        lead = int((self.mask.cumsum(-1) == 0).sum(-1).min()) if self.growing else 0
        for layer in self.cache.layers:
            layer.select(keep, lead) if self.growing else layer.batch_select_indices(keep)
        self.mask = self.mask[:, lead:]

    def _step(self, tok) -> None:
        import torch

        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        self.logits = self.forward(input_ids=tok[:, None], attention_mask=self.mask, position_ids=self.pos,
                                   cache=self.cache)
        self.pos = self.pos + 1
        self.steps += 1

