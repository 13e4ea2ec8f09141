"""Language-model training parts shared by `sft` and `pretrain`: the step choice and the perplexity eval."""

from __future__ import annotations

import math
from typing import Any


def lm_step_for(model: Any, chunked: bool, chunk_size: int):
    """The chunked LM step when asked and the model allows it, else the plain one (same loss either way)."""
    from functools import partial

    from alignlab.train.steps import causal_lm_step, chunked_causal_lm_step, supports_chunked

    if chunked and supports_chunked(model):
        return partial(chunked_causal_lm_step, chunk_size=chunk_size)
    return causal_lm_step


def perplexity_eval(step_fn, dataset: list, collate, cfg: Any, device: str):
    """eval_fn(model) -> eval_loss (token mean), eval_perplexity = exp(eval_loss)."""
    from alignlab.train.loop import evaluate

    def eval_fn(model: Any) -> dict[str, float]:
        metrics = evaluate(model, step_fn, dataset, collate, batch_size=cfg.micro_batch_size(), device=device)
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
        return metrics

    return eval_fn
