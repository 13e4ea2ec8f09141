"""Step functions: `step_fn(model, batch) -> (loss, metrics)` for the loop.

`causal_lm_step` is next-token cross-entropy averaged over trained tokens (labels != -100), shared by
pretraining and SFT (completion-only / assistant-only losses come from the labels the data layer
masks). It works on padded and on packed batches: packed rows carry position_ids and no attention
mask, and `use_cache=False` keeps transformers' packed-sequence detection on (see data/collate.py).
"""

from __future__ import annotations

from typing import Any


def model_inputs(model: Any, batch: dict) -> dict[str, Any]:
    """Forward kwargs of a padded or packed batch; a packed batch's span plan when the model takes one (and in place
    of a mask, `planned_mask`: no [T, T] mask is built for it)."""
    from alignlab.models.attention import planned_mask, uses_spans

    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                  position_ids=batch.get("position_ids"), use_cache=False)
    if batch.get("attn_spans") is not None and uses_spans(model):
        kwargs["attn_spans"] = batch["attn_spans"]
        kwargs["attention_mask"] = planned_mask(batch["input_ids"])
    return kwargs


def lm_forward(model: Any, batch: dict) -> Any:
    """Logits [B, T, V] for a padded or packed batch."""
    return model(**model_inputs(model, batch)).logits


def shifted_token_nll(logits: Any, labels: Any) -> tuple[Any, Any]:
    """Per-token negative log-likelihood [B, T-1] (0 where not trained) and the trained-token mask.

    logits[:, t] predicts labels[:, t + 1]; log_softmax runs in float32 so bf16 autocast does not
    round the loss.
    """
    import torch.nn.functional as F

    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target.ne(-100)
    nll = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="none"
    ).view_as(target)
    return nll, mask


def output_weights(model: Any) -> tuple[Any, Any]:
    """(weight [V, H], bias or None) of the LM head, through DDP and peft wrappers."""
    head = getattr(model, "module", model).get_output_embeddings()
    return head.weight, getattr(head, "bias", None)


def supports_chunked(model: Any) -> bool:
    """Chunked log-probs recompute logits as hidden @ W.T (+ b); models that post-process logits
    (final soft-capping, logit scaling) need the plain path, and so does a head that is not a plain Linear (a
    LoRA-wrapped lm_head: its .weight is the frozen base, so the adapter would be left out of loss and gradients)."""
    import torch

    from alignlab.ops.logprobs import head_post

    inner = getattr(model, "module", model)
    cfg = getattr(inner, "config", None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    return (cfg is None or head_post(cfg) == (None, None, None)) and type(head) is torch.nn.Linear


def chunked_causal_lm_step(model: Any, batch: dict, chunk_size: int = 1024) -> tuple[Any, dict[str, Any]]:
    """Same loss and token accuracy as `causal_lm_step`, but the [tokens, vocab] logits never exist.

    The decoder returns its final (normed) hidden states and the model's head is never called (a DDP/FSDP
    wrapper's forward runs with an empty `logits_to_keep`: an int would slice one position, a strided view that
    bf16 CPU matmuls turn into a copy of the head weight per row); the LM head is applied chunk by chunk to the
    TRAINED positions only (`ops.logprobs.chunked_token_logprobs`), so prompt tokens cost no head FLOPs and the
    peak memory of the head drops from O(N * V) to O(chunk_size * V).
    """
    from alignlab.ops.logprobs import chunked_token_logprobs
    from alignlab.train.preference import _is_wrapped, _unwrap

    inputs = model_inputs(model, batch)
    if _is_wrapped(model):  # DDP/FSDP must see the call
        no_logits = batch["input_ids"].new_zeros(0)
        final = model(**inputs, output_hidden_states=True, logits_to_keep=no_logits).hidden_states[-1]
    else:  # the decoder alone: the head's empty matmul still cost a bf16 cast of its [V, H] weight under autocast
        final = _unwrap(model).get_decoder()(**inputs).last_hidden_state
    target = batch["labels"][:, 1:]
    mask = target.ne(-100)
    hidden = final[:, :-1][mask]  # [trained tokens, H]
    weight, bias = output_weights(model)
    labels = target[mask]
    predicted = labels.new_empty(labels.shape)  # each position's argmax, filled chunk by chunk
    logps = chunked_token_logprobs(hidden, weight, labels, chunk_size=chunk_size, bias=bias, predictions=predicted)
    n = mask.sum().clamp(min=1)
    return -logps.sum() / n, {"mean_token_accuracy": ((predicted == labels).sum() / n).detach()}


def causal_lm_step(model: Any, batch: dict) -> tuple[Any, dict[str, Any]]:
    """Mean next-token cross-entropy over the batch's trained tokens; reports token accuracy too."""
    logits = lm_forward(model, batch)
    nll, mask = shifted_token_nll(logits, batch["labels"])
    n = mask.sum().clamp(min=1)
    loss = nll.sum() / n
    correct = (logits[:, :-1].argmax(-1) == batch["labels"][:, 1:]) & mask
    return loss, {"mean_token_accuracy": (correct.sum() / n).detach()}
