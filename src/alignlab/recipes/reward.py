"""`alignlab rm`: a reward model (scalar head on a causal LM) trained on preference pairs or ranked lists.

Wiring only. The model is `models.heads.load_scorer` (AutoModelForSequenceClassification, one output,
scored at the last real token); the losses are `losses.reward.bradley_terry` (optional per-pair margin,
centring) and `plackett_luce` (K-wise, best first); the loop is `train.loop`.

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
from itertools import combinations
from typing import Any, Literal

from alignlab.config import ConfigError
from alignlab.data.rows import Message, Origin
from alignlab.errors import AlignlabError
from alignlab.train.config import TrainConfig


@dataclass
class RewardConfig(TrainConfig):
    model: str = "smollm2-135m-instruct"
    """Backbone: HF directory, hub id (offline cache) or alias; a new scalar head `score` is added on top."""
    data_format: str | None = None
    """Force the data format (e.g. preference, sharegpt, hh; `ranked` for completions lists); null detects it."""
    columns: dict[str, str] | str | None = None
    """Column mapping for tables in no known format, e.g. {prompt: Question, chosen: Best Answer,
    rejected: "Incorrect Answers[0]"} or "prompt=instruction+input,responses=response1+response2,votes=..."."""
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
    merge_lora: bool = True
    """With lora: write the merged scorer to output_dir (the adapter goes to output_dir/adapter); false keeps
    only the adapter in output_dir."""
    learning_rate: float = 1e-5
    """Peak learning rate (full fine-tuning ~5e-6..2e-5; LoRA ~1e-4..5e-4)."""

    def validate(self) -> None:
        super().validate()
        if self.center_coef < 0:
            raise ConfigError(f"center_coef: must not be negative, got {self.center_coef}")
        if self.center_coef and self.loss != "bradley_terry":
            raise ConfigError("center_coef: the centring term is defined for bradley_terry pairs only")
        if self.max_prompt_length is not None and not 0 < self.max_prompt_length < self.max_length:
            raise ConfigError(f"max_prompt_length: must be in [1, max_length), got {self.max_prompt_length}")


@dataclass
class RankedRow:
    """A prompt and two or more completions, best first (a preference pair is a list of two)."""

    prompt: list[Message]
    completions: list[list[Message]]
    chat: bool = True
    margin: float | None = None
    origin: Origin | None = None


@dataclass
class RewardExample:
    """Token ids of each full sequence (prompt + completion), best first, and the pair's margin."""

    sequences: list[list[int]]
    margin: float | None = None


# -- rows ---------------------------------------------------------------------------------------


def ranked_row(rec: dict, origin: Origin) -> RankedRow:
    """One `{"prompt", "completions"}` record -> RankedRow; a bad record raises RowProblem."""
    from alignlab.data.formats import assistant, need, to_messages, user
    from alignlab.data.rows import RowProblem, text_of

    comps, prompt = need(rec, "completions"), need(rec, "prompt")
    if not isinstance(comps, list) or len(comps) < 2:
        raise RowProblem("wrong_type", "completions", "expected a list of at least two completions, best first")
    chat = not (isinstance(prompt, str) and all(isinstance(c, str) for c in comps))
    p = to_messages(prompt, "prompt", "user") if chat else [user(prompt)]
    out = [to_messages(c, f"completions[{i}]", "assistant") if chat else [assistant(c)] for i, c in enumerate(comps)]
    if not text_of(p).strip():
        raise RowProblem("empty_prompt", "prompt", "the prompt is empty")
    for i, c in enumerate(out):
        if not text_of(c).strip():
            raise RowProblem("empty_completion", f"completions[{i}]", "the completion is empty")
    return RankedRow(p, out, chat=chat, origin=origin)


def _is_ranked_file(path: str, cfg: RewardConfig) -> bool:
    if cfg.data_format == "ranked":
        return True
    if cfg.data_format is not None or cfg.columns is not None:
        return False
    from alignlab.data.readers import read_records

    first = next((r.value for r in read_records(path).records if isinstance(r.value, dict)), {})
    return "completions" in first and "chosen" not in first


def load_ranked(path: str, on_bad_row: str) -> list[RankedRow]:
    from alignlab.data.readers import read_records
    from alignlab.data.rows import RowProblem

    read = read_records(path)
    if read.problems and on_bad_row == "error":
        raise AlignlabError(f"{path}: {read.problems[0]}")
    rows, skipped = [], len(read.problems)
    for rec in read.records:
        origin = Origin(read.source, rec.index, rec.line)
        try:
            if not isinstance(rec.value, dict):
                raise RowProblem("wrong_type", None, f"expected a JSON object, got {type(rec.value).__name__}")
            rows.append(ranked_row(rec.value, origin))
        except RowProblem as e:
            if on_bad_row == "error":
                raise AlignlabError(f"{origin}: field '{e.field}': {e.kind}: {e.message}") from None
            skipped += 1
    if skipped:
        print(f"{path}: skipped {skipped} bad records", flush=True)
    return rows


