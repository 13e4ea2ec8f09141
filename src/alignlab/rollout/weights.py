"""The sampler's model call: which weights it runs with (SamplingConfig.weights_dtype) and how.

Decoding reads every weight once per step, so on a memory-bound step bf16 weights halve the time, and on
CPUs with AVX512-BF16 or AMX the bf16 matrix products also run at twice the fp32 rate. The bf16 copy is
made once per generate() call and swapped into the caller's modules for each forward only, then put back:
the caller's module (a policy being trained: its fp32 parameters, gradients and optimizer state) is never
converted.

A plain Llama (SmolLM2) sampled in bf16 on CPU runs rollout/decode_step.py's step instead of the model's forward
(its own bf16 copies, fewer and fused calls). Any other model runs its forward with the swaps below.

One exception inside the bf16 path: PyTorch's CPU scaled-dot-product attention was about 4x slower in bf16
than in fp32 at decode shapes on an AMD EPYC with AVX512-BF16 (one query against a short cache; 1.0 ms vs
0.23 ms per layer call at batch 16, 5.1 vs 1.1 ms with a 300-token cache); with AMX it is the faster one
(decode_step.py). The model-forward path runs it in fp32 (q, k, v upcast, the output cast back) under a registered
attention name, switched on for the duration of each model call only, and keeps the KV cache in fp32
(`forward.cache_dtype`, read by rollout/engine.py): each step casts only its new key/value column, where upcasting
the whole cache in every layer at every step was 14% of a bf16 decode (SmolLM2, 8 x 8 rows x 64 tokens, 1 thread).

bf16 matrix products on CPU go through oneDNN with the weight prepacked once per call (`packed_linears`): a
plain bf16 `F.linear` re-lays-out its weight on every call, which at decode's few rows costs as much as the
product (SmolLM2 on one core of an Intel Xeon with AMX, 64 rows: the LM head 24.5 ms -> 12.4 ms, an MLP
projection 0.54 -> 0.43 ms). The outputs are the same bits as the plain bf16 path (tests/unit/test_rollout_engine.py).
"""

from __future__ import annotations

import functools
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


def _cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The `flags` of /proc/cpuinfo (read once per process) or of the `cpuinfo` text given; empty where unreadable."""
    if cpuinfo is None:
        return _proc_cpu_flags()
    return frozenset(f for line in cpuinfo.splitlines() if line.startswith("flags")
                     for f in line.partition(":")[2].split())


@functools.cache
def _proc_cpu_flags() -> frozenset[str]:
    try:  # every generate() call asks; /proc/cpuinfo runs to megabytes on many-core machines
        return _cpu_flags(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return frozenset()


def cpu_has_bf16_units(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX-BF16): torch's private probe where the
    build has one (torch 2.13 does not), else the CPU flags (`_cpu_flags`); False where neither answers."""
    import torch

    probe = getattr(torch._C._cpu, "_is_avx512_bf16_supported", None)
    if cpuinfo is None and probe is not None:
        return bool(probe())
    return bool(_cpu_flags(cpuinfo) & {"avx512_bf16", "amx_bf16"})


