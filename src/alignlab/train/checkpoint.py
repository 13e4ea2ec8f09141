"""Resumable checkpoints in Hugging Face format, written so that a crash never leaves a broken one.

A checkpoint is `output_dir/checkpoint-<step>/` holding:
  model.safetensors + config.json (or adapter_model.safetensors + adapter_config.json for peft),
  the tokenizer files, optimizer.pt (AdamW moments), rng.pt (python, numpy, torch RNG states),
  config.yaml (the resolved run config) and trainer_state.json (step, data position, schedule).
Everything is written into `.tmp-checkpoint-<step>` first and the directory is renamed only when
complete; rename is atomic on POSIX, so any `checkpoint-<step>` directory is whole, and a kill -9
mid-write leaves only a temp directory that the next run deletes. trainer_state.json is written last.

Before a run touches an output_dir, `resume_point` decides what that directory's earlier run means for it
(see its docstring): resume only the same experiment (`check_resume_config`), say so when it is finished,
and move an earlier run aside (never delete it) when asked to start over.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignlab.errors import AlignlabError, AlreadyDone
from alignlab.models.prepare import is_peft

CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


class CheckpointError(AlignlabError):
    """A checkpoint could not be written or read; the message says which and why."""


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
) -> Path:
    """Write checkpoint-<step> atomically, then drop the oldest beyond `keep_last`. model_state /
    optimizer_state: full states gathered from a sharded model (FSDP); by default the objects' own.
    extras(dir): writes more state into the checkpoint before it is sealed (RL: the critic and its optimizer)."""
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
        torch.save(rng_state(), tmp / "rng.pt")
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


RESUME_FREE_KEYS: frozenset[str] = frozenset({
    # how long: extending a run is the point of resuming (the schedule is recomputed for the new total)
    "max_steps", "epochs",
    # cadence of logging, evaluation and checkpoints: what is recorded, not what is trained
    "logging_steps", "eval_steps", "save_steps", "keep_last",
    # where and how the run is driven: same numbers, other place or display
    "resume", "progress", "output_dir", "cpu_threads", "device", "ref_cache_dir", "gradient_checkpointing",
    "report_to",
})
"""Top-level config keys that may differ between a checkpoint's saved config and the run resuming from it.
Every other key (model, data, loss, learning rate, batch, seed, max_length, eval split ...) changes what is
trained, so a difference there refuses the resume (`check_resume_config`)."""

FINAL_MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"lora": {"r": 8}} -> {"lora.r": 8}; a scalar or list stays one key."""
    if not isinstance(data, dict):
        return {prefix.rstrip("."): data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def config_differences(old_yaml: str, new_yaml: str) -> list[str]:
    """`key: old -> new` for every key (dotted for nesting) that differs and is not in RESUME_FREE_KEYS."""
    import yaml

    old, new = _flat(yaml.safe_load(old_yaml) or {}), _flat(yaml.safe_load(new_yaml) or {})
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key.split(".")[0] in RESUME_FREE_KEYS:
            continue
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a != b:
            diffs.append(f"{key}: {a!r} -> {b!r}")
    return diffs


def check_resume_config(ckpt_dir: Path, config_yaml: str) -> None:
    """Refuse to continue `ckpt_dir`'s run under a config that trains something else.

    Compares `ckpt_dir/config.yaml` (the resolved config the earlier run saved) with `config_yaml` (this run's);
    keys in RESUME_FREE_KEYS may differ. A checkpoint without a saved config is accepted (nothing to compare)."""
    saved = Path(ckpt_dir) / "config.yaml"
    if not saved.is_file():
        return
    diffs = config_differences(saved.read_text(encoding="utf-8"), config_yaml)
    if diffs:
        out = Path(ckpt_dir) if not CKPT_RE.match(Path(ckpt_dir).name) else Path(ckpt_dir).parent
        listed = "\n  ".join(diffs)
        raise CheckpointError(
            f"{out} holds an earlier run whose config differs ({saved}):\n  {listed}\n"
            f"resuming would continue that run under another config. Either give a new output_dir, or set "
            f"resume=never to start over there (the earlier run is kept, moved to {out}.N)."
        )


def finished_step(output_dir: str | Path) -> int | None:
    """The step a completed run ended at: its final model is in output_dir and metrics.jsonl ends with the
    run's closing row (`train_runtime`); None when the directory holds no finished run."""
    root = Path(output_dir)
    if not any((root / name).is_file() for name in FINAL_MODEL_FILES):
        return None
    metrics = root / "metrics.jsonl"
    if not metrics.is_file():
        return None
    lines = [ln for ln in metrics.read_text(encoding="utf-8").splitlines() if ln.strip()]
    try:
        last = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:  # a kill mid-line: not finished
        return None
    return int(last["step"]) if "train_runtime" in last and "step" in last else None


def _length_changes(old_yaml: str, new_yaml: str) -> list[str]:
    """`key: old -> new` for the run-length keys (max_steps, epochs), which `config_differences` lets differ."""
    import yaml

    old, new = (yaml.safe_load(t) or {} for t in (old_yaml, new_yaml))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in ("max_steps", "epochs") if old.get(k) != new.get(k)]


