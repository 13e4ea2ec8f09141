"""Held-out honesty for `alignlab eval`: which scored records a checkpoint's run trained on.

A training run writes output_dir/split.json (data/prepare.py: per source the file, its sha256 and the record
ids trained on). For a checkpoint folder, that file is read from the folder or the run folder above it, and
every evaluation item's scored records of the same file (same sha256, or same path when no hash) that the
run trained on are reported: those numbers are not held-out numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def trained_on(checkpoint: str, data: str, records: list[int]) -> list[int]:
    """The records among `records` of file `data` that the run which wrote `checkpoint` trained on, read from
    the split.json in the checkpoint's folder or the run folder above it; [] when there is none or the run
    trained on other files."""
    from alignlab.data.prepare import read_split, trained_records

    split = read_split(checkpoint) if Path(checkpoint).is_dir() else None
    if not split:
        return []
    trained = trained_records(split, data)
    return sorted({r for r in records if r in trained})


def leak_warnings(cfg: Any, records_of: dict[int, list[int]]) -> list[str]:
    """One line per (evaluation, model) that scores records the model's run trained on: the checkpoints, and an
    item's own scorer (reward_accuracy) and baseline (win_rate, ratings), whose numbers are reported too;
    `records_of[id(spec)]`: the record ids an evaluation scored."""
    out = []
    for spec in cfg.evaluations:
        records = records_of.get(id(spec), [])
        models = {name: "checkpoint" for name in cfg.checkpoints}
        if spec.scorer:
            models.setdefault(spec.scorer, "scorer")
        if spec.kind in ("win_rate", "ratings") and (spec.baseline or cfg.baseline):
            models.setdefault(spec.baseline or cfg.baseline, "baseline")
        for name, role in models.items():
            seen, note = trained_on(name, spec.data, records), "" if role == "checkpoint" else f"{role}; "
            if seen:
                out.append(f"warning: evaluation {spec.name or spec.kind} scores {len(seen)} of {len(records)} "
                           f"records of {spec.data} that {name}'s run trained on ({note}records {seen[0]}..{seen[-1]}; "
                           "see its split.json): its numbers are not held-out numbers")
    return out
