"""`alignlab rm`: a reward model (scalar head on a causal LM) trained on preference pairs or ranked lists.

Wiring only. Rows, tokens and batches come from `data.ranked`; the scorer and the step from `train.reward`
(`models.heads.load_scorer`: AutoModelForSequenceClassification, one output, scored at the last real token;
losses `losses.reward.bradley_terry` with optional per-pair margin and centring, `plackett_luce` K-wise);
the split from `data.prepare`; the loop is `train.loop`.

Data:
- Any preference file the data layer reads (TRL, ShareGPT, HH, Alpaca-style pairs, or a table through
  `columns`, e.g. TruthfulQA `{prompt: Question, chosen: Best Answer, rejected: "Incorrect Answers[0]"}`).
  A row's `margin` (TRL column, or `margin=COL` in a mapping) enters Bradley-Terry when `use_margin`.
- Ranked lists, one JSON object per record (jsonl/json/parquet):
      {"prompt": "text" | [messages], "completions": ["best", "second", ...]}
  best first, at least two; completions are texts or message lists. All-text records are plain text (EOS
  appended), like the data layer's text pairs; otherwise the chat template is used.
  With loss plackett_luce a list is one K-wise example; with bradley_terry it becomes its K(K-1)/2 pairs
  (InstructGPT, sec. 3.5, trains on every pair of a ranking).

Every completion is scored as one full sequence, prompt + completion, tokenised jointly by `data.tokenize`
(the sequence is exactly the tokenisation of the whole text). When the longest completion does not fit
`max_length`, the prompt is cut the same way for every completion of the example, so they are compared
on the same context. Evaluation (on `eval_data`, or a seeded `eval_split` of the training examples)
reports eval_accuracy: the fraction of examples whose best completion outscores all the others.

Output: `output_dir` holds an HF scorer (`LlamaForSequenceClassification` ...) that `load_scorer` reloads.
With LoRA the adapter (LoRA weights + the trained `score` head, which peft keeps fully trainable via
modules_to_save for sequence-classification models) goes to `output_dir/adapter` and, with `merge_lora`,
the merged scorer to `output_dir`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from alignlab.config import ConfigError, check_pad_multiple
from alignlab.errors import AlignlabError
from alignlab.train.data_config import RowDataConfig


@dataclass
class RewardConfig(RowDataConfig):
    model: str = "smollm2-135m-instruct"
    """Backbone: HF directory, hub id (offline cache) or alias; a new scalar head `score` is added on top."""
    data_format: str | None = None
    """Force the data format (e.g. preference, sharegpt, hh; `ranked` for completions lists); null detects it."""
    loss: Literal["bradley_terry", "plackett_luce"] = "bradley_terry"
    """bradley_terry: pairwise -log s(r_c - r_r - m) (lists become all their pairs); plackett_luce: K-wise
    ranked-list likelihood (pairs are K=2 lists, where it equals Bradley-Terry)."""
    use_margin: bool = True
    """Subtract a row's `margin` (Llama 2 Eq. 2) inside Bradley-Terry when the data has one."""
    center_coef: float = 0.0
    """Centring regulariser c (r_c + r_r)^2 that keeps rewards near zero (TRL uses 0.01); bradley_terry only."""
    max_prompt_length: int | None = None
    """Cut longer prompts to this many tokens (keeping the end); null: only when an example does not fit
    max_length, to half of it. Every completion of an example sees the same prompt tokens."""
    forward_path: Literal["plain", "prefix"] = "prefix"
    """prefix: a micro-batch in one padding-free row, each example's completions after one copy of the tokens they
    share (the prompt), under span attention: the same scores as padded rows (test), without the repeated prompt and
    the padding (data/ranked.py `RewardCollator`; models not under span attention take padded rows). plain: padded
    rows, one per completion, as TRL's RewardTrainer. SmolLM2 with LoRA, one thread of an AMD EPYC (family 25 model
    17), the other core busy, 4 Dec 2026, two interleaved rounds: configs/rm_smollm2_lora.yaml's TruthfulQA job (8
    pairs of ~55-token sequences a step) 2.53-2.54 against 1.02 pairs/s (2.5x), peak 2.1 against 3.8 GB; the
    LLaMA-Factory demo pairs (4 a step, long multi-turn prompts, max_length 768) 0.165-0.170 against 0.073 pairs/s
    (2.3x), 9.8-10.6 against 14.7 GB; the same losses to 1e-6."""
    pad_to_multiple_of: int | None = 16
    """Round each batch's row width up to a multiple of this (a pad tail never attended to or scored; null: no
    rounding): rows of every length make oneDNN compile new kernels (recipes/sft.py)."""
    merge_lora: bool = True
    """With lora: write the merged scorer to output_dir (the adapter goes to output_dir/adapter); false keeps
    only the adapter in output_dir."""
    learning_rate: float = 1e-5
    """Peak learning rate (full fine-tuning ~5e-6..2e-5; LoRA ~1e-4..5e-4)."""

    @classmethod
    def data_formats(cls) -> tuple[str, ...]:
        return (*super().data_formats(), "ranked")

    def validate(self) -> None:
        super().validate()
        if self.center_coef < 0:
            raise ConfigError(f"center_coef: must not be negative, got {self.center_coef}")
        if self.center_coef and self.loss != "bradley_terry":
            raise ConfigError("center_coef: the centring term is defined for bradley_terry pairs only")
        check_pad_multiple(self.pad_to_multiple_of)
        if self.max_prompt_length is not None and not 0 < self.max_prompt_length < self.max_length:
            raise ConfigError(f"max_prompt_length: must be in [1, max_length), got {self.max_prompt_length}")


