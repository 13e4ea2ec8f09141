"""Reference log-probs computed once before training and cached on disk.

With a fixed reference, DPO's reference forward (a third of a step's FLOPs, and a second model in
memory) gives the same numbers every epoch. Here it runs ONCE, in a progress-barred pass before
training, the result is saved atomically, and the caller frees the reference model afterwards.
The next run with the same reference weights, the same tokenised pairs and the same settings
finds the file and skips the pass entirely.

The cache key is a hash of
  - the reference weights (every parameter and buffer, bytes included; LoRA adapter tensors are
    left out because the reference of a LoRA policy is its base with the adapter disabled) and its config,
  - the tokenised data (every pair's prompt/chosen/rejected ids, in order), which already changes
    with the chat template, the tokenizer and truncation,
  - the settings dict the caller passes (max_length, max_prompt_length, template, ...), so a
    change there invalidates the cache even in the rare case the ids would not change.
The values are the same as the live reference's: the same `sequence_logps` computes both.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignlab.errors import AlignlabError

FORMAT_VERSION = 1


def _is_adapter_tensor(name: str) -> bool:
    return "lora_" in name or "modules_to_save" in name


def weights_fingerprint(model: Any) -> str:
    """blake2b of every named parameter and buffer (name, dtype, shape, bytes; non-persistent buffers such as RoPE's
    inv_freq too), adapters excluded, and of the model's config (rope scaling, norm epsilon: values no tensor holds)."""
    h = hashlib.blake2b(digest_size=20)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        settings = {k: v for k, v in config.to_dict().items()
                    if not k.startswith("_") and k not in ("transformers_version", "dtype", "torch_dtype")}
        h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    state = {**dict(model.named_buffers()), **model.state_dict()}
    for name in sorted(state):
        if _is_adapter_tensor(name):
            continue
        t = state[name].detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw 16-bit patterns
            t = t.view(torch.int16)
        h.update(t.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _ids(example: Any, name: str) -> list[int]:
    return list(example[name] if isinstance(example, dict) else getattr(example, name))


def pairs_fingerprint(pairs: Sequence[Any]) -> str:
    """blake2b of every pair's token ids, in dataset order."""
    h = hashlib.blake2b(digest_size=20)
    for p in pairs:
        for name in ("prompt_ids", "chosen_ids", "rejected_ids"):
            h.update(json.dumps(_ids(p, name)).encode())
            h.update(b";")
        h.update(b"\n")
    return h.hexdigest()


def cache_key(model: Any, pairs: Sequence[Any], settings: dict[str, Any] | None = None) -> str:
    """Key of a cache entry: weights, data and settings hashed together."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"v{FORMAT_VERSION}|{weights_fingerprint(model)}|{pairs_fingerprint(pairs)}|".encode())
    h.update(json.dumps(settings or {}, sort_keys=True, default=str).encode())
    return h.hexdigest()


def default_cache_dir() -> Path:
    from alignlab.models.load import cache_dir

    return cache_dir() / "ref_logps"


def _progress(total: int, desc: str) -> Callable[[int], None]:
    """Advance-by-n callback: a rich bar on a terminal, a few plain lines otherwise."""
    if sys.stderr.isatty():
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(desc, total=total)
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            bar.update(task, advance=n)
            if done[0] >= total:
                bar.stop()

        return advance
    state = {"done": 0, "next": 0}

    def advance_plain(n: int) -> None:
        state["done"] += n
        if state["done"] >= state["next"] or state["done"] >= total:
            print(f"{desc}: {state['done']}/{total} pairs", file=sys.stderr, flush=True)
            state["next"] = state["done"] + max(total // 10, 1)

    return advance_plain


def compute_reference_logps(reference: Any, model: Any, pairs: Sequence[Any], collate: Callable, *,
                            batch_size: int = 8, device: str = "cpu", progress: bool = True) -> torch.Tensor:
    """[N, 2] summed (chosen, rejected) reference log-probs of every pair, float32.

    `reference` is a `ModelReference` or `AdapterReference` from train/preference.py; `model` is
    the policy (used by the adapter reference, ignored by a separate model).
    """
    from alignlab.train.batches import to_device

    out = []
    advance = _progress(len(pairs), "reference log-probs") if progress else (lambda n: None)
    for start in range(0, len(pairs), batch_size):
        chunk = [pairs[i] for i in range(start, min(start + batch_size, len(pairs)))]
        batch = to_device(collate(chunk), device)
        b = len(chunk)
        lp = reference.logps(model, batch).detach().float().cpu()
        out.append(torch.stack([lp[:b], lp[b : 2 * b]], dim=1))
        advance(b)
    return torch.cat(out) if out else torch.zeros(0, 2)


@dataclass
class RefCache:
    path: Path
    key: str
    hit: bool
    """True when the values came from disk and no reference forward ran."""
    values: torch.Tensor
    """[N, 2] (chosen, rejected) summed reference log-probs."""

    def attach(self, pairs: Sequence[Any]) -> list[dict[str, Any]]:
        """The pairs as dicts carrying `ref_chosen_logps` / `ref_rejected_logps` (read by data/pairs.py)."""
        out = []
        for p, v in zip(pairs, self.values):
            row = {name: _ids(p, name) for name in ("prompt_ids", "chosen_ids", "rejected_ids")}
            label = p.get("label") if isinstance(p, dict) else getattr(p, "label", None)
            if label is not None:  # KTO examples keep their desirable/undesirable label
                row["label"] = label
            out.append({**row, "ref_chosen_logps": float(v[0]), "ref_rejected_logps": float(v[1])})
        return out


def _save_atomic(path: Path, values: torch.Tensor, key: str) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({"ref_logps": values.contiguous()}, str(tmp), metadata={"key": key, "version": str(FORMAT_VERSION)})
    os.replace(tmp, path)  # readers see the old file or the whole new one, never half of it


def _load(path: Path, key: str, n: int) -> torch.Tensor | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            values = f.get_tensor("ref_logps")
    except Exception:  # a corrupt or foreign file is a miss, recomputed and replaced
        return None
    return values if values.shape == (n, 2) else None


def load_or_compute(reference: Any, model: Any, key_model: Any, pairs: Sequence[Any], collate: Callable, *,
                    settings: dict[str, Any] | None = None, cache_dir: str | Path | None = None,
                    batch_size: int = 8, device: str = "cpu", progress: bool = True) -> RefCache:
    """The cached reference log-probs of `pairs`, computing and saving them on a miss.

    key_model: the module whose weights ARE the reference (the frozen reference model, or the
    LoRA policy whose base is the reference). Free the reference model after this returns.
    """
    if not pairs:
        raise AlignlabError("reference cache: no pairs to compute reference log-probs for")
    key = cache_key(key_model, pairs, settings)
    path = Path(cache_dir or default_cache_dir()) / f"ref_logps-{key}.safetensors"
    if path.exists():
        values = _load(path, key, len(pairs))
        if values is not None:
            return RefCache(path, key, True, values)
    values = compute_reference_logps(reference, model, pairs, collate, batch_size=batch_size, device=device,
                                     progress=progress)
    _save_atomic(path, values, key)
    return RefCache(path, key, False, values)
