"""Which row layouts a model can take and still give the plain path's numbers (DESIGN: a fast path steps aside).

Packed rows (sequences end to end, position ids restarting) and prefix-shared rows (one prompt, then chosen and
rejected) keep their sequences apart only in attention: by span attention's plan (models/attention.py) or by a mask
transformers derives from the position ids. So a layout steps aside for models with local attention (one mask for
every layer drops a window), layers that are not attention (a scan or convolution runs from one sequence into the
next), and masks that do not read position ids.
"""

from __future__ import annotations

from typing import Any

from alignlab.models.attention import uses_spans


def local_attention(config: Any) -> bool:
    """Whether some layers attend only to a window or chunk of keys (Mistral's sliding_window, Gemma's and Phi-3's
    sliding layers, Llama 4's attention chunks): span attention sees a whole span, so it is not for these."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "sliding_window", None) or getattr(text, "attention_chunk_size", None)
                or any("sliding" in str(t) or "chunked" in str(t) for t in getattr(text, "layer_types", None) or ())
                or "local" in (getattr(text, "attention_layers", None) or ()))  # GPT-Neo's local layers


_SCANS = ("Mamba", "ShortConv", "GatedDeltaNet", "LinearAttention", "Recurrent", "Rwkv", "RWKV")


def recurrent_mixing(model: Any) -> bool:
    """Whether some layers mix tokens by a scan or a causal convolution rather than attention (Mamba in Jamba, Bamba,
    Falcon-H1, Granite 4; LFM2's short convolutions; Qwen3-Next's linear attention; RWKV): a sequence boundary inside
    a row exists only in attention masks, so such a layer runs through packed and prefix-shared rows from one
    sequence into the next (rejected saw chosen). These models take padded rows: one sequence a row."""
    import torch

    inner = getattr(model, "module", model)
    return any(isinstance(m, torch.nn.Conv1d) or any(k in type(m).__name__ for k in _SCANS) for m in inner.modules())


def packs_exactly(model: Any) -> bool:
    """Whether padding-free packed rows keep their sequences apart in `model`: under span attention, or where a
    probe finds a packed row's second sequence gives its own logits. transformers splits a packed row where its
    position ids restart, but only for models that pass position ids into their mask: Bloom (ALiBi), MPT and XGLM
    let each example attend to the one before it (Bloom's held-out loss 10.65 packed against 10.77). Recurrent
    layers never do (`recurrent_mixing`)."""
    import torch

    inner = getattr(model, "module", model)
    if recurrent_mixing(inner):
        return False
    if uses_spans(inner):
        return True
    was_training = inner.training
    try:
        device = next(inner.parameters()).device
        ids = torch.tensor([[5, 6, 7, 8, 9, 10]], device=device)
        inner.eval()
        with torch.no_grad():
            packed = inner(input_ids=ids, position_ids=torch.tensor([[0, 1, 2, 0, 1, 2]], device=device),
                           use_cache=False).logits[0, 3:]
            alone = inner(input_ids=ids[:, 3:], use_cache=False).logits[0]
        return bool(torch.allclose(packed.float(), alone.float(), atol=1e-4, rtol=1e-3))
    except Exception:  # a forward without position ids, say: no packed rows for it
        return False
    finally:
        inner.train(was_training)


def pair_layout(path: str, model: Any) -> str:
    """The layout `model` can take for `path`: prefix-shared rows without span attention carry one 4D mask for every
    layer, which drops a sliding-window layer's band (Mistral, Gemma 2/3, Phi-3 with a window: chosen log-probs off
    by 0.7 nats at window 4), so models with local attention take packed rows, which give the plain path's numbers;
    models with recurrent layers (`recurrent_mixing`) take plain rows."""
    if path != "plain" and recurrent_mixing(model):
        return "plain"
    config = getattr(getattr(model, "module", model), "config", None)
    return "packed" if path == "prefix" and config is not None and local_attention(config) else path
