"""The sampler's model call: which weights it runs with (SamplingConfig.weights_dtype) and how.

Decoding reads every weight once per step, so on a memory-bound step bf16 weights halve the time, and on
CPUs with AVX512-BF16 or AMX the bf16 matrix products also run at twice the fp32 rate. The bf16 copy is
made once per generate() call and used through `torch.func.functional_call`: the caller's module (a
policy being trained: its fp32 parameters, gradients and optimizer state) is never converted or touched.

One exception inside the bf16 path: PyTorch's CPU scaled-dot-product attention is about 4x slower in bf16
than in fp32 at decode shapes (one query against a short cache; measured 1.0 ms vs 0.23 ms per layer call
at batch 16 on an AMD EPYC with AVX512-BF16, 5.1 vs 1.1 ms with a 300-token cache). The attention is a
small share of the FLOPs, so on CPU the bf16 sampler runs it in fp32 (q, k, v upcast, the output cast
back) under a registered attention name, switched on for the duration of each model call only. The KV cache
is kept in fp32 on that path (`forward.cache_dtype`, read by rollout/engine.py): each step casts only its new
key/value column, where upcasting the whole cache in every layer at every step was 14% of a bf16 decode
(SmolLM2, 8 x 8 rows x 64 tokens, 1 thread).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ATTENTION = "alignlab_sdpa_fp32"
_registered = False


def resolve_weights_dtype(model: Any, choice: str):
    """The torch dtype to sample with for SamplingConfig.weights_dtype (see its docstring)."""
    import torch

    current = next(model.parameters()).dtype
    if choice == "model":
        return current
    if choice != "auto":
        return getattr(torch, choice)
    if current != torch.float32:
        return current
    dev = model.device
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else current
    if dev.type == "cpu":
        return torch.bfloat16 if cpu_has_bf16_units() else current
    return current


def cpu_has_bf16_units(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX-BF16): torch's private probe where the
    build has one (torch 2.13 does not), else the `flags` of /proc/cpuinfo (or the `cpuinfo` text given);
    False where neither answers."""
    import torch

    probe = getattr(torch._C._cpu, "_is_avx512_bf16_supported", None)
    if cpuinfo is None and probe is not None:
        return bool(probe())
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.partition(":")[2].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def keep_last(input_ids: Any):
    """`logits_to_keep` selecting the last position. An int makes transformers slice the hidden states
    (`h[:, -1:]`), a strided view when the input has more than one position, and in bf16 torch's matmul
    then broadcasts the LM head weight to a copy per row (bmm): 1.16 s against 9 ms for 8 prompts of
    SmolLM2 on one core (AMD EPYC). An index tensor makes it gather a contiguous [B, 1, H] instead."""
    import torch

    width = input_ids.shape[1]
    return 1 if width == 1 else torch.tensor([width - 1], device=input_ids.device)


def _sdpa_fp32(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention with q, k, v (and a float mask) in fp32; the output in the input dtype."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                          **kwargs)
    return out.to(query.dtype), weights


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(ATTENTION, _sdpa_fp32)
        AttentionMaskInterface.register(ATTENTION, sdpa_mask)
        _registered = True


def sampling_forward(model: Any, cfg: Any):
    """fn(input_ids, attention_mask, position_ids, cache) -> last-position logits [B, V], with the weights
    in cfg.weights_dtype (a copy of the parameters made here, once, when that differs from the model's)."""
    import torch

    from alignlab.rollout.generate import forward_kwargs

    kv = forward_kwargs(model)
    dtype = resolve_weights_dtype(model, cfg.weights_dtype)
    call = model
    if cfg.weights_dtype != "model" and dtype != next(model.parameters()).dtype:
        params = {k: (p.detach().to(dtype) if p.is_floating_point() else p) for k, p in model.named_parameters()}

        def call(**kw):
            return torch.func.functional_call(model, params, args=(), kwargs=kw, tie_weights=True, strict=False)

    config = model.config
    impl = config._attn_implementation  # models.load switches sdpa models to span attention: sdpa without a plan
    swap = dtype == torch.bfloat16 and model.device.type == "cpu" and impl in ("sdpa", "alignlab_spans")
    if swap:
        _register()

    def forward(input_ids, attention_mask, position_ids, cache):
        if swap:
            config._attn_implementation = ATTENTION
        try:
            return call(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        use_cache=True, logits_to_keep=keep_last(input_ids), **{kv: cache}).logits[:, -1]
        finally:
            if swap:
                config._attn_implementation = impl

    if swap:  # keys/values stored in fp32 as computed: the attention then reads the cache without a cast
        forward.cache_dtype = torch.float32
    return forward
