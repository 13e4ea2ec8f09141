"""The prompts an RL run trains on and the held-out prompts it evaluates on, split once and written down.

Held-out prompts are never trained on: a file's prompts are split by `eval_split` with a seeded permutation
(or `eval_data` is used, for a built-in set too); a built-in set draws num_prompts + eval_prompts prompts and
drops held-out ones whose text also occurs in training; and a training row equal to a held-out prompt (a file
repeating one, an eval file sharing one) is dropped from training (counted in split.json). output_dir/split.json records the sources, the counts, the held-out indices and
a hash of the held-out texts, so an evaluation can check it scores nothing the run trained on.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from alignlab.errors import AlignlabError


def read_prompts(spec: Any, n: int, seed: int, cfg: Any) -> list:
    """PromptRows of a built-in set (n of them), a file, or in-memory records (the Python API): task=prompt,
    with the config's format, column mapping and bad-row policy."""
    if not isinstance(spec, str):
        from alignlab.data.sources import load_rows

        return load_rows(spec, task="prompt", format=cfg.data_format, columns=cfg.columns or None,
                         on_bad_row=cfg.on_bad_row).rows
    from alignlab.data.prompts import load_prompt_rows

    return load_prompt_rows(spec, columns=cfg.columns or None, data_format=cfg.data_format,
                            on_bad_row=cfg.on_bad_row, n=n, seed=seed)


def _text(row: Any) -> str:
    return json.dumps(row.prompt, sort_keys=True)


def _source(path: str, train: list, held: list) -> dict[str, Any]:
    from alignlab.data.prepare import file_sha256, record_ids

    return {"data": path, "sha256": file_sha256(path), "train_records": record_ids(train),
            "held_out_records": record_ids(held)}


def split_prompts(cfg: Any, records: Any = None, eval_records: Any = None) -> tuple[list, list, dict[str, Any]]:
    """(train prompts, held-out prompts, the split record); in-memory records replace cfg.data / eval_data."""
    import torch

    n_eval = cfg.eval_prompts
    data = cfg.data if records is None else records
    eval_data = cfg.eval_data if eval_records is None else eval_records
    if isinstance(data, str) and data.startswith("builtin:"):
        rows = read_prompts(cfg.data, cfg.num_prompts + n_eval, cfg.seed, cfg)
        train, tail = rows[:cfg.num_prompts], rows[cfg.num_prompts:]
        seen = {_text(r) for r in train}
        held = [i for i, r in enumerate(tail, cfg.num_prompts) if _text(r) not in seen]
        evals = [rows[i] for i in held]
        if eval_data:  # the given held-out file, not the set's own tail (it was silently ignored)
            held, evals = [], read_prompts(eval_data, 0, cfg.seed, cfg) if n_eval else []
    else:
        rows = read_prompts(data, 0, cfg.seed, cfg)
        if eval_data or cfg.eval_split == 0 or n_eval == 0:
            train, held = rows, []
            evals = read_prompts(eval_data, 0, cfg.seed, cfg) if eval_data and n_eval else []
        else:
            k = max(1, round(cfg.eval_split * len(rows)))
            perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
            held = sorted(perm[:k])
            drop = set(held)
            train = [r for i, r in enumerate(rows) if i not in drop]
            evals = [rows[i] for i in held]
    evals = evals[:n_eval]
    # never trained on: a training row equal to a held-out one (a file repeating a prompt, an eval file sharing one)
    scored = {_text(r) for r in evals}
    kept = [r for r in train if _text(r) not in scored]
    dropped, train = len(train) - len(kept), kept
    record = {"data": str(data), "eval_data": None if eval_data is None else str(eval_data),
              "train_prompts": len(train), "eval_prompts": len(evals), "train_duplicates_of_held_out": dropped,
              "eval_indices": held[:n_eval] if not eval_data else None,
              "eval_sha256": hashlib.sha256("\n".join(_text(r) for r in evals).encode()).hexdigest()}
    if isinstance(data, str):  # as the offline split's: what `alignlab eval` warns about, what a resume checks
        record["sources"] = [_source(data, train, [] if eval_data else evals)]
        if isinstance(eval_data, str):
            record["sources"].append({**_source(eval_data, [], evals), "eval_data": True})
    if len(train) < cfg.batch_size:
        raise AlignlabError(f"data: {len(train)} training prompts for batch_size {cfg.batch_size}")
    return train, evals, record