def load_examples_rows(path: str, cfg: RewardConfig) -> list[RankedRow]:
    """Ranked rows from a ranked-list file or any preference file the data layer reads."""
    from alignlab.data.sources import load_rows

    if _is_ranked_file(path, cfg):
        return load_ranked(path, cfg.on_bad_row)
    fmt = None if cfg.data_format == "ranked" else cfg.data_format
    result = load_rows(path, task="preference", format=fmt, columns=cfg.columns, on_bad_row=cfg.on_bad_row)
    if result.skipped or result.dropped:
        print(f"{path}: skipped bad records {dict(result.skipped)}, dropped {dict(result.dropped)}", flush=True)
    return [RankedRow(r.prompt, [r.chosen, r.rejected], r.chat, r.margin, r.origin) for r in result.rows]


def as_pairs(rows: list[RankedRow]) -> list[RankedRow]:
    """Lists -> every (better, worse) pair (InstructGPT sec. 3.5); pairs stay as they are."""
    out = []
    for r in rows:
        if len(r.completions) == 2:
            out.append(r)
            continue
        for i, j in combinations(range(len(r.completions)), 2):
            out.append(RankedRow(r.prompt, [r.completions[i], r.completions[j]], r.chat, None, r.origin))
    return out


# -- tokens and batches -------------------------------------------------------------------------


