"""`alignlab model info NAME` and `alignlab merge ADAPTER_DIR OUT_DIR`."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from alignlab.cli import command
from alignlab.errors import AlignlabError


def format_count(n: int) -> str:
    """134515008 -> '134.5M'; 106816 -> '106.8K'; 1.24e9 -> '1.24B'."""
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


def _stored_dtype(path: Path) -> str | None:
    """The dtype the weights are stored in, read from the safetensors header (no tensor is loaded)."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    with safe_open(str(files[0]), framework="pt") as f:
        keys = list(f.keys())
        raw = f.get_slice(keys[0]).get_dtype() if keys else None
    names = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64", "I8": "int8", "U8": "uint8"}
    return names.get(raw, raw.lower()) if raw else None


def model_info(name: str, *, trust_remote_code: bool = False) -> dict[str, Any]:
    """Architecture, parameter count, dtype, vocabulary, chat template and context length of a model.

    The parameter count comes from building the model on the meta device (no memory, no weights read), so
    tied embeddings are counted once, as `sum(p.numel() for p in model.parameters())` does.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from alignlab.models.load import load_tokenizer, resolve_model

    path = resolve_model(name)
    if (Path(path) / "adapter_config.json").is_file() and not (Path(path) / "config.json").is_file():
        return adapter_info(name, Path(path), trust_remote_code=trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise AlignlabError(f"could not read the config of {name!r} ({path}): {e}") from e
    arch = (getattr(config, "architectures", None) or [""])[0]
    auto = AutoModelForSequenceClassification if arch.endswith("ForSequenceClassification") else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config, trust_remote_code=trust_remote_code)
    n_params = sum(p.numel() for p in model.parameters())
    try:
        tok = load_tokenizer(path, trust_remote_code=trust_remote_code)
    except AlignlabError:  # a weights-only folder still has an architecture and a size worth reporting
        tok = None
    dtype = _stored_dtype(Path(path)) if Path(path).is_dir() else None
    return {
        "name": name,
        "path": path,
        "architecture": arch or type(model).__name__,
        "model_type": config.model_type,
        "parameters": n_params,
        "parameters_human": format_count(n_params),
        "dtype": dtype or str(getattr(config, "dtype", None) or "float32").replace("torch.", ""),
        "vocab_size": config.vocab_size,
        "tokenizer_size": len(tok) if tok is not None else None,
        "chat_template": _has_own_chat_template(path, tok) if tok is not None else None,
        "context_length": getattr(config, "max_position_embeddings", None) or getattr(tok, "model_max_length", None),
        "layers": getattr(config, "num_hidden_layers", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "tied_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "eos_token": getattr(tok, "eos_token", None),
        "pad_token": getattr(tok, "pad_token", None),
    }


def adapter_info(name: str, path: Path, *, trust_remote_code: bool = False) -> dict[str, Any]:
    """A peft adapter folder: its own settings and size (read from adapter_config.json and the safetensors
    header, nothing loaded) and, under "base", `model_info` of the base model it names."""
    meta = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    base_name = meta.get("base_model_name_or_path")
    if not base_name:
        raise AlignlabError(f"{path / 'adapter_config.json'}: field base_model_name_or_path is empty")
    n_params = 0
    files = sorted(path.glob("adapter_model*.safetensors"))
    if files:
        from safetensors import safe_open

        for f in files:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    shape = st.get_slice(key).get_shape()
                    n_params += math.prod(shape)
    targets = meta.get("target_modules")
    return {
        "name": name,
        "path": str(path),
        "adapter": meta.get("peft_type", "LORA").lower(),
        "task_type": meta.get("task_type"),
        "r": meta.get("r"),
        "alpha": meta.get("lora_alpha"),
        "target_modules": sorted(targets) if isinstance(targets, list) else targets,
        "adapter_parameters": n_params,
        "adapter_parameters_human": format_count(n_params),
        "base_model": base_name,
        "base": model_info(base_name, trust_remote_code=trust_remote_code),
    }


def _has_own_chat_template(path: str, tok: Any) -> bool:
    """Whether the checkpoint ships a chat template (load_tokenizer would otherwise add the default one)."""
    from transformers import AutoTokenizer

    from alignlab.models.tokenizer import DEFAULT_CHAT_TEMPLATE

    if tok.chat_template != DEFAULT_CHAT_TEMPLATE:
        return True
    raw = AutoTokenizer.from_pretrained(path)
    return bool(getattr(raw, "chat_template", None))


def _count_or_missing(n: int | None) -> str:
    return f"{n:,}" if n else "missing"


def _template_line(present: bool | None) -> str:
    if present is None:
        return "no tokenizer in this folder"
    return "yes" if present else "no (the default ChatML template is used)"


def _configure_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="alias (smollm2-135m-instruct, tiny-random), local HF directory or hub id")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code")


@command("model info", "Show a model's architecture, parameter count, dtype, vocabulary, chat template and context length.", _configure_info)
def _info(args: argparse.Namespace) -> int:
    info = model_info(args.name, trust_remote_code=args.trust_remote_code)
    if args.json:
        print(json.dumps(info))
        return 0
    if "base" in info:  # an adapter: its own lines, then its base model's
        rows = [
            ("adapter", f"{info['name']}  ({info['path']})"),
            ("kind", f"{info['adapter']} r={info['r']} alpha={info['alpha']} ({info['task_type']})"),
            ("targets", ", ".join(info["target_modules"]) if isinstance(info["target_modules"], list)
             else str(info["target_modules"])),
            ("parameters", f"{info['adapter_parameters_human']} ({info['adapter_parameters']:,}) in the adapter"),
            ("base model", info["base_model"]),
        ]
        for key, value in rows:
            print(f"{key:<15}{value}")
        info = info["base"]
        print("--- base model")
    rows = [
        ("model", f"{info['name']}  ({info['path']})"),
        ("architecture", f"{info['architecture']} ({info['layers']} layers, hidden {info['hidden_size']})"),
        ("parameters", f"{info['parameters_human']} ({info['parameters']:,})"),
        ("dtype", info["dtype"]),
        ("vocabulary", f"{info['vocab_size']:,} (tokenizer {_count_or_missing(info['tokenizer_size'])})"),
        ("chat template", _template_line(info["chat_template"])),
        ("context length", f"{info['context_length']:,}"),
        ("eos / pad", f"{info['eos_token']} / {info['pad_token']}"),
    ]
    for key, value in rows:
        print(f"{key:<15}{value}")
    return 0


def _configure_merge(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapter_dir", help="a saved LoRA adapter (with adapter_config.json)")
    p.add_argument("out_dir", help="new directory for the merged plain model")
    p.add_argument("--dtype", default="float32", help="dtype to merge and save in (float32, bfloat16, float16)")


@command("merge", "Fold a LoRA adapter into its base model and write a plain HF checkpoint (safetensors) plus tokenizer.", _configure_merge)
def _merge(args: argparse.Namespace) -> int:
    from alignlab.models.lora import merge_adapter

    out = merge_adapter(args.adapter_dir, args.out_dir, dtype=args.dtype)
    scorer = "ForSequenceClassification" in "".join(json.loads((out / "config.json").read_text()).get("architectures", []))
    loader = "AutoModelForSequenceClassification" if scorer else "AutoModelForCausalLM"
    print(f"merged {args.adapter_dir} into {out} (loads with {loader}.from_pretrained)")
    return 0
