"""Activation checkpointing of a transformers model's decoder layers: full or selective.

`full` (`gradient_checkpointing: true`) keeps only each layer's input and recomputes the whole layer in backward:
the least memory, one more forward of the model. `selective` keeps the outputs of the matrix products and of
attention (the expensive ops) and recomputes the rest in backward: norms, activations, residual adds, rotary
embeddings and autocast's dtype casts (so no bf16 copy of a weight or an activation is held from forward to
backward). That is selective activation recomputation (Korthikanti et al. 2022, "Reducing Activation
Recomputation in Large Transformer Models", Sec. 4.3), with PyTorch's selective-checkpoint policy picking ops at
dispatch: recomputing elementwise ops costs a few per cent of a step and frees most of what they stored.
Both recompute exactly the ops they dropped, so losses and gradients equal the plain path's (test).
"""

from __future__ import annotations

from typing import Any

MODES = (False, True, "selective")


def _policy():
    import torch
    from torch.utils.checkpoint import CheckpointPolicy

    aten = torch.ops.aten
    keep = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default}
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
                 "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"):
        if hasattr(aten, name):
            keep.add(getattr(aten, name).default)

    def policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
        return CheckpointPolicy.MUST_SAVE if op in keep else CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def selective_context() -> Any:
    """The (forward, recompute) context pair torch.utils.checkpoint takes as `context_fn` for selective mode."""
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_policy())


def enable_checkpointing(model: Any, mode: bool | str) -> None:
    """Turn on `mode` (False: off, True: full, "selective") for `model`'s decoder layers; non-reentrant, which
    works with frozen (LoRA) inputs without extra hooks. transformers applies it in train mode only."""
    if mode not in MODES:
        raise ValueError(f"gradient_checkpointing: {mode!r} is not one of false, true, selective")
    if not mode:
        return
    kwargs: dict[str, Any] = {"use_reentrant": False}
    if mode == "selective":
        kwargs["context_fn"] = selective_context
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x's name
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
