"""Scalar-head models for reward and value: a causal-LM backbone with a linear `hidden -> 1` head.

A reward model scores a whole sequence by the head's output at its last real (non-pad) token, as in
InstructGPT (Ouyang et al. 2022, sec. 3.5) and TRL's RewardTrainer; a value model uses the head's output at
every token (PPO's V(s_t)). We pool with the attention mask, not by searching for pad ids, so a sequence
that ends in EOS == pad (common: SmolLM2 pads with <|im_end|>) is still scored at its real last token.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignlab.errors import AlignlabError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


_HUB_KEYS = ("revision", "cache_dir", "token", "local_files_only", "subfolder", "force_download", "proxies")


def load_scorer(
    name: str,
    *,
    dtype: Any = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    trained_head: bool = False,
    **kwargs: Any,
) -> PreTrainedModel:
    """An `AutoModelForSequenceClassification` with one output from `name` (alias, dir or hub id).

    From a causal-LM checkpoint the backbone is reused and the head `score` is new (normal(0, initializer_range)
    from torch's current RNG state: seed before calling for reproducible heads). A checkpoint saved from a
    scorer reloads with its trained head. `trained_head`: refuse a checkpoint without one (a scorer's use: a new
    head's scores are noise). `config.pad_token_id` is set (from the tokenizer) so batched
    forwards work. Other keyword arguments set config attributes (use_cache=False) or go to `from_pretrained`.
    """
    from transformers import AutoModelForSequenceClassification

    from alignlab.models.load import NO_HUB_KERNELS, check_weights, resolve_device, resolve_model, to_dtype

    path = resolve_model(name)
    if Path(path).is_dir() and (Path(path) / "adapter_config.json").is_file() and not (Path(path) / "config.json").is_file():
        return _load_scorer_adapter(Path(path), dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                                    allow_pickle=allow_pickle, trained_head=trained_head, **kwargs)
    config, kwargs = _scorer_config(name, path, trust_remote_code, kwargs)
    if Path(path).is_dir():
        check_weights(Path(path), allow_pickle)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path,
            config=config,
            dtype=to_dtype(dtype),
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
            output_loading_info=True,
            **{**NO_HUB_KERNELS, **kwargs},
        )
    except (OSError, ValueError) as e:
        raise AlignlabError(f"could not load {name!r} as a scorer: {e}") from e
    if trained_head and any(k.split(".")[0] in ("score", "classifier") for k in info["missing_keys"]):
        _no_trained_head(name)
    from alignlab.models.attention import enable_span_attention

    enable_span_attention(model)  # sdpa unless a forward passes a span plan (RewardCollator's prefix-shared rows)
    if "device_map" in kwargs or "quantization_config" in kwargs:
        return model  # placed (and quantised) by from_pretrained
    return model.to(resolve_device(device))


def _scorer_config(name: str, path: str, trust_remote_code: bool, kwargs: dict) -> tuple[Any, dict]:
    """`path`'s config with one output and a pad id (from the tokenizer: batched forwards), and the keyword arguments
    left for `from_pretrained`: config attributes (use_cache=False) go into the config (with `config=` they reach
    __init__), _HUB_KEYS to both."""
    from transformers import AutoConfig

    from alignlab.models.load import load_tokenizer

    try:
        config, rest = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, return_unused_kwargs=True,
                                                  **kwargs)
    except (OSError, ValueError) as e:
        raise AlignlabError(f"could not read the config of {name!r} ({path}): {e}") from e
    config.num_labels = 1
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = load_tokenizer(path, trust_remote_code=trust_remote_code).pad_token_id
    return config, {**rest, **{k: v for k, v in kwargs.items() if k in _HUB_KEYS}}


def _load_scorer_adapter(path: Path, **kw: Any) -> Any:
    """A LoRA reward/value adapter: its base as a scorer, then the adapter (and its trained head) on top. A causal
    LM's adapter (a LoRA SFT output) is a causal-LM checkpoint like any other: folded into its base, whose
    backbone the scorer takes, with a new head."""
    from peft import PeftModel

    from alignlab.models.load import adapter_base, load_model
    from alignlab.models.lora import merge_lora
    from alignlab.models.prepare import is_peft

    base_name, task = adapter_base(path, kw.get("allow_pickle", False))  # before peft unpickles anything
    trained_head = kw.pop("trained_head")
    if task != "CAUSAL_LM":  # SEQ_CLS, or an adapter saved without a task type: a scorer's, its head in the adapter
        base = load_scorer(base_name, **kw)  # itself an adapter's scorer (a critic on a LoRA RM): folded first
        return PeftModel.from_pretrained(merge_lora(base) if is_peft(base) else base, str(path))
    if trained_head:
        _no_trained_head(str(path))
    scorer = load_scorer(base_name, **kw)
    merged = merge_lora(load_model(str(path), **kw))
    prefix = scorer.base_model_prefix
    getattr(scorer, prefix).load_state_dict(getattr(merged, prefix).state_dict())
    scorer.name_or_path = str(path)  # what a LoRA on this scorer records as its base: this folder, folded again
    return scorer


def _no_trained_head(name: str) -> None:
    raise AlignlabError(f"{name!r} is not a reward model: its checkpoint has no trained scalar head (a language model's "
                        "checkpoint, a DPO policy say, would score with a new random head); give a folder `alignlab "
                        "rm` wrote")


def _head_module(model: Any) -> Any:
    """The scalar head (`score` for Llama/Mistral/Qwen/GPT-2, `classifier` elsewhere), peft- or DDP-wrapped or not."""
    inner = getattr(model, "module", model)  # DistributedDataParallel / FSDP wrapper
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    for attr in ("score", "classifier"):
        head = getattr(inner, attr, None)
        if head is not None:
            return head
    raise AlignlabError(f"{type(inner).__name__} has no scalar head (expected a `score` or `classifier` module)")


def head_outputs(model: Any, **forward: Any) -> torch.Tensor:
    """The scalar head's output at every position [B, T] (float32) of `model(**forward)`: the per-token values the
    head computes before the model pools them (a forward hook, so peft- and DDP-wrapped models work as they are)."""
    captured: list[torch.Tensor] = []
    hook = _head_module(model).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        model(**forward)
    finally:
        hook.remove()
    if not captured:
        raise AlignlabError("the scorer's head was not called during the forward pass")
    out = captured[-1]
    if out.shape[-1] != 1:
        raise AlignlabError(f"scorer head has {out.shape[-1]} outputs; reward and value models need num_labels=1")
    return out[..., 0].float()


def values(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-token head outputs [B, T] (float32); left or right padding both work (positions count real
    tokens only). Values at pad positions are meaningless: mask them."""
    # position ids from the mask so a left-padded row sees the same positions as when run alone
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return head_outputs(model, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


def score(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sequence scores [B] (float32): the head's output at each row's last attended token."""
    import torch

    per_token = values(model, input_ids, attention_mask)
    mask = attention_mask.bool()
    if not bool(mask.any(-1).all()):
        raise AlignlabError("score: a row has no attended tokens (empty sequence)")
    # index of the last 1 in each row; works for left padding (last column) and right padding alike
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, torch.full_like(positions, -1)).max(-1).values
    return per_token.gather(-1, last[:, None])[:, 0]
