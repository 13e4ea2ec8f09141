"""The reference model, resolved and built in one place (DPO family, RL, the demo, `explain`, eval).

A reference is the policy's starting point that KL terms and implicit rewards compare against. It is one
of two things:

- "adapter": the LoRA policy with its adapter switched off (models.lora.adapter_disabled) computes its base
  weights exactly, so no second copy is held (torchtune's `disable_adapter`); only a peft policy has one.
- "model": a separate frozen model in eval mode: `source` (a model name/path or a loaded model), else a
  copy of the policy's current (starting) weights, with a LoRA adapter folded in.

`resolve_reference_kind` decides which ("auto": the adapter for a LoRA policy, else a model) and
`build_reference` builds it. The preference step's reference objects (a model, the adapter, cached
log-probs, none) come from `step_reference`, which uses both.
"""

from __future__ import annotations

from typing import Any

from alignlab.errors import AlignlabError
from alignlab.models.prepare import is_peft

REFERENCE_KINDS = ("auto", "model", "adapter", "cache", "none")


def resolve_reference_kind(requested: str, policy: Any) -> str:
    """"adapter" or "model" for `requested` in auto / adapter / model; "adapter" needs a LoRA policy."""
    if requested == "auto":
        return "adapter" if is_peft(policy) else "model"
    if requested == "adapter":
        if not is_peft(policy):
            raise AlignlabError("reference: adapter needs a LoRA policy (set lora: {r: 16, ...}) or use "
                                "reference: model")
        return "adapter"
    if requested == "model":
        return "model"
    raise AlignlabError(f"reference: must be auto, adapter or model here, got {requested!r}")


def start_reference_kind(requested: str, policy: Any) -> str:
    """resolve_reference_kind for a run about to train `policy`: under auto, a LoRA policy whose adapter already
    holds training (an in-memory peft model from an earlier run, say a LoRA SFT result) gets a frozen copy, since
    its adapter switched off is the model before that training, not this run's starting point."""
    kind = resolve_reference_kind(requested, policy)
    if requested == "auto" and kind == "adapter" and adapter_is_trained(policy):
        return "model"
    return kind


def adapter_is_trained(policy: Any) -> bool:
    """Whether a peft policy's adapter changes its outputs: a fresh LoRA layer has one factor zero (B for a linear
    layer, Hu et al. 2021, Sec. 4.1; A for peft's embedding layers), so switching it off gives the same model; a
    layer with both factors non-zero, or trained modules_to_save copies, do not."""
    import re

    import torch

    nonzero: dict[str, set[str]] = {}
    for name, p in policy.named_parameters():
        m = re.search(r"lora_(?:embedding_)?([AB])\b", name)
        if m and bool(torch.count_nonzero(p)):
            nonzero.setdefault(name[:m.start()] + name[m.end():], set()).add(m.group(1))
    if any(len(sides) == 2 for sides in nonzero.values()):
        return True
    for module in policy.modules():
        saved = getattr(module, "modules_to_save", None)
        original = getattr(module, "original_module", None)
        if saved is not None and original is not None:
            for copy_ in saved.values():
                if any(not torch.equal(a, b) for a, b in zip(copy_.parameters(), original.parameters())):
                    return True
    return False


