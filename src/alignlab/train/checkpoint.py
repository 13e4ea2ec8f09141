"""Resumable checkpoints in Hugging Face format, written so that a crash never leaves a broken one.

A checkpoint is `output_dir/checkpoint-<step>/` holding:
  model.safetensors + config.json (or adapter_model.safetensors + adapter_config.json for peft),
  the tokenizer files, optimizer.pt (AdamW moments), rng.pt (python, numpy, torch RNG states),
  config.yaml (the resolved run config) and trainer_state.json (step, data position, schedule).
Everything is written into `.tmp-checkpoint-<step>` first and the directory is renamed only when
complete; rename is atomic on POSIX, so any `checkpoint-<step>` directory is whole, and a kill -9
mid-write leaves only a temp directory that the next run deletes. trainer_state.json is written last.

What an output_dir's earlier run means for a new one (resume, refuse, finished, set aside) is train/resume.py's.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

from alignlab.errors import CheckpointError
from alignlab.models.prepare import is_peft

CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


def _fsync_tree(path: Path) -> None:
    """Flush file contents before the rename so the renamed directory is complete on disk too."""
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_model(model: Any, directory: Path, tokenizer: Any = None, state_dict: dict | None = None) -> None:
    """HF `save_pretrained` (safetensors); a peft model writes only its adapter. `state_dict`: the full
    weights gathered from a sharded (FSDP) model, which cannot produce them itself on one rank."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a one-shard "Writing model shards" bar per checkpoint is only log noise
    # peft's default (save_embedding_layers="auto") looks up the base's config.json, on the hub when the recorded
    # base is an alias (models.lora.portable_name), to see whether the vocabulary was resized; we never resize
    # it, so no full embedding is needed and no lookup (nor its warning, nor a network wait) happens.
    extra = {"save_embedding_layers": False} if is_peft(model) else {}
    model.save_pretrained(str(directory), state_dict=state_dict, **extra)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first (a renamed directory with its trainer_state.json)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = CKPT_RE.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def remove_stale_temps(output_dir: str | Path) -> None:
    """Delete half-written checkpoints left by a crash (never a complete one)."""
    root = Path(output_dir)
    if root.is_dir():
        for p in root.glob(".tmp-checkpoint-*"):
            shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model: Any,
    optimizer: Any,
    state: dict[str, Any],
    *,
    tokenizer: Any = None,
    config_yaml: str | None = None,
    keep_last: int = 2,
    model_state: dict | None = None,
    optimizer_state: dict | None = None,
    extras: Any = None,
    rank_rng: list | None = None,
) -> Path:
    """Write checkpoint-<step> atomically, then drop the oldest beyond `keep_last`. model_state /
    optimizer_state: full states gathered from a sharded model (FSDP); by default the objects' own.
    extras(dir): writes more state into the checkpoint before it is sealed (RL: the critic and its optimizer).
    rank_rng: every rank's RNG state (rng_state() gathered, rank order) when there are several: rank r > 0's goes
    to rng-<r>.pt beside rank 0's rng.pt, so each rank resumes its own dropout masks."""
    import torch

    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"checkpoint-{step}"
    tmp = root / f".tmp-checkpoint-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_model(model, tmp, tokenizer, state_dict=model_state)
        torch.save(optimizer.state_dict() if optimizer_state is None else optimizer_state, tmp / "optimizer.pt")
        for r, rng in enumerate(rank_rng or [rng_state()]):  # rank 0's is rng.pt
            torch.save(rng, tmp / (f"rng-{r}.pt" if r else "rng.pt"))
        if config_yaml is not None:
            (tmp / "config.yaml").write_text(config_yaml, encoding="utf-8")
        if extras is not None:
            extras(tmp)
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=1), encoding="utf-8")
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step after a resume: swap, never leave neither
            trash = root / f".tmp-checkpoint-{step}-old"
            final.rename(trash)
            tmp.rename(final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(final)
        _fsync_dir(root)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"could not write checkpoint {final}: {e.strerror or e}; earlier checkpoints are kept"
        ) from e
    for _, old in list_checkpoints(root)[:-keep_last]:
        # Rename (atomic) before deleting: a kill mid-delete then leaves a temp folder that the next start
        # removes, never a half-deleted checkpoint-N that still holds trainer_state.json and looks complete.
        trash = root / f".tmp-{old.name}-old"
        shutil.rmtree(trash, ignore_errors=True)
        old.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    return final


