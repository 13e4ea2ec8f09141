"""What a client asks the continuous-batching engine (rollout/scheduler.py) for, and how it hears back."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from alignlab.errors import AlignlabError

__all__ = ["QueueFull", "Request", "SeqParams"]


@dataclass
class SeqParams:
    """How one request is sampled (every sample of every prompt of it)."""

    max_tokens: int
    """Most tokens generated per sample (EOS included)."""
    temperature: float = 1.0
    """0 = greedy (argmax); else logits are divided by it before sampling."""
    top_p: float = 1.0
    """Nucleus sampling mass (1 = off)."""
    top_k: int = 0
    """Keep the k most likely tokens (0 = off)."""
    stop: list[str] = field(default_factory=list)
    """A sample finishes ('stop') once its decoded text contains one of these."""
    seed: int = 0
    """Seed of the per-sample generators."""
    logprobs: int | None = None
    """None: no log-probs; k >= 0: the sampled token's log-prob and the k most likely alternatives."""
    ignore_eos: bool = False
    """Keep decoding past EOS until max_tokens (benchmarks, tests)."""
    skip_special: bool = True
    """Stop strings are looked for in the text decoded as the answer is (skip_special_tokens): a stop string that
    spells a special token then stops a request that keeps special tokens in its text."""
    first_prompt: int | None = None
    """alignlab extension (`alignlab_first_prompt`): draw each sample keyed by (seed, global row, position) as
    generate()'s per_row_seed does, the request's prompt i being global prompt first_prompt + i, so an RL
    trainer using this server as its rollout engine gets the samples it would draw in-process."""

    def sampling_config(self) -> Any:
        """The generate.SamplingConfig every sample of the request is drawn under (validated)."""
        from alignlab.rollout.generate import SamplingConfig

        cfg = SamplingConfig(max_new_tokens=self.max_tokens, temperature=self.temperature or 1.0, top_p=self.top_p,
                             top_k=self.top_k, greedy=self.temperature == 0, seed=self.seed,
                             per_row_seed=self.first_prompt is not None, first_prompt=self.first_prompt or 0)
        cfg.validate()
        return cfg

    def generator(self, device: Any) -> Any:
        """The request's torch.Generator, seeded with its seed."""
        import torch

        return torch.Generator(device=device).manual_seed(self.seed % (1 << 64))


class QueueFull(AlignlabError):
    """The waiting queue holds `max_queue` requests already."""


class Request:
    """Prompts (token ids) x n samples. The engine puts events on `events`:
    ("token", seq, token_id, logprob | None, [(token_id, logprob), ...] | None), ("finish", seq, reason)
    with reason eos / stop / length / cancelled, and ("error", message). seq = prompt_index * n + sample."""

    def __init__(self, prompts: list[list[int]], n: int, params: SeqParams, request_id: str = ""):
        if not prompts or any(not p for p in prompts):
            raise AlignlabError("scheduler: every prompt needs at least one token")
        self.prompts, self.n, self.params, self.id = prompts, n, params, request_id
        self.events: queue.Queue = queue.Queue()
        self._cancelled = threading.Event()
        # Bookkeeping, written by the engine: rows not finished, per-row lengths and finish reasons, the
        # request's generator, and the steps at which it was submitted and admitted.
        self.remaining = len(prompts) * n
        self.lengths: list[int] = [0] * self.remaining
        self.reasons: list[str | None] = [None] * self.remaining
        self.gen: Any = None
        self.cfg: Any = None  # the request's generate.SamplingConfig, built by the engine
        self.submitted_step: int | None = None
        self.admitted_step: int | None = None

    def cancel(self) -> None:
        """Stop every sample of this request at the next decode step (they finish with 'cancelled')."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()