def build_reference(policy: Any, kind: str, *, source: Any = None, device: Any = None, bf16: bool = False,
                    compiled: bool = False) -> Any:
    """The frozen reference model for `kind` "model" (None for "adapter": the policy's disabled adapter serves).

    source: a model name/path (loaded by models.load), a loaded model, or None for a copy of the policy
    as it is now (callers build the reference before training, so this is the starting point; a LoRA
    policy's copy has its adapter merged). device: where it lives (None: the policy's device). bf16: its
    Linear weights are stored in bfloat16 once, for use under bf16 autocast (same numbers as autocast
    over float32 weights, no per-step casts, half the memory). compiled: the config's `compile`: the reference's
    blocks are compiled as the policy's and its weights stay float32, so that its forward is the policy's bit for
    bit (models/compiled.py).
    """
    import copy

    import torch

    if kind == "adapter":
        resolve_reference_kind("adapter", policy)  # a clear error for a policy without LoRA
        return None
    if kind != "model":
        raise AlignlabError(f"build_reference: kind must be 'adapter' or 'model', got {kind!r}")
    if isinstance(source, str):
        from alignlab.models.load import load_model

        model = load_model(source)
    else:  # a copy: the caller's object (even the policy itself) is left as given, unfrozen and in its dtypes
        model = copy.deepcopy(policy if source is None else source)
        if source is None and is_peft(model):
            from alignlab.models.lora import merge_lora

            model = merge_lora(model)
    if device is None:
        device = next(policy.parameters()).device
    model = model.to(device).eval().requires_grad_(False)
    if compiled:
        from alignlab.models.compiled import compile_blocks

        compile_blocks(model)
    elif bf16:
        lower_linear_weights(model, torch.bfloat16)
    return model


def lower_linear_weights(model: Any, dtype: Any) -> None:
    """Store a frozen model's Linear weights in the autocast dtype, once.

    Autocast casts every Linear weight to `dtype` before its matmul anyway, and caches nothing for
    frozen weights, so a reference under mixed precision paid a cast of each weight on every forward.
    Embeddings (also a tied LM head) and norms keep their dtype, so the residual stream and every
    result are exactly those of autocast over the full-precision weights, with about half the memory.
    """
    import torch

    embedding = model.get_input_embeddings().weight
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight is not embedding:
            module.to(dtype)
    # transformers 5 loads a checkpoint's tensors zero-copy out of the safetensors file's mapping when the dtypes
    # match, and the mapping stays whole (every page read in, counted in RSS) while any of its tensors lives: the
    # kept embedding and norms held all 538 MB of SmolLM2's float32 file for their 113 MB. Own copies release it.
    for t in [*model.parameters(), *model.buffers()]:
        if t.dtype != dtype:
            t.data = t.data.clone()


def choose_reference_kind(kind: str, needs_reference: bool, policy: Any, has_ref_model: bool) -> str:
    """The preference step's kind (none, adapter, model, cache) from the config's `reference`, what the
    losses need and whether a separate ref_model is given.

    auto: none when no loss needs a reference; a separate ref_model when given; else start_reference_kind
    (the disabled adapter for a LoRA policy, no second copy, unless its adapter already holds training; a frozen
    model otherwise).
    """
    if kind not in REFERENCE_KINDS:
        raise AlignlabError(f"reference: must be one of {REFERENCE_KINDS}, got {kind!r}")
    if not needs_reference:
        return "none"
    if kind == "none":
        raise AlignlabError("reference: none, but a chosen loss needs reference log-probs")
    if kind == "auto" and has_ref_model:
        return "model"
    if kind == "cache":
        return kind
    return start_reference_kind(kind, policy)


def step_reference(kind: str, policy: Any, *, source: Any = None, chunk_size: int = 1024, bf16: bool = False,
                   compiled: bool = False) -> Any:
    """The preference step's reference object for `kind` (train/preference.py): NoReference, CachedReference,
    AdapterReference, or ModelReference over build_reference(policy, "model", source=...)."""
    from alignlab.train.preference import AdapterReference, CachedReference, ModelReference, NoReference

    if kind == "none":
        return NoReference()
    if kind == "cache":
        return CachedReference()
    if kind == "adapter":
        build_reference(policy, "adapter")
        return AdapterReference(chunk_size)
    import torch

    model = build_reference(policy, "model", source=source, compiled=compiled)
    # Under bf16 autocast the frozen reference keeps its Linear weights in bf16: same numbers, no per-step casts
    # (unless compiled: then float32, as the policy's compiled graph reads them).
    return ModelReference(model, chunk_size, autocast_dtype=torch.bfloat16 if bf16 else None, lower=not compiled)