def step_state(step_fn: Any) -> dict[str, Any]:
    """{"step_state": ...} for trainer_state.json when the step function keeps state across steps (a
    `state_dict()` method, JSON-safe: e.g. BCO's running reward mean), else {}."""
    get = getattr(step_fn, "state_dict", None)
    state = get() if callable(get) else None
    return {"step_state": state} if state else {}


def restore_step_state(step_fn: Any, trainer_state: dict[str, Any]) -> None:
    """Give a resumed step function the state `step_state` saved (no-op when none was saved)."""
    load = getattr(step_fn, "load_state_dict", None)
    if callable(load) and trainer_state.get("step_state"):
        load(trainer_state["step_state"])


def _weights(directory: Path, adapter: bool) -> dict[str, Any]:
    from safetensors.torch import load_file

    pattern = "adapter_model*.safetensors" if adapter else "model*.safetensors"
    files = sorted(directory.glob(pattern))
    if not files:
        raise CheckpointError(f"{directory}: no {pattern} to resume from")
    weights: dict[str, Any] = {}
    for f in files:
        try:
            weights.update(load_file(str(f)))
        except Exception as e:  # SafetensorError (a truncated header), OSError: a broken file, named
            raise CheckpointError(f"{f}: unreadable ({type(e).__name__}: {e}); resume from another checkpoint or "
                                  "resume=never") from None
    return weights


def load_model_weights(model: Any, directory: Path) -> None:
    """Load a checkpoint's weights in place; tied params (lm_head = embeddings) may be absent from the file."""
    if is_peft(model):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, _weights(directory, adapter=True))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise CheckpointError(f"{directory}: adapter keys not in the model: {unexpected[:3]}")
        return
    missing, unexpected = model.load_state_dict(_weights(directory, adapter=False), strict=False)
    loaded = {p.data_ptr() for n, p in model.named_parameters() if n not in missing}
    untied = [k for k in missing if model.get_parameter(k).data_ptr() not in loaded]
    if untied or unexpected:
        raise CheckpointError(
            f"{directory}: checkpoint does not match the model (missing {untied[:3]}, unexpected {unexpected[:3]})"
        )


def load_tensors(path: Path) -> Any:
    """torch.load restricted to tensors and plain containers (weights_only: a crafted pickle cannot run code);
    a tampered or truncated file is a CheckpointError naming it, not a raw unpickler traceback."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, EOFError, IndexError, RuntimeError ... all mean "not ours, or broken"
        raise CheckpointError(f"{path}: unreadable or not a plain tensor file ({type(e).__name__}); "
                              "resume from another checkpoint or resume=never") from None


def read_state(directory: Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.json; a truncated or edited one is a CheckpointError naming it."""
    path = Path(directory) / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e}); resume from another checkpoint or "
                              "resume=never") from None
    return state


def restore_rng(directory: Path, rank: int = 0) -> None:
    """This rank's RNG states: rng-<rank>.pt where the run had several ranks, else rng.pt (rank 0's)."""
    own = directory / f"rng-{rank}.pt"
    set_rng_state(load_tensors(own if rank and own.exists() else directory / "rng.pt"))


def load_checkpoint(directory: str | Path, model: Any, optimizer: Any, rank: int = 0) -> dict[str, Any]:
    """Restore weights, optimizer and this rank's RNG states; returns trainer_state (step, data position, ...)."""
    directory = Path(directory)
    state = read_state(directory)
    load_model_weights(model, directory)
    optimizer.load_state_dict(load_tensors(directory / "optimizer.pt"))
    restore_rng(directory, rank)
    return state
