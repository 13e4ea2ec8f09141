"""A policy ready to train: tokenizer and model, LoRA-wrapped when the config asks; and what "peft" means.

`is_peft` is the one test every path uses (checkpoint save/load, FSDP weights, the reference choice): a
peft `PeftModel` wrapper, which saves only its adapter and can switch it off (`disable_adapter`) to
compute its base model. A DDP wrapper hides both attributes, so callers pass the unwrapped model.
"""

from __future__ import annotations

from typing import Any


def is_peft(model: Any) -> bool:
    """True for a peft model (LoRA adapter on a base model): it has an adapter config and can disable it."""
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def refuse_untrainable(model: Any, bf16: bool = False) -> None:
    """Models the training steps would train on other numbers than the model's own forward gives, refused before
    any work:
    - a mixture-of-experts config asking for its router's load-balancing loss (output_router_logits with a
      router_aux_loss_coef): the steps read hidden states, never the router logits, so the term was dropped
      silently (TRL's trainers add it);
    - ModernBERT's decoder, whose get_decoder() is its output projection behind a prediction head (dense,
      activation, norm) that the steps, applying the output embedding to the backbone's states, would skip (they
      failed with a TypeError);
    - with `bf16` (autocast over float32 master weights and optimizer states), trainable parameters in a lower
      precision (an in-memory model loaded in bf16): they trained in pure bf16, most small updates rounded away."""
    import torch

    from alignlab.errors import AlignlabError

    config = getattr(getattr(model, "module", model), "config", None)
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    if getattr(text, "output_router_logits", False) and getattr(text, "router_aux_loss_coef", 0):
        raise AlignlabError("the model's config asks for the router's auxiliary loss (output_router_logits with "
                            f"router_aux_loss_coef {text.router_aux_loss_coef}), which alignlab's training steps "
                            "do not add; set output_router_logits: false in its config.json to train without it")

    inner = getattr(model, "module", model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    if hasattr(inner, "get_decoder") and isinstance(inner.get_decoder(), torch.nn.Linear):
        raise AlignlabError(f"{type(inner).__name__}: its LM head runs a prediction head before the output "
                            "projection, which alignlab's training steps do not apply; this family is not supported")
    low = bf16 and sorted({str(p.dtype) for p in model.parameters() if p.requires_grad and p.dtype != torch.float32})
    if low:
        raise AlignlabError(f"bf16: true keeps float32 master weights and optimizer states, but the model's trainable "
                            f"parameters are {', '.join(low)}; pass the model in float32 (model.float()), or bf16: "
                            "false to train it in its own dtype")


def prepare_model(cfg: Any) -> tuple[Any, Any]:
    """Tokenizer and causal LM of `cfg.model`, with LoRA adapters when `cfg.lora` is set (any config with
    `model` and `lora` fields: the training configs, the RL configs)."""
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.models.tokenizer import use_chat_template

    tokenizer = use_chat_template(load_tokenizer(cfg.model), cfg.chat_template)
    return tokenizer, trainable_model(load_model(cfg.model), cfg.lora)


def trainable_model(model: Any, lora: Any) -> Any:
    """`model` ready to train: with `lora`, adapters on it; without, a LoRA adapter folder (a LoRA SFT output, say)
    is merged and fine-tuned in full (base + adapter: peft had frozen the base)."""
    if is_peft(model) and lora is None:
        from alignlab.models.lora import merge_lora

        model = merge_lora(model).requires_grad_(True)
    if lora is not None:
        from alignlab.models.lora import apply_lora

        model = apply_lora(model, lora)
    return model
