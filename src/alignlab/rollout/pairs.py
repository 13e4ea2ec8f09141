"""Preference pairs from a model's own samples: best vs worst of k samples per prompt, by a reward.

Used by the demo and the frontier experiment (the DPO paper's controlled-sentiment pairs, Sec. 6.1, with
best-vs-worst instead of two random samples: a stronger signal). Sampling goes in chunks of prompts with a
fresh seed per chunk (seed + first prompt index), so the pairs are a pure function of the seed.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def progress_bar(label: str, total: int):
    """Yields (progress, task) for `progress.advance(task, n)`: a rich bar on a terminal, else a plain line per
    advance on stderr (a log file or CI sees how far a long phase is; rich would print nothing until the end)."""
    if not sys.stderr.isatty():
        yield _PlainBar(label, total), None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as p:
        yield p, p.add_task(label, total=total)


class _PlainBar:
    def __init__(self, label: str, total: int):
        self.label, self.total, self.done, self.t0 = label, total, 0, time.perf_counter()

    def advance(self, task: Any, n: int = 1) -> None:
        self.done += n
        print(f"{self.label}: {self.done}/{self.total} ({time.perf_counter() - self.t0:.0f} s)", file=sys.stderr,
              flush=True)


def sample_pairs(model: Any, tokenizer: Any, rows: list, reward_fn: Any, path: Path, *, samples_per_prompt: int,
                 max_new_tokens: int, seed: int) -> Path:
    """Best-vs-worst preference pairs from the model's samples, written to `path` as TRL-format jsonl."""
    from alignlab.rollout.generate import GenerationResult, SamplingConfig
    from alignlab.rollout.sampling import BestOfN, preference_records, sample_and_score, write_jsonl

    sc = SamplingConfig(max_new_tokens=max_new_tokens, seed=seed, batch_size=64)
    groups, samples, tokens, seconds = [], [], 0, 0.0
    chunk = max(1, 64 // samples_per_prompt)
    with progress_bar("sample pairs", len(rows)) as (bar, task):
        for start in range(0, len(rows), chunk):
            sc.seed = seed + start  # a fresh stream per chunk; the run stays a pure function of the seed
            part = sample_and_score(model, tokenizer, rows[start:start + chunk], reward_fn, samples_per_prompt, sc)
            groups += part.groups
            samples += part.generation.samples
            tokens, seconds = tokens + part.generation.num_tokens, seconds + part.generation.seconds
            bar.advance(task, len(part.groups))
    result = BestOfN(groups, GenerationResult(samples, tokens, seconds))
    records = preference_records(result)
    gap = sum(r["score_chosen"] - r["score_rejected"] for r in records) / max(len(records), 1)
    print(f"{len(records)} pairs from {len(rows)} prompts x {samples_per_prompt} samples "
          f"({tokens / max(seconds, 1e-9):.0f} tok/s), mean reward gap {gap:.3f}, dropped {result.dropped}",
          flush=True)
    return write_jsonl(path, records)
