"""Held-out honesty for `alignlab eval`: which scored records a checkpoint's run trained on.

A training run writes output_dir/split.json (data/prepare.py: per source the file, its sha256 and the record
ids trained on). For a checkpoint folder, that file is read from the folder or the run folder above it, and
every evaluation item's scored records of the same file (same sha256, or same path when no hash) that the
run trained on are reported: those numbers are not held-out numbers.
"""

from __future__ import annotations

from pathlib import Path


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


def leak_warnings(evaluations: list, checkpoints: list[str], records_of: dict[int, list[int]]) -> list[str]:
    """One line per (evaluation, checkpoint) that scores records the checkpoint's run trained on;
    `records_of[id(spec)]`: the record ids an evaluation scored."""
    out = []
    for spec in evaluations:
        records = records_of.get(id(spec), [])
        for name in checkpoints:
            seen = trained_on(name, spec.data, records)
            if seen:
                out.append(f"warning: evaluation {spec.name or spec.kind} scores {len(seen)} of {len(records)} "
                           f"records of {spec.data} that {name}'s run trained on (records {seen[0]}..{seen[-1]}; "
                           f"see its split.json): its numbers are not held-out numbers")
    return out