def stop_if_finished(output_dir: str | Path, resume: str, config_yaml: str) -> None:
    """Raise AlreadyDone when output_dir holds a finished run of this very config, run length included.

    Called by the CLI before any model or data is loaded, so rerunning a finished command costs nothing;
    every other case (a changed config, a longer run) is `resume_point`'s to decide once the run is set up."""
    saved = Path(output_dir) / "config.yaml"
    ended = finished_step(output_dir) if resume == "auto" and saved.is_file() else None
    if ended is None:
        return
    old = saved.read_text(encoding="utf-8")
    if not _length_changes(old, config_yaml) and not config_differences(old, config_yaml):
        raise AlreadyDone(f"{output_dir} holds this run, finished at step {ended}/{ended}; nothing to do "
                          f"(raise max_steps or epochs to train on, or resume=never to start over)")


def experiment_guard(output_dir: str | Path, resume: str, config_yaml: str, finished: Callable[[], bool]) -> None:
    """The resume guard of a multi-stage experiment (iterative rejection sampling) whose stages each train in a
    folder of their own and resume from it: an earlier experiment in output_dir is set aside (resume=never),
    continued when its config.yaml is this one (run length included: every later stage depends on it), or refused
    with the keys that differ. `finished()` (asked only then) says whether every stage is done: AlreadyDone."""
    out = Path(output_dir)
    if resume not in ("auto", "never"):
        raise CheckpointError(f"{out}: an experiment resumes with resume=auto or never (each stage from its folder)")
    if not (out / "config.yaml").is_file():
        return
    if resume == "never":
        set_aside_run(out)
        return
    check_resume_config(out, config_yaml)
    if changed := _length_changes((out / "config.yaml").read_text(encoding="utf-8"), config_yaml):
        raise CheckpointError(f"{out} holds an experiment with another run length ({', '.join(changed)}), which "
                              "changes every later stage; give a new output_dir or resume=never to start over")
    if finished():
        raise AlreadyDone(f"{out} holds this experiment, finished; nothing to do (resume=never to start over)")


def holds_run(output_dir: str | Path) -> bool:
    """Whether output_dir holds an earlier run's results (a checkpoint, metrics or a final model);
    a config.yaml alone (a run that stopped before its first step) does not count."""
    root = Path(output_dir)
    metrics = root / "metrics.jsonl"
    return bool(list_checkpoints(root)) or (metrics.is_file() and metrics.stat().st_size > 0) or any(
        (root / name).is_file() for name in FINAL_MODEL_FILES)


def set_aside_run(output_dir: str | Path) -> Path:
    """Rename output_dir to `<output_dir>.N` (the first free N) so a fresh run starts in an empty folder;
    nothing is deleted. Refuses when output_dir is (or holds) the working directory."""
    root = Path(output_dir).resolve()
    cwd = Path.cwd().resolve()
    if cwd == root or root in cwd.parents:
        raise CheckpointError(f"resume=never would move {root}, which holds the working directory; "
                              "give another output_dir")
    n = 1
    while (kept := root.with_name(f"{root.name}.{n}")).exists():
        n += 1
    root.rename(kept)
    print(f"{output_dir} held an earlier run; kept as {kept} (resume=never starts over)", flush=True)
    return kept


def resume_point(output_dir: str | Path, resume: str, config_yaml: str | None, total_steps: int,
                 *, is_main: bool = True) -> Path | None:
    """The checkpoint this run continues from, or None to start at step 0, after the resume guards.

    - resume=never: an earlier run in output_dir is moved aside (`set_aside_run`, main rank only), never mixed in.
    - resume=auto: the newest complete checkpoint, or output_dir itself when it holds a run without one, must
      have been saved under the same config (`check_resume_config`; skipped when config_yaml is None). A run
      that already ended at `total_steps` raises AlreadyDone (nothing trained, nothing rewritten); one that
      went past it, or a checkpoint beyond it, is refused.
    - resume=PATH: that checkpoint, with the same config check.
    """
    out = Path(output_dir)
    if resume == "never":
        if is_main and out.is_dir() and holds_run(out):
            set_aside_run(out)
        return None
    ckpt = find_resume(out, resume)
    if config_yaml is not None:
        if ckpt is not None:
            check_resume_config(ckpt, config_yaml)
        elif holds_run(out):
            check_resume_config(out, config_yaml)
    ended = finished_step(out) if resume == "auto" else None
    if ended is not None and ended == total_steps:
        raise AlreadyDone(f"{out} holds this run, finished at step {ended}/{total_steps}; nothing to do "
                          f"(raise max_steps or epochs to train on, or resume=never to start over)")
    if ckpt is None and ended is not None and ended < total_steps:
        raise CheckpointError(f"{out} holds a run that finished at step {ended} and no checkpoint to continue "
                              f"from (save_steps was 0); give a new output_dir or resume=never to start over")
    step = int(json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))["step"]) if ckpt else None
    if (step is not None and step > total_steps) or (ended is not None and ended > total_steps):
        raise CheckpointError(f"{out}: the earlier run reached step {max(step or 0, ended or 0)}, beyond this "
                              f"run's {total_steps} steps; give a new output_dir or resume=never")
    return ckpt


def find_resume(output_dir: str | Path, resume: str) -> Path | None:
    """Checkpoint to resume from: `never` -> None, `auto` -> newest complete one (or None), else the path."""
    if resume == "never":
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"resume: {path} is not a complete checkpoint (no {STATE_FILE} in it)")
    return path


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
        weights.update(load_file(str(f)))
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


def load_checkpoint(directory: str | Path, model: Any, optimizer: Any) -> dict[str, Any]:
    """Restore weights, optimizer and RNG states; returns trainer_state (step, data position, ...)."""
    directory = Path(directory)
    state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    load_model_weights(model, directory)
    optimizer.load_state_dict(load_tensors(directory / "optimizer.pt"))
    set_rng_state(load_tensors(directory / "rng.pt"))
    return state
