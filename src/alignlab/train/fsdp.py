"""Fully sharded data parallel (PyTorch FSDP2, `fully_shard`) for the shared loop: `distributed: fsdp`.

DDP keeps a whole copy of the weights, gradients and AdamW moments on every rank; FSDP splits all three
across ranks (ZeRO-3, Rajbhandari et al. 2020) and gathers one transformer block's weights just before
its forward/backward, freeing them after. The wrap unit is the decoder layer: Hugging Face models name
their block classes in `_no_split_modules` (`LlamaDecoderLayer`, `Qwen2DecoderLayer`, ...), the same
hint accelerate's FSDP auto-wrap policy reads. Each block is one FSDP unit (one all-gather per block),
and the root module holds the rest (embeddings, final norm, LM head, tied or not).

What changes for the loop, all behind `World(strategy="fsdp")`:
- sharding replaces the parameters by DTensor shards, so the optimizer is built AFTER `shard`;
- gradient sync is turned off on micro-steps before the last (`set_requires_gradient_sync`), as
  DDP's `no_sync`;
- checkpoints gather a full (unsharded) state dict onto rank 0's CPU (a collective: every rank calls
  `gather_full_state`), so `checkpoint-N/` is the same Hugging Face folder as under DDP and the final
  model loads with plain `from_pretrained`. The optimizer file holds AdamW state keyed by parameter
  name (torch.distributed.checkpoint's full optimizer state dict); resume reads both back on every rank
  and scatters the shards (`load_full_state`). Gathering the full state on one rank is simple and
  portable but needs the whole model in rank 0's CPU memory: fine to ~10B parameters on a large host.

Tested here on CPU with the gloo backend (2 processes); on GPUs the same calls run over NCCL.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from alignlab.errors import AlignlabError


def resolve_strategy(configured: str, world_size: int) -> str:
    """The engine to run: alignlab's `distributed` key, or FSDP when `accelerate launch` was configured for it.

    accelerate's FSDP / DeepSpeed plugins act only on code that calls `Accelerator.prepare`; alignlab's loop
    does not, so an accelerate config asking for them would otherwise be silently ignored.
    """
    import os

    # DeepSpeed first: one process under it (ZeRO-Offload's usual launch) trained without it, silently
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        raise AlignlabError(
            "accelerate launch is configured for DeepSpeed, which alignlab's training loop does not drive. "
            "Use distributed=fsdp (full sharding of weights, gradients and optimizer state, as ZeRO-3) with "
            "an accelerate config without DeepSpeed, or launch with torchrun; see docs/distributed.md"
        )
    if world_size < 2:
        return "ddp"  # one process: nothing to shard or synchronise
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        return "fsdp"
    return configured


def decoder_layer_classes(model: Any) -> tuple[type, ...]:
    """The transformer block classes of `model` (through a peft wrapper), from HF's `_no_split_modules`."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    classes = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not classes:
        raise AlignlabError(
            f"distributed=fsdp: {type(model).__name__} names no transformer block class in _no_split_modules, "
            "so there is no layer to shard by; use distributed=ddp for this model"
        )
    return tuple(sorted(classes, key=lambda c: c.__name__))


def shard(model: Any, *, bf16: bool = False, cpu_offload: bool = False) -> Any:
    """Shard `model` in place over the default process group: each decoder layer, then the root.

    bf16: compute in bfloat16 with float32 master weights and float32 gradient reduction (the usual
    FSDP mixed-precision policy). cpu_offload: keep shards and optimizer state on CPU (slow, for memory).
    """
    import torch

    api = _fsdp2()
    mp = api.MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else api.MixedPrecisionPolicy()
    offload = api.CPUOffloadPolicy() if cpu_offload else api.OffloadPolicy()
    blocks = decoder_layer_classes(model)
    for module in list(model.modules()):
        if isinstance(module, blocks):
            api.fully_shard(module, mp_policy=mp, offload_policy=offload)
    api.fully_shard(model, mp_policy=mp, offload_policy=offload)
    return model


def _fsdp2() -> Any:
    """FSDP2's namespace: public since torch 2.6, under _composable before (2.4, 2.5)."""
    try:
        import torch.distributed.fsdp as api

        api.fully_shard  # noqa: B018 -- older torch has the module but not FSDP2 in it
        return api
    except (ImportError, AttributeError):
        pass
    try:
        import torch.distributed._composable.fsdp as api

        return api
    except ImportError:
        raise AlignlabError("distributed=fsdp needs torch >= 2.4 built with torch.distributed") from None


def is_sharded(model: Any) -> bool:
    """True for a module `shard` has wrapped (False where torch was built without torch.distributed)."""
    try:
        return isinstance(model, _fsdp2().FSDPModule)
    except AlignlabError:
        return False


def gradient_sync(model: Any, enabled: bool):
    """Context: skip the gradient reduce-scatter on micro-steps before the last (FSDP's no_sync)."""
    if enabled or not is_sharded(model):
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def off():
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)

    return off()


def gather_full_state(model: Any, optimizer: Any) -> tuple[dict, dict]:
    """(model state, optimizer state), unsharded on rank 0's CPU; empty dicts on other ranks. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    # A tied parameter (LM head = embeddings) comes back as two separate copies, which save_pretrained would
    # then write twice; keep only its first name, as save_pretrained does for an unsharded model.
    first = {name for name, _ in model.named_parameters()}
    aliases = {name for name, _ in model.named_parameters(remove_duplicate=False)} - first
    return {k: v for k, v in model_state.items() if k not in aliases}, optim_state


def load_checkpoint(directory: str | Path, model: Any, optimizer: Any, rank: int = 0) -> dict[str, Any]:
    """Resume a sharded run: every rank reads the full weights and optimizer state of `directory` and keeps
    its own shards; RNG states as in a DDP resume. Returns trainer_state (step, data position, ...)."""

    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    from alignlab.train.checkpoint import CheckpointError, load_tensors, read_state, restore_rng

    directory = Path(directory)
    state = read_state(directory)
    weights = _checkpoint_weights(model, directory)
    optim = load_tensors(directory / "optimizer.pt")
    if any(isinstance(k, int) for k in optim.get("state", {})):
        raise CheckpointError(f"{directory}: its optimizer state is keyed by position (a DDP run, or distributed="
                              "fsdp on one process, where FSDP is off), which a sharded resume cannot map; resume "
                              "it with the world size it was written with, or start over with resume=never")
    # strict=False: save_pretrained leaves out a tied LM head, which shares the embedding's parameter anyway.
    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optim,
                   options=StateDictOptions(full_state_dict=True, strict=False))
    restore_rng(directory, rank)
    return state


def _checkpoint_weights(model: Any, directory: Path) -> dict[str, Any]:
    """The checkpoint's weights under the model's own parameter names. A peft checkpoint holds only the
    adapter, saved without the adapter name (`lora_A.weight` for the model's `lora_A.default.weight`, `score.weight`
    for `score.modules_to_save.default.weight`)."""
    from alignlab.train.checkpoint import CheckpointError, _weights, is_peft

    if not is_peft(model):
        return _weights(directory, adapter=False)
    saved = _weights(directory, adapter=True)
    name = f".{model.active_adapter}."

    def saved_key(key: str) -> str:  # a modules_to_save copy (a scorer's head) is saved under the module's own name
        return key.replace(f".modules_to_save{name}", ".").replace(name, ".")

    out = {key: saved[saved_key(key)] for key in model.state_dict() if saved_key(key) in saved}
    if len(out) != len(saved):
        raise CheckpointError(f"{directory}: {len(saved) - len(out)} adapter tensors match no parameter of the model")
    return out