def onednn_packs_bf16(cpuinfo: str | None = None) -> bool:
    """Whether oneDNN's prepacked bf16 Linear (torch.ops.mkldnn._reorder_linear_weight) runs on this CPU: it needs
    AVX512 BW/VL/DQ or AVX-NE-CONVERT, and raises a RuntimeError on an AVX2-only CPU (AMD EPYC family 25 model 1),
    where bf16 sampling takes torch's plain bf16 products instead."""
    flags = _cpu_flags(cpuinfo)
    return {"avx512bw", "avx512vl", "avx512dq"} <= flags or "avx_ne_convert" in flags


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has AMX-BF16 tile instructions: where bf16 attention runs faster than fp32 (decode_step.py)."""
    return "amx_bf16" in _cpu_flags(cpuinfo)


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


def packable_linear(m: Any) -> bool:
    """A plain nn.Linear whose product the bf16 sampler may run from a prepacked copy of its weight: not a subclass
    (e.g. a quantized Linear), and its forward not replaced (e.g. by accelerate's hooks) other than by a training
    loop's kept casts (models/kept_casts.py)."""
    import torch

    from alignlab.models.kept_casts import kept_cast_forward

    return type(m) is torch.nn.Linear and ("forward" not in m.__dict__ or kept_cast_forward(m))


def packed_linears(model: Any, dtype: Any, cast, rows: int) -> dict:
    """{module: forward} for every packable Linear (packable_linear) of a CPU model sampled in bf16: `cast(weight)`
    prepacked for oneDNN once (`rows`: the expected rows per call, a layout hint; any count works) and run through
    its packed matmul. Not where that does not apply: other dtypes or devices, a build without oneDNN, or the
    Linears of a peft adapter layer (it casts their input to the adapter weight's dtype itself)."""
    import torch

    if dtype != torch.bfloat16 or model.device.type != "cpu" or not torch.backends.mkldnn.is_available() \
            or not onednn_packs_bf16():
        return {}
    op, pack = torch.ops.mkldnn._linear_pointwise, torch.ops.mkldnn._reorder_linear_weight
    adapters = {c for m in model.modules() if hasattr(m, "base_layer") for c in m.modules() if c is not m}
    out = {}
    for m in model.modules():
        if not packable_linear(m) or m in adapters:
            continue
        w, b = pack(cast(m.weight), rows), (cast(m.bias) if m.bias is not None else None)
        out[m] = lambda x, w=w, b=b: op(x, w, b, "none", [], "")
    return out


def _param_swaps(model: Any, linears: dict, cast) -> list:
    """(slots, name, parameter, copy) for every parameter a call reads from its module (embeddings, norms, Linears not
    packed): the sampler puts the copies into the slots for each call and the parameters back after, functional_call's
    effect without its module walk (~5 ms a SmolLM2 decode step); a tied parameter gets one copy."""
    swaps, copies = [], {}
    for m in model.modules():
        if m in linears:  # a packed Linear never reads its weight
            continue
        for name, p in m._parameters.items():
            if p is not None:
                copies[id(p)] = copy = copies[id(p)] if id(p) in copies else cast(p)
                swaps.append((m._parameters, name, p, copy))
    return swaps


def sampling_forward(model: Any, cfg: Any):
    """fn(input_ids, attention_mask, position_ids, cache) -> last-position logits [B, V], with the weights
    in cfg.weights_dtype (a copy of the parameters made here, once, when that differs from the model's)."""
    import torch

    from alignlab.models.compiled import eager_blocks
    from alignlab.rollout.generate import forward_kwargs

    kv = forward_kwargs(model)
    dtype = resolve_weights_dtype(model, cfg.weights_dtype)
    convert = cfg.weights_dtype != "model" and dtype != next(model.parameters()).dtype

    def cast(p):
        return p.detach().to(dtype) if convert and p.is_floating_point() else p.detach()

    config = model.config
    impl = config._attn_implementation  # models.load switches sdpa models to span attention: sdpa without a plan
    swap = dtype == torch.bfloat16 and model.device.type == "cpu" and impl in ("sdpa", "alignlab_spans")
    if swap:
        _register()
    from alignlab.rollout.decode_step import llama_step

    # a plain Llama runs without transformers' module plumbing, from its own bf16 copies (decode_step.py)
    step = (llama_step(model, cast, cfg.batch_size, cpu_has_amx())
            if swap and torch.backends.mkldnn.is_available() and onednn_packs_bf16() else None)
    install = {} if step is not None else packed_linears(model, dtype, cast, cfg.batch_size)
    swaps = _param_swaps(model, install, cast) if convert and step is None else []
    kept = {m: m.__dict__["forward"] for m in install if "forward" in m.__dict__}  # a training loop's kept casts

    def forward(input_ids, attention_mask, position_ids, cache):
        if swap:
            config._attn_implementation = ATTENTION
        for m, f in install.items():  # for this call only: the caller's modules are left as they were
            m.__dict__["forward"] = f
        for slots, name, _, copy in swaps:
            slots[name] = copy
        try:
            if step is not None:
                return step(input_ids, attention_mask, position_ids, cache)
            with eager_blocks():  # a `compile: true` policy decodes eager (models/compiled.py)
                return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=True, logits_to_keep=keep_last(input_ids), **{kv: cache}).logits[:, -1]
        finally:
            for m in install:
                m.__dict__.pop("forward", None)
            for m, f in kept.items():
                m.__dict__["forward"] = f
            for slots, name, p, _ in swaps:
                slots[name] = p
            if swap:
                config._attn_implementation = impl

    if swap:  # keys/values stored in the dtype the attention reads: no cast of the whole cache at each step
        forward.cache_dtype = torch.float32 if step is None else step.cache_dtype
    return forward
