"""A Llama forward without transformers' module plumbing, for the bf16 CPU sampler (rollout/weights.py).

A SmolLM2 decode step at batch 16 (bf16, one thread, Intel Xeon with AMX) spent ~28 ms in its 211 packed matrix
products, ~8 ms in attention and ~9 ms in ~1,700 small torch ops and the Python around them (13,680 module calls
per 30 steps through the model's own forward). A decode step is one query row per sequence, so that is per-call
overhead, not arithmetic. `llama_step` runs Llama's computation with fewer, larger calls:

- one packed product for q, k and v, their rotary embedding applied to q and k together (rotate_half(x) * sin as
  roll(x) * cat(-sin1, sin2), the same bits);
- the residual adds and SwiGLU's `silu(gate(x)) * up(x)` done inside oneDNN's products as post-ops (on the fp32
  accumulator: one rounding to bf16 where the model's forward rounds the product first);
- on CPUs with AMX, keys and values kept and attended in bf16 (the values the bf16 projections produced, so the
  cache loses nothing); elsewhere in fp32, as the model-forward path does (CPU bf16 attention was 4x slower than
  fp32 on an AMD EPYC with AVX512-BF16);
- a decode step's grouped-query attention as `groups` query rows per key/value head (transformers' pack_gqa layout).

So the logits are not the model forward's bits, only its numbers to bf16 rounding: the test
(tests/unit/test_rollout_decode_step.py) replays the same tokens through both, rows leaving and joining, and checks
the step is no further from the float32 model than the bf16 model forward is (within 1.5x; measured 0.94-1.15x worst,
0.95-0.98x mean). The sampler's log-probs are what the rollout/trainer mismatch correction reads (rl/), as for any
bf16 sampler. Measured (SmolLM2, batch 16, ~60 cached tokens, one thread of an Intel Xeon with AMX, interleaved):
38.9 ms a step against 43.2 ms for the same ops one call each (this module's earlier, bit-exact version) and ~48-53
ms through the model's forward; mean |logit error| against float32 0.105, against 0.118 for the bf16 forward.

Only for a `LlamaForCausalLM` (model_type "llama", SiLU MLP, one tensor-parallel slice) whose modules are
transformers' own Llama classes with no hooks and no replaced forward (but the training loops' lean norm and MLP
forwards, models/lean_blocks.py: the same computation) and every Linear packable by the sampler (so no LoRA wrapper or
quantized layer), loaded without hub kernels. Anything else runs the model's forward.
"""

from __future__ import annotations

from typing import Any


def _supported(model: Any, packable) -> bool:
    import torch
    from torch.nn.modules import module as nn_module

    cfg, inner = model.config, getattr(model, "model", None)
    if (getattr(cfg, "model_type", None) != "llama" or getattr(cfg, "pretraining_tp", 1) != 1
            or cfg.hidden_act != "silu" or getattr(model, "use_kernels", False) or inner is None
            or type(getattr(inner, "embed_tokens", None)) is not torch.nn.Embedding):
        return False
    classes = [(model, "LlamaForCausalLM"), (inner.norm, "LlamaRMSNorm")] + [
        pair for layer in inner.layers for pair in ((layer, "LlamaDecoderLayer"), (layer.self_attn, "LlamaAttention"),
                                                    (layer.mlp, "LlamaMLP"), (layer.input_layernorm, "LlamaRMSNorm"),
                                                    (layer.post_attention_layernorm, "LlamaRMSNorm"))]
    if any(type(m).__name__ != name for m, name in classes):
        return False
    from alignlab.models.lean_blocks import is_lean

    modules = list(model.modules())
    hooked = nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks or any(
        m._forward_hooks or m._forward_pre_hooks or ("forward" in m.__dict__ and not (packable(m) or is_lean(m)))
        for m in modules)
    # every Linear a plain one the sampler may pack (a LoRA wrapper's base layer or adapters are not: peft)
    return not hooked and not any(hasattr(m, "base_layer") for m in modules) and all(
        packable(m) for m in modules if isinstance(m, torch.nn.Linear))


