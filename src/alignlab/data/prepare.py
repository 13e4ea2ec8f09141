"""Rows to training examples, one copy for every trainer (sft, dpo, rm): read, split, tokenise.

- `load_task_rows(path, task, ...)`: `data.sources.load_rows` with the config's format, column mapping and
  bad-row policy; what was skipped or dropped is printed once.
- `slice_records(rows, offset, limit)`: the `data_offset` / `data_limit` keys, by record index of the file.
- `split_eval(rows, fraction, seed)`: the seeded held-out split, by record.
- `train_eval_rows(cfg, load)`: the run's `Split` (train, held out, scored) from `cfg.eval_data` or the split;
  `Split.save` writes output_dir/split.json (per source: file, sha256, slice, weight, record ids trained and
  held out), which `alignlab eval` reads (`read_split`, `trained_records`) to warn when it scores rows a
  checkpoint was trained on. `data` may be a mixture of sources (data/mixture.py).
- `tokenize_rows(rows, tokenize, keep, source, max_length)`: examples that still hold a trained token after
  truncation; the others are counted and dropped, and none left is an error naming the source.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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


def record_id(row: Any, position: int) -> int:
    """The row's record index in its file (rows converted from one record share it); its position otherwise."""
    origin = getattr(row, "origin", None)
    return origin.index if origin is not None else position


def slice_records(rows: list, offset: int = 0, limit: int | None = None) -> list:
    """Rows of records [offset, offset + limit) of their file (record indices, counted before bad records are
    skipped, so a training and an evaluation config naming the same range mean the same records)."""
    if offset == 0 and limit is None:
        return rows
    end = None if limit is None else offset + limit
    return [r for i, r in enumerate(rows) if record_id(r, i) >= offset and (end is None or record_id(r, i) < end)]


