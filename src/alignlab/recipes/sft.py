"""`alignlab sft`: supervised fine-tuning on prompt/completion or multi-turn chat data.

Wiring only: rows from `data.sources` (TRL, Alpaca, ShareGPT ... detected) and the split from
`data.prepare`, token ids and labels from `data.tokenize` (the prompt / non-assistant turns are -100, so
the loss is completion-only or assistant-only), batches from `data.collate` (padding-free packing by default), the LM step from
`train.lm`, and the shared loop. Evaluation reports eval_loss and eval_perplexity = exp(eval_loss)
on `eval_data` or a seeded held-out split of the training rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alignlab.config import ConfigError, check_pad_multiple
from alignlab.errors import AlignlabError
from alignlab.train.data_config import RowDataConfig


@dataclass
class SFTConfig(RowDataConfig):
    model: str = "smollm2-135m-instruct"
    """Model to fine-tune: HF directory, hub id (offline cache) or alias (smollm2-135m-instruct, tiny-random)."""
    packing: bool = True
    """Padding-free packing: a micro-batch's sequences share one row with restarting positions (no pad FLOPs); padded
    rows for models a packed row would mix (recurrent layers, masks that ignore positions: models/layouts.py)."""
    pack_length: int | None = None
    """Longest packed row in tokens (null: max_length) when binning is cheaper than one long row: masked attention
    costs O(row length^2) even for masked-out blocks, binned rows pay padding; collate picks the cheaper. Models
    under span attention (sdpa models alignlab loads) always take one row: their attention is each sequence's own."""
    pad_to_multiple_of: int | None = 16
    """Round each micro-batch's row width up to a multiple of this (pad tokens in a span of their own, never
    attended to or trained on; null: no rounding). oneDNN compiles a kernel for every new matrix shape (~2 ms each
    on an Intel Xeon with AMX) and caches up to 1,024 of them (~0.6 MB each): with packed rows of every length each
    micro-batch paid new compilations and the cache grew toward its cap. 16 costs ~2% more tokens on 400-token
    micro-batches; on SmolLM2, bf16, 24 steps of `make bench-sft`'s job it was 5-6% faster. Losses and gradients
    equal the unrounded path's within bf16 rounding (test; bit for bit on a tiny model)."""
    chunked_logprobs: bool = True
    """Apply the LM head chunk-wise to trained tokens only; same loss, far less memory than full logits."""
    logprob_chunk_size: int = 1024
    """Tokens per LM-head chunk when chunked_logprobs is on (memory ~ chunk x vocab x 4 bytes)."""

    def validate(self) -> None:
        super().validate()
        check_pad_multiple(self.pad_to_multiple_of)
        if self.logprob_chunk_size < 1 or (self.pack_length is not None and self.pack_length < 1):
            raise ConfigError(f"logprob_chunk_size and pack_length must be >= 1, got {self.logprob_chunk_size} and "
                              f"{self.pack_length}")


def load_sft_rows(path: str, cfg: SFTConfig) -> list:
    from alignlab.data.prepare import load_task_rows

    return load_task_rows(path, "sft", data_format=cfg.data_format, columns=cfg.columns, on_bad_row=cfg.on_bad_row)


def tokenize_rows(rows: list, tokenizer: Any, max_length: int, source: str) -> list:
    """TokenizedSFT examples with at least one trained token (others are counted and dropped)."""
    from alignlab.data.prepare import sft_examples

    return sft_examples(rows, tokenizer, max_length, source)


def run(cfg: SFTConfig, *, model: Any = None, tokenizer: Any = None, rows: list | None = None,
        eval_rows: list | None = None, callbacks: Any = ()):
    """Train and return the loop's TrainResult; the model lands in cfg.output_dir. alignlab.api passes an
    in-memory model + tokenizer (used as they are) and in-memory records (used instead of cfg.data / eval_data)."""
    from alignlab.config import saved_config_text
    from alignlab.data.collate import Collator
    from alignlab.data.mixture import data_label
    from alignlab.data.prepare import run_split
    from alignlab.models.attention import uses_spans
    from alignlab.models.layouts import packs_exactly
    from alignlab.models.prepare import prepare_model
    from alignlab.train.lm import lm_step_for, perplexity_eval
    from alignlab.train.loop import seed_everything, train
    from alignlab.train.world import World

    if not cfg.data and rows is None:
        raise AlignlabError("data: give a training file, e.g. data=../shared/data/llamafactory_demo/alpaca_en_demo.json")
    world = World.for_run(cfg)
    seed_everything(cfg.seed)
    tokenizer, model = prepare_model(cfg) if model is None else (tokenizer, model)
    split = run_split(cfg, lambda src: load_sft_rows(src, cfg), rows, eval_rows)
    rows, eval_rows = split.train, split.scored
    train_set = tokenize_rows(rows, tokenizer, cfg.max_length, data_label(cfg.data))
    eval_set = tokenize_rows(eval_rows, tokenizer, cfg.max_length, cfg.eval_data or "held-out") if eval_rows else []
    # where a packed row's sequences would see each other (recurrent layers, masks without position ids): one a row
    collate = Collator(tokenizer.pad_token_id, packing=cfg.packing and packs_exactly(model),
                       max_row_tokens=cfg.pack_length or cfg.max_length,
                       pad_to_multiple_of=cfg.pad_to_multiple_of, spans=uses_spans(model))
    step_fn = lm_step_for(model, cfg.chunked_logprobs, cfg.logprob_chunk_size)
    eval_fn = perplexity_eval(step_fn, eval_set, collate, cfg, world.device) if eval_set else None
    result = train(cfg, model, step_fn, train_set, collate, eval_fn=eval_fn, tokenizer=tokenizer,
                   world=world, config_yaml=saved_config_text(cfg) if world.is_main else None, callbacks=callbacks,
                   split=split)
    if world.is_main:
        summary = {k: round(v, 4) for k, v in (result.evals[-1] if result.evals else {}).items()}
        print(f"sft done: {result.done_line()}; {summary}; model in {cfg.output_dir}")
    return result