def _rms(x: Any, weight: Any, eps: float) -> Any:
    # LlamaRMSNorm.forward's steps (normalised in fp32, rounded, then scaled): as fast as torch's fused rms_norm here
    import torch

    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _weights(model: Any, cast, rows: int):
    """The step's bf16 weights: per layer (input norm, packed (weight, bias) of q/k/v stacked, of o, post-attention
    norm, of gate, up, down), the embedding, the final norm and the packed LM head."""
    import torch

    pack, inner = torch.ops.mkldnn._reorder_linear_weight, model.model

    def packed(*linears):  # one product for several Linears of the same input: their weights stacked
        w = torch.cat([cast(m.weight) for m in linears]) if len(linears) > 1 else cast(linears[0].weight)
        b = [m.bias for m in linears]
        return pack(w, rows), (torch.cat([cast(x) for x in b]) if b[0] is not None else None)

    layers = [(cast(layer.input_layernorm.weight), packed(a.q_proj, a.k_proj, a.v_proj), packed(a.o_proj),
               cast(layer.post_attention_layernorm.weight), packed(mlp.gate_proj), packed(mlp.up_proj),
               packed(mlp.down_proj))
              for layer in inner.layers[: model.config.num_hidden_layers] for a, mlp in [(layer.self_attn, layer.mlp)]]
    embed, lm = cast(inner.embed_tokens.weight), model.lm_head
    # a tied head packs the embedding's copy (one cast of the [V, H] weight, ~35 ms for SmolLM2, not two)
    head = (pack(embed, rows), None) if lm.weight is inner.embed_tokens.weight and lm.bias is None else packed(lm)
    return layers, embed, cast(inner.norm.weight), head


def llama_step(model: Any, cast, rows: int, bf16_attention: bool):
    """fn(input_ids [B, L], attention_mask [B, W], position_ids [B, L], cache) -> last-position logits [B, V] in
    bf16, or None where the model is not a plain Llama (see the module docstring). `cast(tensor)`: the bf16 copy of a
    parameter (made here, once; the step never reads the model's own parameters); `rows`: the expected rows per call
    (oneDNN's layout hint); `bf16_attention`: keys/values in bf16 (else fp32: `step.cache_dtype` says which). The
    caller sets the model's attention implementation to one whose mask is sdpa's (the mask is built by transformers'
    `create_causal_mask`, so left padding and rows joining mid-generation are masked as the model forward masks them).
    """
    import torch

    from alignlab.rollout.weights import packable_linear

    if not _supported(model, packable_linear):
        return None
    import torch.nn.functional as F
    from transformers.masking_utils import create_causal_mask

    from alignlab.rollout.weights import keep_last

    op, fused = torch.ops.mkldnn._linear_pointwise.default, torch.ops.mkldnn._linear_pointwise.binary
    inner, cfg = model.model, model.config
    layers, embed, final, head = _weights(model, cast, rows)
    attn = inner.layers[0].self_attn
    nq, nk, dim, scale = cfg.num_attention_heads, cfg.num_key_value_heads, attn.head_dim, attn.scaling
    eps, half, pad = cfg.rms_norm_eps, attn.head_dim // 2, inner.embed_tokens.padding_idx
    norms = [layer[0] for layer in layers[1:]] + [final]  # the norm after each layer's MLP

    def step(input_ids, attention_mask, position_ids, cache):
        b, n = input_ids.shape
        h = F.embedding(input_ids, embed, pad)
        mask = create_causal_mask(config=cfg, inputs_embeds=h, attention_mask=attention_mask, cache=cache,
                                  position_ids=position_ids)
        cos, sin = inner.rotary_emb(h, position_ids=position_ids)  # [B, L, D], as the model's rotary module gives
        cos, sin = cos.unsqueeze(2), torch.cat((-sin[..., :half], sin[..., half:]), dim=-1).unsqueeze(2)
        x = _rms(h, layers[0][0], eps)
        for i, (_, (w_qkv, b_qkv), (w_o, b_o), norm2, (w_g, b_g), (w_u, b_u), (w_d, b_d)) in enumerate(layers):
            qkv = op(x, w_qkv, b_qkv, "none", [], "").view(b, n, nq + 2 * nk, dim)
            qk = qkv[:, :, :nq + nk]
            qk = (qk * cos) + (torch.roll(qk, half, -1) * sin)  # apply_rotary_pos_emb on q and k at once
            k, v = cache.update(qk[:, :, nq:].transpose(1, 2), qkv[:, :, nq + nk:].transpose(1, 2), i)
            q = qk[:, :, :nq].transpose(1, 2)
            q = q if bf16_attention else q.float()
            if n == 1:  # one query per head: a key/value head's `nq // nk` queries as rows of that head
                o = F.scaled_dot_product_attention(q.reshape(b, nk, nq // nk, dim), k, v, attn_mask=mask,
                                                   scale=scale)
            else:
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale,
                                                   enable_gqa=True)
            o = o.reshape(b, nq, n, dim).transpose(1, 2).reshape(b, n, nq * dim).to(h.dtype)
            h = fused(o, h, w_o, b_o, "add")  # h + o_proj(o)
            x = _rms(h, norm2, eps)
            u = fused(x, op(x, w_g, b_g, "swish", [], ""), w_u, b_u, "mul")  # silu(gate(x)) * up(x)
            h = fused(u, h, w_d, b_d, "add")  # h + down(u)
            x = _rms(h, norms[i], eps)
        keep = keep_last(input_ids)
        return op(x[:, -1:] if isinstance(keep, int) else x[:, keep], *head, "none", [], "")[:, -1]

    step.cache_dtype = None if bf16_attention else torch.float32
    return step
