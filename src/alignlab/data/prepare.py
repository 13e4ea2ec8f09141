"""Rows to training examples, one copy for every trainer (sft, dpo, rm): read, split, tokenise.

- `load_task_rows(path, task, ...)`: `data.sources.load_rows` with the config's format, column mapping and
  bad-row policy; what was skipped or dropped is printed once.
- `split_eval(rows, fraction, seed, cap)`: the seeded held-out split.
- `train_eval_rows(cfg, load)`: (train rows, eval rows) from `cfg.eval_data` or the held-out split.
- `tokenize_rows(rows, tokenize, keep, source, max_length)`: examples that still hold a trained token after
  truncation; the others are counted and dropped, and none left is an error naming the source.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from alignlab.errors import AlignlabError


def load_task_rows(path: str, task: str, *, data_format: str | None = None, columns: Any = None,
                   on_bad_row: str = "error") -> list:
    """Validated rows of `task` from `path` (any format the data layer reads, or a column mapping)."""
    from alignlab.data.sources import load_rows

    result = load_rows(path, task=task, format=data_format, columns=columns, on_bad_row=on_bad_row)
    if result.skipped or result.dropped:
        dropped = f", dropped {dict(result.dropped)}" if result.dropped else ""
        print(f"{path}: skipped bad records {dict(result.skipped)}{dropped}", flush=True)
    return result.rows


def split_eval(rows: list, fraction: float, seed: int, cap: int) -> tuple[list, list]:
    """Seeded held-out split: (train rows, eval rows), at least one eval row when fraction > 0."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(cap, max(1, round(fraction * len(rows))))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in order[:n_eval]]


def train_eval_rows(cfg: Any, load: Callable[[str], list]) -> tuple[list, list]:
    """(train rows, eval rows): eval from `cfg.eval_data` (at most max_eval_rows) or a seeded held-out split
    of the training rows. `load(path)` reads one file."""
    rows = load(cfg.data)
    if cfg.eval_data:
        return rows, load(cfg.eval_data)[: cfg.max_eval_rows]
    return split_eval(rows, cfg.eval_split, cfg.seed, cfg.max_eval_rows)


def tokenize_rows(rows: Sequence[Any], tokenize: Callable[[Any], Any], keep: Callable[[Any], bool], source: str,
                  max_length: int) -> list:
    """`tokenize(row)` for every row, keeping the examples `keep` accepts (a completion token survived
    truncation); the dropped ones are counted, and no example left is an error."""
    out = [ex for ex in (tokenize(r) for r in rows) if keep(ex)]
    if len(out) < len(rows):
        print(f"{source}: {len(rows) - len(out)} rows have no completion token left within max_length "
              f"{max_length}; dropped", flush=True)
    if not out:
        raise AlignlabError(f"{source}: no trainable rows (raise max_length?)")
    return out


def sft_examples(rows: Sequence[Any], tokenizer: Any, max_length: int, source: str) -> list:
    """TokenizedSFT examples with at least one trained token (a label past the first position)."""
    from alignlab.data.tokenize import tokenize_sft

    return tokenize_rows(rows, lambda r: tokenize_sft(r, tokenizer, max_length),
                         lambda ex: any(label != -100 for label in ex.labels[1:]), source, max_length)


def preference_examples(rows: Sequence[Any], tokenizer: Any, max_length: int, max_prompt_length: int | None,
                        source: str, paired: bool = True) -> list:
    """Tokenised pairs (or unpaired examples); ones left with an empty completion are dropped, as TRL does."""
    from alignlab.data.tokenize import tokenize_pair, tokenize_unpaired

    if paired:
        return tokenize_rows(rows, lambda r: tokenize_pair(r, tokenizer, max_length, max_prompt_length),
                             lambda ex: bool(ex.chosen_ids and ex.rejected_ids), source, max_length)
    return tokenize_rows(rows, lambda r: tokenize_unpaired(r, tokenizer, max_length, max_prompt_length),
                         lambda ex: bool(ex.completion_ids), source, max_length)
