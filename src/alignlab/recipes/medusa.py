"""`alignlab medusa MODEL data=PROMPTS`: train Medusa heads on a frozen base by self-distillation.

Wiring only: prompts from `data.sources`, the base's own completions from `rollout.generate` (greedy by
default: the heads learn to guess what greedy decoding will say, which is what `generate --speculative`
verifies), heads and the Medusa-1 loss from `models.medusa`, the shared train loop. The output directory
holds the heads (model.safetensors + medusa_config.json) for `alignlab generate MODEL --speculative
medusa=DIR`; eval_loss and each head's top-1 accuracy on held-out completions are logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from alignlab.errors import AlignlabError
from alignlab.train.config import TrainConfig


@dataclass
class MedusaConfig(TrainConfig):
    model: str = "tiny-random"
    """Base model (frozen): alias (smollm2-135m-instruct, tiny-random), HF dir or hub id; given on the command
    line as `alignlab medusa MODEL`."""
    data: str = ""
    """Prompt file (any format alignlab reads as prompts) the base completes to make the self-distillation set."""
    data_format: str | None = None
    """Force the prompt file's format (e.g. sharegpt, alpaca, hh); null detects it."""
    columns: dict[str, str] | str | None = None
    """Column mapping for a prompt table in no known format, e.g. {prompt: Question} for TruthfulQA's CSV."""
    num_heads: int = 3
    """K extra heads; head k (1..K) guesses the token k places after the base's next token: at position t, the
    token t + k + 1 (Medusa, Cai et al. 2024)."""
    head_layers: int = 1
    """Residual blocks per head (the paper uses 1)."""
    own_lm_head: bool = False
    """Each head gets its own vocabulary projection copied from the base's (Medusa-1); false shares the base's
    frozen LM head so only the residual blocks train (K x H^2 parameters: quick on a CPU)."""
    head_decay: float = 0.8
    """lambda in the loss weight lambda^k of head k (Medusa Eq. 2)."""
    prompts: int = 256
    """Prompts from `data` the base completes for the self-distillation set (the first N)."""
    distill_max_new_tokens: int = 128
    """Longest base completion per prompt in the self-distillation set."""
    distill_temperature: float = 0.0
    """0: the base's greedy completions (what greedy speculative decoding verifies); > 0: sampled ones."""
    distill_batch_size: int = 16
    """Prompts completed together while building the self-distillation set."""

    def validate(self) -> None:
        super().validate()
        if self.num_heads < 1 or self.head_layers < 1 or self.prompts < 1 or self.distill_max_new_tokens < 2:
            raise AlignlabError("medusa: num_heads, head_layers, prompts >= 1 and distill_max_new_tokens >= 2")
        if self.distill_temperature < 0 or not 0 < self.head_decay <= 1:
            raise AlignlabError("medusa: distill_temperature >= 0 and head_decay in (0, 1]")
        if self.lora is not None or self.gradient_checkpointing or self.compile:
            raise AlignlabError("medusa: the base is frozen and run without grad; lora, gradient_checkpointing and "
                                "compile do not apply")


def run(cfg: MedusaConfig, *, callbacks: Any = ()) -> tuple[Any, Any, Any]:
    """Train the heads; returns (the loop's TrainResult, the MedusaModel, the tokenizer)."""
    from alignlab.config import saved_config_text
    from alignlab.data.collate import pad
    from alignlab.data.prepare import train_eval_rows
    from alignlab.data.sources import load_rows
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.models.medusa import MedusaModel, medusa_step, self_distill_examples
    from alignlab.models.tokenizer import use_chat_template
    from alignlab.rollout.generate import SamplingConfig
    from alignlab.train.loop import evaluate, seed_everything, train
    from alignlab.train.world import World

    if not cfg.data:
        raise AlignlabError("medusa: give a prompt file, e.g. data=prompts.jsonl (any format alignlab reads)")
    world = World.for_run(cfg)
    seed_everything(cfg.seed)
    tokenizer = use_chat_template(load_tokenizer(cfg.model), cfg.chat_template)
    base = load_model(cfg.model, device=world.device)
    def load(path: str) -> list:  # the first `prompts` rows of data; all of eval_data
        rows = load_rows(path, task="prompt", format=cfg.data_format, columns=cfg.columns,
                         on_bad_row=cfg.on_bad_row).rows
        return rows[: cfg.prompts] if path == cfg.data else rows

    split = train_eval_rows(cfg, load)  # held out by eval_split alone; max_eval_rows bounds scoring only
    sampling = SamplingConfig(max_new_tokens=cfg.distill_max_new_tokens, greedy=cfg.distill_temperature == 0,
                              temperature=cfg.distill_temperature or 1.0, seed=cfg.seed,
                              batch_size=cfg.distill_batch_size)
    distill = partial(self_distill_examples, base, tokenizer, sampling=sampling, max_length=cfg.max_length)
    train_set, eval_set = distill(split.train), (distill(split.scored) if split.scored else [])
    if not train_set:
        raise AlignlabError(f"medusa: the base wrote no completion of 2+ tokens for the {len(split.train)} prompts of "
                            f"{cfg.data}")
    print(f"medusa: self-distillation set of {len(train_set)} train / {len(eval_set)} eval sequences "
          f"({sum(len(e['input_ids']) for e in train_set)} tokens)", flush=True)
    model = MedusaModel.create(base, num_heads=cfg.num_heads, layers=cfg.head_layers, own_lm_head=cfg.own_lm_head,
                               base_name=cfg.model)
    collate = partial(pad, pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    step = partial(medusa_step, decay=cfg.head_decay)
    eval_fn = (partial(evaluate, step_fn=step, dataset=eval_set, collate=collate,
                       batch_size=cfg.micro_batch_size(), device=world.device) if eval_set else None)
    result = train(cfg, model, step, train_set, collate, eval_fn=eval_fn, tokenizer=tokenizer, world=world,
                   config_yaml=saved_config_text(cfg) if world.is_main else None, unit="sequences",
                   callbacks=callbacks, split=split)
    summary = {k: round(v, 4) for k, v in (result.evals[-1] if result.evals else result.last_log).items()}
    print(f"medusa done: {result.done_line()}; {summary}; heads in {cfg.output_dir}")
    return result, model, tokenizer