def load_examples_rows(path: str, cfg: RewardConfig) -> list:
    """Ranked rows of one file with the config's format, column mapping and bad-row policy."""
    from alignlab.data.ranked import load_ranked_rows

    return load_ranked_rows(path, data_format=cfg.data_format, columns=cfg.columns, on_bad_row=cfg.on_bad_row)


def load_split(cfg: RewardConfig, records: list | None = None, eval_records: list | None = None
               ) -> tuple[Any, list, list]:
    """(data.prepare.Split, train rows, scored eval rows): eval from eval_data or a seeded held-out split,
    made before lists become pairs so no prompt's ranking is in both; in-memory records replace the files."""
    from alignlab.data.prepare import run_split
    from alignlab.data.ranked import as_pairs

    if not cfg.data and records is None:
        raise AlignlabError("data: give a preference file, e.g. data=../shared/data/llamafactory_demo/dpo_en_demo.json")
    split = run_split(cfg, lambda src: load_examples_rows(src, cfg), records, eval_records)
    rows, held = split.train, split.scored
    if cfg.loss == "bradley_terry":
        rows, held = as_pairs(rows), as_pairs(held)
    return split, rows, held


def tokenize_rows(rows: list, tokenizer: Any, cfg: RewardConfig, source: str) -> list:
    from alignlab.data.ranked import ranked_examples

    return ranked_examples(rows, tokenizer, cfg.max_length, cfg.max_prompt_length, source)


def run(cfg: RewardConfig, *, model: Any = None, tokenizer: Any = None, rows: list | None = None,
        eval_rows: list | None = None, callbacks: Any = ()):
    """Train and return the loop's TrainResult; the scorer lands in cfg.output_dir. alignlab.api passes an
    in-memory scorer + tokenizer and records (used instead of cfg.model / data / eval_data)."""
    import torch

    from alignlab.config import saved_config_text
    from alignlab.data.mixture import data_label
    from alignlab.data.ranked import RewardCollator
    from alignlab.models.attention import uses_spans
    from alignlab.models.prepare import is_peft
    from alignlab.train.loop import evaluate, seed_everything, train
    from alignlab.train.reward import MergeAtFinalSave, RewardStep, load_reward_model
    from alignlab.train.world import World

    world = World.for_run(cfg)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    seed_everything(cfg.seed)  # the new head's initial weights come from this seed
    tokenizer, model = load_reward_model(cfg) if model is None else (tokenizer, model)
    split, rows, held = load_split(cfg, rows, eval_rows)
    train_set = tokenize_rows(rows, tokenizer, cfg, data_label(cfg.data))
    eval_set = tokenize_rows(held, tokenizer, cfg, cfg.eval_data or "held-out") if held else []
    collate = RewardCollator(tokenizer.pad_token_id, spans=cfg.forward_path == "prefix" and uses_spans(model),
                             pad_to_multiple_of=cfg.pad_to_multiple_of)
    step_fn = RewardStep(cfg.loss, cfg.use_margin, cfg.center_coef)
    print(f"rm: loss {cfg.loss}, {len(train_set)} train / {len(eval_set)} eval examples, "
          f"{'lora' if cfg.lora else 'full'} fine-tuning of {cfg.model}", flush=True)

    def eval_fn(m: Any) -> dict[str, float]:
        return evaluate(m, step_fn, eval_set, collate, batch_size=cfg.micro_batch_size(), device=world.device, cfg=cfg)

    merge = [MergeAtFinalSave(model, cfg.model, tokenizer, cfg.output_dir, world.is_main)] \
        if is_peft(model) and cfg.merge_lora else []
    result = train(cfg, model, step_fn, train_set, collate, eval_fn=eval_fn if eval_set else None,
                   tokenizer=tokenizer, world=world, config_yaml=saved_config_text(cfg) if world.is_main else None,
                   callbacks=[*callbacks, *merge], split=split)
    if world.is_main:
        last = {k: round(v, 4) for k, v in (result.evals[-1] if result.evals else {}).items() if k != "step"}
        print(f"rm done: {result.done_line()}; {last}; scorer in {cfg.output_dir}",
              flush=True)
    return result
