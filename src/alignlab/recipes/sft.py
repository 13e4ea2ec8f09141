"""`alignlab sft`: supervised fine-tuning on prompt/completion or multi-turn chat data.

Wiring only: rows from `data.sources` (TRL, Alpaca, ShareGPT ... detected), token ids and labels from
`data.tokenize` (the prompt / non-assistant turns are -100, so the loss is completion-only or
assistant-only), batches from `data.collate` (padding-free packing by default), the LM step from
`train.steps`, and the shared loop. Evaluation reports eval_loss and eval_perplexity = exp(eval_loss)
on `eval_data` or a seeded held-out split of the training rows.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignlab.errors import AlignlabError
from alignlab.train.config import TrainConfig


@dataclass
class SFTConfig(TrainConfig):
    model: str = "smollm2-135m-instruct"
    """Model to fine-tune: HF directory, hub id (offline cache) or alias (smollm2-135m-instruct, tiny-random)."""
    data_format: str | None = None
    """Force the data format (e.g. alpaca, sharegpt, messages, prompt_completion); null detects it."""
    packing: bool = True
    """Padding-free packing: a micro-batch's sequences share one row with restarting positions (no pad FLOPs)."""
    pack_length: int | None = None
    """Longest packed row in tokens (null: max_length) when binning is cheaper than one long row: attention
    costs O(row length^2) even for masked-out blocks, binned rows pay padding; collate picks the cheaper."""
    chunked_logprobs: bool = True
    """Apply the LM head chunk-wise to trained tokens only; same loss, far less memory than full logits."""
    logprob_chunk_size: int = 1024
    """Tokens per LM-head chunk when chunked_logprobs is on (memory ~ chunk x vocab x 4 bytes)."""


def split_eval(rows: list, fraction: float, seed: int, cap: int) -> tuple[list, list]:
    """Seeded held-out split: (train rows, eval rows), at least one eval row when fraction > 0."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(cap, max(1, round(fraction * len(rows))))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in order[:n_eval]]


def load_sft_rows(path: str, cfg: SFTConfig) -> list:
    from alignlab.data.sources import load_rows

    result = load_rows(path, task="sft", format=cfg.data_format, on_bad_row=cfg.on_bad_row)
    if result.skipped:
        print(f"{path}: skipped bad records {dict(result.skipped)}", flush=True)
    return result.rows


def tokenize_rows(rows: list, tokenizer: Any, max_length: int, source: str) -> list:
    """TokenizedSFT examples with at least one trained token (others are counted and dropped)."""
    from alignlab.data.tokenize import tokenize_sft

    out = []
    for row in rows:
        ex = tokenize_sft(row, tokenizer, max_length)
        if any(label != -100 for label in ex.labels[1:]):
            out.append(ex)
    if len(out) < len(rows):
        print(f"{source}: {len(rows) - len(out)} rows have no completion token left within max_length "
              f"{max_length}; dropped", flush=True)
    if not out:
        raise AlignlabError(f"{source}: no trainable rows (raise max_length?)")
    return out


def lm_step_for(model: Any, cfg: SFTConfig):
    """The chunked LM step when the model allows it, else the plain one (same loss either way)."""
    from functools import partial

    from alignlab.train.steps import causal_lm_step, chunked_causal_lm_step, supports_chunked

    if cfg.chunked_logprobs and supports_chunked(model):
        return partial(chunked_causal_lm_step, chunk_size=cfg.logprob_chunk_size)
    return causal_lm_step


def perplexity_eval(step_fn, dataset: list, collate, cfg: TrainConfig, device: str):
    """eval_fn(model) -> eval_loss (token mean), eval_perplexity."""
    from alignlab.train.loop import evaluate

    def eval_fn(model: Any) -> dict[str, float]:
        metrics = evaluate(model, step_fn, dataset, collate, batch_size=cfg.micro_batch_size(), device=device)
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
        return metrics

    return eval_fn


def prepare_model(cfg: TrainConfig):
    """Tokenizer and model (with LoRA adapters when cfg.lora is set)."""
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.models.tokenizer import use_chat_template

    tokenizer = use_chat_template(load_tokenizer(cfg.model), cfg.chat_template)
    model = load_model(cfg.model)
    if cfg.lora is not None:
        from alignlab.models.lora import apply_lora

        model = apply_lora(model, cfg.lora)
    return tokenizer, model


def saved_config_text(cfg: Any) -> str:
    from alignlab.config import config_text, save_config

    path = Path(cfg.output_dir) / "config.yaml"
    if not path.exists():  # an earlier run's config stays until the loop's resume guard has compared it
        save_config(cfg, path)
    return config_text(cfg)


def run(cfg: SFTConfig):
    """Train and return the loop's TrainResult; the model lands in cfg.output_dir."""
    from alignlab.data.collate import Collator
    from alignlab.train.loop import seed_everything, train
    from alignlab.train.world import World

    if not cfg.data:
        raise AlignlabError("data: give a training file, e.g. data=../shared/data/llamafactory_demo/alpaca_en_demo.json")
    world = World.from_env(cfg.device)
    seed_everything(cfg.seed)
    tokenizer, model = prepare_model(cfg)
    rows = load_sft_rows(cfg.data, cfg)
    if cfg.eval_data:
        eval_rows = load_sft_rows(cfg.eval_data, cfg)[: cfg.max_eval_rows]
    else:
        rows, eval_rows = split_eval(rows, cfg.eval_split, cfg.seed, cfg.max_eval_rows)
    train_set = tokenize_rows(rows, tokenizer, cfg.max_length, cfg.data)
    eval_set = tokenize_rows(eval_rows, tokenizer, cfg.max_length, cfg.eval_data or "held-out") if eval_rows else []
    collate = Collator(tokenizer.pad_token_id, packing=cfg.packing, max_row_tokens=cfg.pack_length or cfg.max_length)
    step_fn = lm_step_for(model, cfg)
    eval_fn = perplexity_eval(step_fn, eval_set, collate, cfg, world.device) if eval_set else None
    result = train(cfg, model, step_fn, train_set, collate, eval_fn=eval_fn, tokenizer=tokenizer,
                   world=world, config_yaml=saved_config_text(cfg) if world.is_main else None)
    if world.is_main:
        summary = {k: round(v, 4) for k, v in (result.evals[-1] if result.evals else {}).items()}
        print(f"sft done: {result.step} steps in {result.train_runtime:.1f}s; {summary}; model in {cfg.output_dir}")
    return result
