"""`POST /v1/load_weights {"path": DIR}`: new weights for a running server (an RL trainer pushes them after
each update; docs/serving.md, rollout engine protocol section 2).

DIR is either a Hugging Face model directory (config.json + safetensors: the served model's weights are
replaced in place; same architecture, every tensor name and shape must match) or a peft adapter directory
(adapter_config.json + adapter_model.safetensors: the adapter is put on the served base model, replacing any
adapter pushed before). Files are read and checked on the request's thread; the swap itself runs on the
scheduler thread between two decode steps, so no forward ever sees half-updated weights. Sequences already
running continue on the new weights from the next step (an RL trainer pushes between rollouts, when none run).

Guards: only a local directory given as an absolute path (no URL, no hub id), optionally only under
`weights_root`; only safetensors (pickle can run code); optionally a bearer token read from an environment
variable (ModelServer's `admin_token_env`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignlab.errors import AlignlabError
from alignlab.models.load import check_weights
from alignlab.models.lora import has_adapter


def checked_dir(value: Any, root: str | None) -> Path:
    """The directory a load_weights body names, or AlignlabError saying why it is refused."""
    if not isinstance(value, str) or not value:
        raise AlignlabError("load_weights: path must be a non-empty string (an absolute local directory)")
    if "://" in value or not os.path.isabs(value):
        raise AlignlabError(f"load_weights: path must be an absolute local directory, got {value!r}")
    path = Path(os.path.realpath(value))
    if root is not None:
        base = os.path.realpath(root)
        if os.path.commonpath([base, str(path)]) != base:
            raise PermissionError(f"load_weights: {value!r} is outside the allowed weights root")
    if not path.is_dir():
        raise AlignlabError(f"load_weights: {value!r} is not a directory")
    return path


def prepare(path: Path, model: Any) -> tuple[str, Callable[[Any], Any]]:
    """Read and check DIR against `model`; return (kind, apply) where apply(model) -> the model to serve."""
    if (path / "adapter_config.json").is_file():
        return "lora", _adapter(path)
    if (path / "config.json").is_file():
        return "full", _full(path, model)
    raise AlignlabError(f"load_weights: {path} has neither config.json (a model directory) nor "
                        "adapter_config.json (a peft adapter)")


def _safetensors_only(path: Path) -> None:
    if check_weights(path, allow_pickle=False) != "safetensors":
        raise AlignlabError(f"load_weights: {path} has no *.safetensors weights")


def _full(path: Path, model: Any) -> Callable[[Any], Any]:
    from safetensors.torch import load_file

    _safetensors_only(path)
    if has_adapter(model):
        raise AlignlabError("load_weights: the server holds a LoRA adapter; push an adapter directory, or restart "
                            "the server on a plain model to push full weights")
    state: dict[str, Any] = {}
    for f in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(f)))
    own = model.state_dict()
    unknown = sorted(k for k in state if k not in own)
    if unknown:
        raise AlignlabError(f"load_weights: {path}: tensors the served model does not have: {unknown[:5]}")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state if state[k].shape != own[k].shape]
    if wrong:
        raise AlignlabError(f"load_weights: {path}: shape mismatch (file vs served): {wrong[:5]}")
    loaded = {own[k].data_ptr() for k in state}
    missing = sorted(k for k in own if k not in state and own[k].data_ptr() not in loaded)  # tied ones are fine
    if missing:
        raise AlignlabError(f"load_weights: {path}: tensors missing from the directory: {missing[:5]}")

    def apply(served: Any) -> Any:
        import torch

        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v)  # state_dict() tensors share storage with the parameters
        return served

    return apply


def _adapter(path: Path) -> Callable[[Any], Any]:
    _safetensors_only(path)
    try:
        json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        raise AlignlabError(f"load_weights: {path / 'adapter_config.json'} is not valid JSON: {e}") from None

    def apply(served: Any) -> Any:
        from peft import PeftModel

        name = f"pushed_{os.urandom(4).hex()}"
        if has_adapter(served):
            old = served.active_adapter
            served.load_adapter(str(path), adapter_name=name, is_trainable=False)
            served.set_adapter(name)
            served.delete_adapter(old)
        else:
            try:
                served = PeftModel.from_pretrained(served, str(path), adapter_name=name, is_trainable=False)
            except Exception:
                _remove_injected_lora(served)  # peft wraps layers in place before a shape fails: undo it
                raise
        served.eval()
        return served

    return apply


def _remove_injected_lora(model: Any) -> None:
    """Put back every base layer peft wrapped in `model` and drop the adapter config it set, so a failed
    adapter load leaves the plain model serving exactly as before (peft does not touch the base weights)."""
    for name, module in list(model.named_modules()):
        base = getattr(module, "base_layer", None)
        if base is not None and name:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, base)
    if "peft_config" in model.__dict__:
        del model.peft_config
