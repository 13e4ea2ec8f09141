"""Dataset mixtures: `data: [{path: a.jsonl, weight: 1.0}, {path: b.json, weight: 0.5}, ...]`.

Each source is read, sliced (its own data_offset / data_limit) and split into train / held-out rows on its
own (seeded), so the held-out rows of every source are never trained on. Then each source's training rows
are weighted: `weight` is how many times its rows count, the fractional part a seeded sample without
replacement (0.5: a random half; 2: every row twice; 1.5: every row once plus a random half), as
open-instruct's dataset mixer takes a fraction per dataset. Held-out rows are never weighted. Per-source
counts are printed and written to split.json.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from alignlab.config import ConfigError


@dataclass
class DataSource:
    """One source of a mixture."""

    path: str
    """Data file (any format the data layer reads) or hub id."""
    weight: float = 1.0
    """How many times the source's training rows count: 0.5 a seeded half, 2 every row twice."""
    data_offset: int = 0
    """First record of the file used (0-based, counted before bad records are skipped)."""
    data_limit: int | None = None
    """At most this many records from data_offset on (null: to the end)."""

    def validate(self) -> None:
        if not 0 < self.weight < float("inf"):
            raise ConfigError(f"data: weight of {self.path} must be positive and finite, got {self.weight}")
        if self.data_offset < 0 or (self.data_limit is not None and self.data_limit < 1):
            raise ConfigError(f"data: {self.path}: data_offset must be >= 0 and data_limit >= 1 or null")


def sources_of(data: Any, data_offset: int = 0, data_limit: int | None = None) -> list[DataSource]:
    """The sources of a config's `data`: one file (with the config's data_offset / data_limit), or a list of
    DataSource / mappings / paths. The config-level slice keys apply to a single file only."""
    if isinstance(data, (str, DataSource)) or not isinstance(data, (list, tuple)):
        one = data if isinstance(data, DataSource) else DataSource(str(data), 1.0, data_offset, data_limit)
        return [one]
    if data_offset or data_limit is not None:
        raise ConfigError("data_offset / data_limit apply to a single data file; in a mixture give each source "
                          "its own: data: [{path: ..., data_offset: ..., data_limit: ...}, ...]")
    out = []
    for item in data:
        src = item if isinstance(item, DataSource) else DataSource(**item) if isinstance(item, dict) else \
            DataSource(str(item))
        src.validate()
        out.append(src)
    if not out:
        raise ConfigError("data: the mixture is empty")
    return out


def data_label(data: Any) -> str:
    """A short name of `data` for messages: the path, or the paths of a mixture joined by '+'."""
    return "+".join(s.path for s in sources_of(data))


def weighted(rows: list, weight: float, seed: int) -> list:
    """The rows repeated int(weight) times plus a seeded sample of round(frac x n) of them (order kept)."""
    whole, frac = int(weight), weight - int(weight)
    out = [r for _ in range(whole) for r in rows]
    k = round(frac * len(rows))
    if k:
        keep = set(random.Random(seed).sample(range(len(rows)), k))
        out += [r for i, r in enumerate(rows) if i in keep]
    return out
