"""A Llama forward without transformers' module plumbing, for the bf16 CPU sampler (rollout/weights.py).

A SmolLM2 decode step at batch 16 (bf16, one thread, Intel Xeon with AMX) took ~52 ms through the model's own
forward, of which the packed matrix products ~30 ms and the attention ~7 ms; the rest was ~2,000 small torch ops and
the Python around them: 13,680 module calls per 30 steps (hook checks, keyword plumbing, output capture, deprecation
wrappers), each layer's norms, rotary embedding and cache update. A decode step is one query row per sequence, so
that is per-call overhead, not arithmetic. `llama_step` runs the same ops on the same tensors in the same order as
`LlamaForCausalLM.forward` (transformers 5) as the sampler calls it: the embedding, the rotary module,
`create_causal_mask`, per layer LlamaRMSNorm's steps, the packed q/k/v projections, `apply_rotary_pos_emb`'s steps,
the cache's `update`, the sampler's fp32 sdpa, the output projection and the residual, the MLP's
`down(silu(gate(x)) * up(x))`, the final norm and the packed LM head on the last position; so the logits are the
model forward's bit for bit (tests/unit/test_rollout_decode_step.py: tokens and log-probs with rows joining and
leaving, greedy and sampled; SmolLM2's logits checked equal over a padded prefill and 40 steps). Measured: 44.5 ms
against 49 ms a step, interleaved, same machine. Tried and dropped: one fused product for q/k/v and one for
gate/up (~2 ms a step more): bit-equal at 16 rows, not at a 640-row prefill, where oneDNN picks another kernel.

Only where that equality holds by construction: a `LlamaForCausalLM` (model_type "llama", SiLU MLP, one tensor-
parallel slice) whose modules are transformers' own Llama classes with no hooks and no replaced forward, every
Linear packed by the sampler (so no LoRA wrapper or quantized layer), loaded without hub kernels. Anything else runs
the model's forward.
"""

from __future__ import annotations

from typing import Any


def _rms(x: Any, norm: Any) -> Any:
    # LlamaRMSNorm.forward's steps
    import torch

    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


def _rotate(x: Any, cos: Any, sin: Any) -> Any:
    # apply_rotary_pos_emb's steps for one tensor (rotate_half: cat(-x2, x1))
    import torch

    half = x.shape[-1] // 2
    return (x * cos) + (torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin)


def _supported(model: Any, linears: dict) -> bool:
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
    hooked = nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks or any(
        m._forward_hooks or m._forward_pre_hooks or ("forward" in m.__dict__ and m not in linears)
        for m in model.modules())
    return not hooked and all(m in linears for m in model.modules() if isinstance(m, torch.nn.Linear))


def llama_step(model: Any, linears: dict, attention: Any):
    """fn(input_ids [B, L], attention_mask [B, W], position_ids [B, L], cache) -> last-position logits [B, V], the
    model forward's numbers (with `logits_to_keep=keep_last(input_ids)`, as the sampler calls it); None where the
    model is not a plain Llama (see the module docstring). `linears`: the sampler's {Linear: packed forward};
    `attention`: its attention function (q, k, v in fp32). The other weights are read from the modules at each call
    (the sampler swaps its bf16 copies in around it)."""
    if not _supported(model, linears):
        return None
    from transformers.masking_utils import create_causal_mask

    from alignlab.rollout.weights import keep_last

    inner, cfg = model.model, model.config
    layers = [(layer.input_layernorm, layer.self_attn, [linears[m] for m in (layer.self_attn.q_proj,
               layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj)], layer.post_attention_layernorm,
               layer.mlp.act_fn, [linears[m] for m in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)])
              for layer in inner.layers[: cfg.num_hidden_layers]]
    head = linears[model.lm_head]

    def step(input_ids, attention_mask, position_ids, cache):
        import torch.nn.functional as F

        emb = inner.embed_tokens
        h = F.embedding(input_ids, emb.weight, emb.padding_idx)
        mask = create_causal_mask(config=cfg, inputs_embeds=h, attention_mask=attention_mask, cache=cache,
                                  position_ids=position_ids)
        cos, sin = inner.rotary_emb(h, position_ids=position_ids)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        shape = (*h.shape[:-1], -1)
        for i, (norm1, attn, (q_proj, k_proj, v_proj, o_proj), norm2, act, (gate, up, down)) in enumerate(layers):
            x = _rms(h, norm1)
            heads = (*shape[:-1], -1, attn.head_dim)
            q = _rotate(q_proj(x).view(heads).transpose(1, 2), cos, sin)
            k = _rotate(k_proj(x).view(heads).transpose(1, 2), cos, sin)
            k, v = cache.update(k, v_proj(x).view(heads).transpose(1, 2), i)
            o, _ = attention(attn, q, k, v, mask, dropout=0.0, scaling=attn.scaling)
            h = h + o_proj(o.reshape(shape).contiguous())
            x = _rms(h, norm2)
            h = h + down(act(gate(x)) * up(x))
        h = _rms(h, inner.norm)
        keep = keep_last(input_ids)
        return head(h[:, -1:] if isinstance(keep, int) else h[:, keep])[:, -1]

    return step