def split_eval(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """Seeded held-out split by record: (train rows, held-out rows). round(fraction x records) records, at
    least one when fraction > 0, are held out; every row of a held-out record is held out with it. The split
    depends on the rows, the fraction and the seed only."""
    ids = sorted({record_id(r, i) for i, r in enumerate(rows)})
    if fraction <= 0 or len(ids) < 2:
        return rows, []
    random.Random(seed).shuffle(ids)
    held = ids[: max(1, round(fraction * len(ids)))]
    rank = {rid: k for k, rid in enumerate(held)}
    train = [r for i, r in enumerate(rows) if record_id(r, i) not in rank]
    out = sorted(((rank[record_id(r, i)], i, r) for i, r in enumerate(rows) if record_id(r, i) in rank),
                 key=lambda t: t[:2])
    return train, [r for _, _, r in out]


@dataclass
class Split:
    """The rows a run trains on and scores, and what split.json records about them."""

    train: list
    held_out: list
    """Every held-out row (never trained on)."""
    scored: list
    """The held-out rows evaluation scores: the first max_eval_rows of `held_out` (cost only)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Split settings and `sources`: per data source its file, sha256, slice, weight, counts, record ids."""

    def save(self, output_dir: str | Path, *, resuming: bool = False) -> Path:
        """Write output_dir/split.json (`info`): see write_split."""
        return write_split(output_dir, self.info, resuming=resuming)


def write_split(output_dir: str | Path, info: dict[str, Any], *, resuming: bool) -> Path:
    """Write output_dir/split.json; an identical file is left untouched (a rerun of a finished run writes nothing).
    Resuming, a different one is a CheckpointError: the data changed under the checkpoint (a file edited or grown,
    another offset), so rows it trained on could now be held out and scored, or a model folder it reads did
    (`models`, train/resume.py model_sources)."""
    path = Path(output_dir) / "split.json"
    text = json.dumps(info, indent=1) + "\n"
    if path.is_file():
        old = path.read_text(encoding="utf-8")
        if old == text:
            return path
        before, now = json.loads(old), json.loads(text)
        for key in ("sources", "models"):  # written before splits recorded them
            if resuming and key not in before and key in now:
                before[key] = now[key]
        if resuming and before != now:
            from alignlab.errors import CheckpointError

            changed = _changes(before, now)
            raise CheckpointError(f"{path}: the data or model folders are not those the checkpoint trained on "
                                  f"({', '.join(changed[:4])} differ); restore them, or start afresh with resume=never")
    from alignlab.files import write_text_atomic

    return write_text_atomic(path, text)


def _changes(old: Any, new: Any, where: str = "split") -> list[str]:
    """Where two JSON values differ, as paths (split.sources[0].sha256)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for key in dict.fromkeys([*new, *old]) if old.get(key) != new.get(key)
                for c in _changes(old.get(key), new.get(key), f"{where}.{key}")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (a, b) in enumerate(zip(old, new)) if a != b for c in _changes(a, b, f"{where}[{i}]")]
    return [where]


def record_ids(rows: list) -> list[int]:
    return sorted({record_id(r, i) for i, r in enumerate(rows)})


def file_sha256(path: str | Path) -> str | None:
    """sha256 of a data file's bytes; None for a directory or a hub id."""
    p = Path(path)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def train_eval_rows(cfg: Any, load: Callable[[str], list]) -> Split:
    """The run's Split. Training rows are records [data_offset, data_offset + data_limit) of `cfg.data` (or of
    each source of a mixture, data/mixture.py); the held-out rows are `cfg.eval_data` or a seeded `eval_split`
    of those records, per source (decided by eval_split and seed alone); `max_eval_rows` only bounds how many
    held-out rows are scored, never what is trained on. A mixture's sources are weighted after the split."""
    from itertools import zip_longest

    from alignlab.data.mixture import sources_of, weighted

    sources = sources_of(cfg.data, getattr(cfg, "data_offset", 0), getattr(cfg, "data_limit", None))
    train, held_parts, parts = [], [], []
    for k, src in enumerate(sources):
        every = load(src.path)
        rows = slice_records(every, src.data_offset, src.data_limit)
        if not rows:
            raise AlignlabError(f"{src.path}: data_offset {src.data_offset} and data_limit {src.data_limit} select "
                                f"no rows of its {len(every)}")
        part_held: list = []
        if not cfg.eval_data:
            rows, part_held = split_eval(rows, cfg.eval_split, cfg.seed)
            if not rows:
                raise AlignlabError(f"{src.path}: eval_split {cfg.eval_split} holds out all of its "
                                    f"{len(part_held)} rows; nothing is left to train on")
        used = weighted(rows, src.weight, cfg.seed + k) if src.weight != 1.0 else rows
        train += used
        held_parts.append(part_held)
        parts.append({"data": src.path, "sha256": file_sha256(src.path), "data_offset": src.data_offset,
                      "data_limit": src.data_limit, "weight": src.weight, "train_rows": len(used),
                      "split_records": len(record_ids(rows)),  # the source's training split, before its weight
                      "train_records": record_ids(used), "held_out_records": record_ids(part_held)})
    # the sources' held-out rows taken in turn: cut at max_eval_rows, source order scored only the first sources
    held = [r for group in zip_longest(*held_parts) for r in group if r is not None]
    if cfg.eval_data:
        held = load(cfg.eval_data)
        parts.append({"data": str(cfg.eval_data), "sha256": file_sha256(cfg.eval_data), "eval_data": True,
                      "train_records": [], "held_out_records": record_ids(held)})
    # a held-out row with the content of a training row (a repeated record, a built-in set that repeats, eval_data
    # overlapping data) would be scored after training on it: it is not scored
    held, duplicates = _not_trained(train, held)
    if len(sources) > 1:
        print("data mixture: " + "; ".join(f"{p['data']} {p['train_rows']} train rows (weight {p['weight']:g} "
                                           f"of {p['split_records']} records), {len(p['held_out_records'])} "
                                           "held out" for p in parts if "weight" in p), flush=True)
    info = {"eval_split": 0.0 if cfg.eval_data else cfg.eval_split, "seed": cfg.seed,
            "max_eval_rows": cfg.max_eval_rows, "scored_rows": min(len(held), cfg.max_eval_rows),
            "held_out_duplicates_of_train": duplicates, "sources": parts}
    return Split(train, held, held[: cfg.max_eval_rows], info)


def _not_trained(train: list, held: list) -> tuple[list, int]:
    """(the held-out rows whose content no training row has, how many were left out); says so when any was."""
    trained = {_content(r) for r in train}
    unseen = [r for r in held if _content(r) not in trained]
    if len(unseen) < len(held):
        print(f"held out: {len(held) - len(unseen)} rows equal to training rows are not scored (split.json: "
              "held_out_duplicates_of_train)", flush=True)
    return unseen, len(held) - len(unseen)


def _content(row: Any) -> str:
    """What a row holds, without where it came from (origin, the record field it was read from)."""
    items = vars(row) if hasattr(row, "__dict__") else dict(row)
    return repr(sorted((k, v) for k, v in items.items() if k not in ("origin", "field")))


def trained_records(split: dict, data: str) -> set[int]:
    """Record ids of file `data` that the run whose split.json is `split` trained on (matched by sha256, or by
    path when a hash is not available); empty when it did not train on that file."""
    digest = file_sha256(data)
    out: set[int] = set()
    for part in split.get("sources", []):
        same = (digest == part.get("sha256")) if digest and part.get("sha256") else (
            str(Path(data).resolve()) == str(Path(part.get("data", "")).resolve()))
        if same:
            out |= set(part.get("train_records", []))
    return out


def read_split(run_dir: str | Path) -> dict | None:
    """The split.json a training run wrote in `run_dir` (or the run folder above a checkpoint), else None."""
    for d in (Path(run_dir), Path(run_dir).parent):
        path = d / "split.json"
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
    return None


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
    from alignlab.ops.logprobs import scored_tokens  # a completion must keep a token whose log-prob is scored

    if paired:
        return tokenize_rows(rows, lambda r: tokenize_pair(r, tokenizer, max_length, max_prompt_length),
                             lambda ex: bool(scored_tokens(ex.prompt_ids, ex.chosen_ids)
                                             and scored_tokens(ex.prompt_ids, ex.rejected_ids)), source, max_length)
    return tokenize_rows(rows, lambda r: tokenize_unpaired(r, tokenizer, max_length, max_prompt_length),
                         lambda ex: scored_tokens(ex.prompt_ids, ex.completion_ids) > 0, source, max_length)


def run_split(cfg: Any, load: Callable[[Any], list], records: list | None = None,
              eval_records: list | None = None) -> Split:
    """The run's Split: from cfg's files (train_eval_rows), or with in-memory records (the Python API) as a file
    would be: records [data_offset, data_offset + data_limit) train; the held-out rows are `eval_records`, else
    the `eval_data` file, else a seeded `eval_split` of those records; rows equal to a training row are not
    scored; max_eval_rows bounds what is scored."""
    import copy

    if records is None and eval_records is None:
        if not cfg.data:
            raise AlignlabError("data: give a training file (or pass records from Python)")
        return train_eval_rows(cfg, load)
    sources: list = []
    if records is None:  # a training file, held-out rows from Python: the file's records all train
        whole = copy.copy(cfg)
        whole.eval_data, whole.eval_split = None, 0.0
        from_file = train_eval_rows(whole, load)
        # its hashes and trained record ids: a resume on an edited file is refused, `eval` warns of a leak
        train, sources = from_file.train, from_file.info["sources"]
    else:
        train = slice_records(load(records), getattr(cfg, "data_offset", 0), getattr(cfg, "data_limit", None))
    if eval_records is not None:
        held = load(eval_records)
    elif cfg.eval_data:
        held = load(cfg.eval_data)
    else:
        train, held = split_eval(train, cfg.eval_split, cfg.seed)
    unseen, duplicates = _not_trained(train, held)
    info = {"data": "in memory" if records is not None else str(cfg.data),
            "eval_data": "in memory" if eval_records is not None else cfg.eval_data,
            "eval_split": 0.0 if eval_records is not None or cfg.eval_data else cfg.eval_split, "seed": cfg.seed,
            "train_rows": len(train), "held_out_rows": len(unseen), "held_out_duplicates_of_train": duplicates,
            **({"sources": sources} if sources else {})}
    return Split(train, unseen, unseen[: cfg.max_eval_rows], info)