def tokenize_example(row: RankedRow, tok: Any, max_length: int, max_prompt_length: int | None) -> RewardExample:
    """Each completion's full sequence; when the longest does not fit, every prompt is cut to the same budget."""
    from alignlab.data.rows import UnpairedRow
    from alignlab.data.tokenize import tokenize_unpaired

    def tokenized(limit: int | None, budget: int | None) -> list:
        return [tokenize_unpaired(UnpairedRow(row.prompt, c, True, row.chat, row.origin), tok, limit, budget)
                for c in row.completions]

    whole = tokenized(None, None)
    n_prompt = max(len(x.prompt_ids) for x in whole)
    longest = max(len(x.completion_ids) for x in whole)
    too_long = max_prompt_length is not None and n_prompt > max_prompt_length
    if n_prompt + longest > max_length or too_long:
        whole = tokenized(max_length, max_prompt_length if max_prompt_length is not None else max_length // 2)
    return RewardExample([x.prompt_ids + x.completion_ids for x in whole], row.margin)


def tokenize_rows(rows: list[RankedRow], tok: Any, cfg: RewardConfig, source: str) -> list[RewardExample]:
    out = [tokenize_example(r, tok, cfg.max_length, cfg.max_prompt_length) for r in rows]
    if not out:
        raise AlignlabError(f"{source}: no preference examples to train on")
    return out


class RewardCollator:
    """Examples -> right-padded [N, T] sequences (all completions of all examples) and `index` [B, K]
    mapping each example's k-th completion to its row (-1 where a shorter list has none)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: list[RewardExample]) -> dict[str, Any]:
        import torch

        seqs = [s for ex in examples for s in ex.sequences]
        width, k = max(len(s) for s in seqs), max(len(ex.sequences) for ex in examples)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        index = torch.full((len(examples), k), -1, dtype=torch.long)
        row = 0
        for b, ex in enumerate(examples):
            n = len(ex.sequences)
            index[b, :n] = torch.arange(row, row + n)
            row += n
        margin = torch.tensor([ex.margin or 0.0 for ex in examples], dtype=torch.float32)
        return {"input_ids": ids, "attention_mask": mask, "index": index, "margin": margin,
                "num_items": len(examples), "num_tokens": int(mask.sum())}


# -- step ---------------------------------------------------------------------------------------


def ranking_metrics(scores: Any, mask: Any) -> dict[str, Any]:
    """accuracy: best completion scored above every other; chosen_score: the best's score; rejected_score:
    the mean score of the others; margin = chosen_score - rejected_score (all means over examples)."""
    import torch

    best, rest = scores[:, 0], mask[:, 1:]
    others = torch.where(rest, scores[:, 1:], torch.zeros_like(scores[:, 1:]))
    rejected = others.sum(-1) / rest.sum(-1).clamp(min=1)
    top_other = torch.where(rest, scores[:, 1:], torch.full_like(scores[:, 1:], float("-inf"))).max(-1).values
    return {"accuracy": (best > top_other).float().mean(), "margin": (best - rejected).mean(),
            "chosen_score": best.mean(), "rejected_score": rejected.mean()}


class RewardStep:
    """step_fn(model, batch) -> (mean loss over examples, metrics): score every sequence, then the loss."""

    def __init__(self, loss: str, use_margin: bool = True, center_coef: float = 0.0):
        self.loss, self.use_margin, self.center_coef = loss, use_margin, center_coef

    def __call__(self, model: Any, batch: dict) -> tuple[Any, dict[str, Any]]:
        from alignlab.losses.reward import bradley_terry, plackett_luce
        from alignlab.models.heads import score

        flat = score(model, batch["input_ids"], batch["attention_mask"])  # [N]
        index = batch["index"]
        mask = index >= 0
        scores = flat[index.clamp(min=0)]  # [B, K]; absent slots are masked everywhere below
        if self.loss == "plackett_luce":
            losses, _ = plackett_luce(scores, mask)
        else:
            if scores.shape[1] != 2:
                raise AlignlabError("bradley_terry needs pairs; ranked lists must be split into pairs first")
            margin = batch["margin"] if self.use_margin else None
            losses, _ = bradley_terry(scores[:, 0], scores[:, 1], margin, self.center_coef)
        return losses.mean(), ranking_metrics(scores.detach(), mask)


# -- run ----------------------------------------------------------------------------------------


def load_split(cfg: RewardConfig) -> tuple[list[RankedRow], list[RankedRow]]:
    """(train rows, eval rows): eval from eval_data or a seeded held-out split, made before lists become
    pairs so no prompt's ranking is in both."""
    from alignlab.recipes.sft import split_eval

    if not cfg.data:
        raise AlignlabError("data: give a preference file, e.g. data=../shared/data/llamafactory_demo/dpo_en_demo.json")
    rows = load_examples_rows(cfg.data, cfg)
    if cfg.eval_data:
        held = load_examples_rows(cfg.eval_data, cfg)[: cfg.max_eval_rows]
    else:
        rows, held = split_eval(rows, cfg.eval_split, cfg.seed, cfg.max_eval_rows)
    if cfg.loss == "bradley_terry":
        rows, held = as_pairs(rows), as_pairs(held)
    return rows, held


def load_reward_model(cfg: RewardConfig) -> tuple[Any, Any]:
    """Tokenizer and scorer (LoRA-wrapped when cfg.lora; the head then trains in full via modules_to_save)."""
    from alignlab.models.heads import load_scorer
    from alignlab.models.load import load_tokenizer
    from alignlab.models.tokenizer import use_chat_template

    tokenizer = use_chat_template(load_tokenizer(cfg.model), cfg.chat_template)
    model = load_scorer(cfg.model)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.lora is not None:
        from alignlab.models.lora import apply_lora

        model = apply_lora(model, cfg.lora)
    return tokenizer, model


def finish_lora(model: Any, tokenizer: Any, out: Any) -> None:
    """Move the adapter the loop saved to out/adapter and write the merged scorer to out."""
    import shutil
    from pathlib import Path

    out = Path(out)
    adapter = out / "adapter"
    shutil.rmtree(adapter, ignore_errors=True)
    adapter.mkdir()
    for p in out.iterdir():
        if p.is_file() and p.name.startswith("adapter_"):
            p.rename(adapter / p.name)
    merged = model.merge_and_unload()
    merged.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def run(cfg: RewardConfig):
    """Train and return the loop's TrainResult; the scorer lands in cfg.output_dir."""
    import torch

    from alignlab.recipes.sft import saved_config_text
    from alignlab.train.checkpoint import is_peft
    from alignlab.train.loop import evaluate, seed_everything, train
    from alignlab.train.world import World

    world = World.from_env(cfg.device)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    seed_everything(cfg.seed)  # the new head's initial weights come from this seed
    tokenizer, model = load_reward_model(cfg)
    rows, held = load_split(cfg)
    train_set = tokenize_rows(rows, tokenizer, cfg, cfg.data)
    eval_set = tokenize_rows(held, tokenizer, cfg, cfg.eval_data or "held-out") if held else []
    collate = RewardCollator(tokenizer.pad_token_id)
    step_fn = RewardStep(cfg.loss, cfg.use_margin, cfg.center_coef)
    micro = cfg.micro_batch_size(world.size)
    print(f"rm: loss {cfg.loss}, {len(train_set)} train / {len(eval_set)} eval examples, "
          f"{'lora' if cfg.lora else 'full'} fine-tuning of {cfg.model}", flush=True)

    def eval_fn(m: Any) -> dict[str, float]:
        return evaluate(m, step_fn, eval_set, collate, batch_size=micro, device=world.device, cfg=cfg)

    result = train(cfg, model, step_fn, train_set, collate, eval_fn=eval_fn if eval_set else None,
                   tokenizer=tokenizer, world=world, config_yaml=saved_config_text(cfg) if world.is_main else None)
    if world.is_main:
        if is_peft(model) and cfg.merge_lora:
            finish_lora(model, tokenizer, cfg.output_dir)
        last = {k: round(v, 4) for k, v in (result.evals[-1] if result.evals else {}).items() if k != "step"}
        print(f"rm done: {result.step} steps in {result.train_runtime:.1f}s; {last}; scorer in {cfg.output_dir}",
              flush=True)
    return result
