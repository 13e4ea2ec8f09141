"""What an output_dir's earlier run means for a new run, decided before anything is trained or written.

`resume_point` (see its docstring): resume only the same experiment (`check_resume_config`: every key but those in
RESUME_FREE_KEYS must match), say so when it is finished (AlreadyDone), refuse a checkpoint past the run's end,
and move an earlier run aside (never delete it) under resume=never. `stop_if_finished` is the CLI's check before
any model loads; `experiment_guard` the same rules for multi-stage experiments whose stages resume on their own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignlab.errors import AlreadyDone
from alignlab.train.checkpoint import CKPT_RE, STATE_FILE, CheckpointError, list_checkpoints, read_state

RESUME_FREE_KEYS: frozenset[str] = frozenset({
    # how long: extending a run is the point of resuming (the schedule is recomputed for the new total)
    "max_steps", "epochs",
    # cadence of logging, evaluation and checkpoints: what is recorded, not what is trained
    "logging_steps", "eval_steps", "save_steps", "keep_last",
    # where and how the run is driven: same numbers, other place or display
    "resume", "progress", "output_dir", "cpu_threads", "device", "ref_cache_dir", "gradient_checkpointing",
    "compile", "report_to",
    # where the rollout engine is and how long to wait for it: a resumed run pushes the checkpoint's weights to it
    "rollout_engine.url", "rollout_engine.timeout", "rollout_engine.api_key_env",
    # how long to wait for a teacher endpoint and which variable holds its key: the same teacher answers
    "teacher.timeout", "teacher.api_key_env",
})
"""Config keys (dotted for nesting) that may differ between a checkpoint's saved config and the run resuming from it.
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
    """`key: old -> new` for every key (dotted for nesting) that differs and is not in RESUME_FREE_KEYS. A key one
    side lacks counts as null there: a key added since the earlier run, set to null (its earlier behaviour where null
    means "off", e.g. pad_to_multiple_of), lets that run resume."""
    import yaml

    old, new = _flat(yaml.safe_load(old_yaml) or {}), _flat(yaml.safe_load(new_yaml) or {})
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key in RESUME_FREE_KEYS or key.split(".")[0] in RESUME_FREE_KEYS:
            continue
        if old.get(key) != new.get(key) and not _same_records_label(old.get(key), new.get(key)):
            a, b = (repr(side[key]) if key in side else "<absent>" for side in (old, new))
            diffs.append(f"{key}: {a} -> {b}")
    return diffs


def _same_records_label(old: Any, new: Any) -> bool:
    """In-memory records labelled before their label carried a content hash ('<in-memory list: 10 records>') and
    after ('..., sha256 ...>'): an earlier run's label passes for the same count, as it did before the hash."""
    return isinstance(old, str) and isinstance(new, str) and old.startswith("<in-memory ") and old.endswith(" records>") \
        and new.startswith(old[:-1] + ", sha256 ")


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


def _finished(out: Path, ended: int, total: int, is_main: bool = True) -> AlreadyDone:
    """The finished run's AlreadyDone, its report.html written first when missing: the closing metrics row comes
    before the report, so a run killed while plotting it was finished without one, and every rerun stopped here."""
    if is_main and not (out / "report.html").is_file():
        from alignlab.eval.run_report import write_run_report

        print(f"report: {write_run_report(out)} (it was missing)", flush=True)
    more = "raise max_steps or epochs to train on, or " if any(out.glob("checkpoint-*")) else ""  # else refused
    return AlreadyDone(f"{out} holds this run, finished at step {ended}/{total}; nothing to do ({more}resume=never "
                       "to start over, or a new output_dir)")


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
        raise _finished(Path(output_dir), ended, ended)


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
        raise _finished(out, ended, total_steps, is_main)
    if ckpt is None and ended is not None and ended < total_steps:
        raise CheckpointError(f"{out} holds a run that finished at step {ended} and no checkpoint to continue "
                              f"from (save_steps was 0); give a new output_dir or resume=never to start over")
    step = int(read_state(ckpt)["step"]) if ckpt else None
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


_MODEL_KEYS = ("model", "ref_model", "teacher", "value_model")
_MODEL_FILES = ("*.safetensors", "*.bin", "config.json", "adapter_config.json")


def model_sources(cfg: Any) -> dict[str, str]:
    """{key: fingerprint} of each local model folder a run reads (model, ref_model, teacher, value_model, a reward
    model's reward_options.path), for split.json: a resume rebuilds the reference, teacher, critic, reward model and
    a LoRA policy's base from them, so a folder changed under a checkpoint (the SFT run it started from, extended in
    place) trained other numbers, silently. Aliases, hub ids and in-memory models are left out."""
    found = {k: getattr(cfg, k, None) for k in _MODEL_KEYS}
    options = getattr(cfg, "reward_options", None)
    if isinstance(options, dict):
        found["reward_options.path"] = options.get("path")
    return {k: folder_fingerprint(Path(v)) for k, v in found.items() if isinstance(v, str) and Path(v).is_dir()}


def folder_fingerprint(folder: Path) -> str:
    """sha256 over a model folder's weight and config files: each one's name, size and 16 evenly spaced 64 KB
    samples of its bytes (any training changes them all; a 7B model is not read whole at every start)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted({p for pattern in _MODEL_FILES for p in folder.glob(pattern)}):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}\n".encode())
        with open(f, "rb") as fh:
            for i in range(16):
                fh.seek(size * i // 16)
                h.update(fh.read(1 << 16))
    return h.hexdigest()
