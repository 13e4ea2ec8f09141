"""Reward-model training parts: the scorer (scalar head, optional LoRA), the step, its metrics, LoRA output.

The step scores every sequence of a `data.ranked.RewardCollator` batch at its last real token
(`models.heads.score` on padded rows; the head's output at `last` in a prefix-shared row) and applies
`losses.reward.bradley_terry` (pairs; optional margin, Llama 2 eq. 2, and centring) or `plackett_luce` (K-wise
ranked lists, best first).
"""

from __future__ import annotations

from typing import Any

from alignlab.errors import AlignlabError
from alignlab.train.callbacks import Callback


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


def sequence_scores(model: Any, batch: dict) -> Any:
    """Scores [N] (float32) of the sequences of a `RewardCollator` batch: the head's output at each one's last token
    (padded rows: the mask's last 1; the prefix-shared row: `last`)."""
    from alignlab.models.heads import head_outputs, score
    from alignlab.train.steps import model_inputs

    if batch.get("attn_spans") is not None:
        return head_outputs(model, **model_inputs(model, batch))[0, batch["last"]]
    return score(model, batch["input_ids"], batch["attention_mask"])


class RewardStep:
    """step_fn(model, batch) -> (mean loss over examples, metrics): score every sequence, then the loss."""

    def __init__(self, loss: str, use_margin: bool = True, center_coef: float = 0.0):
        self.loss, self.use_margin, self.center_coef = loss, use_margin, center_coef

    def __call__(self, model: Any, batch: dict) -> tuple[Any, dict[str, Any]]:
        from alignlab.losses.reward import bradley_terry, plackett_luce

        flat = sequence_scores(model, batch)  # [N]
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


def load_reward_model(cfg: Any) -> tuple[Any, Any]:
    """Tokenizer and scorer of `cfg.model` (LoRA-wrapped when cfg.lora; the head then trains in full via
    peft's modules_to_save)."""
    from alignlab.models.heads import load_scorer
    from alignlab.models.load import load_tokenizer
    from alignlab.models.tokenizer import use_chat_template

    tokenizer = use_chat_template(load_tokenizer(cfg.model), cfg.chat_template)
    model = load_scorer(cfg.model)
    _distinct_pad(tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.lora is not None:
        from alignlab.models.lora import apply_lora

        model = apply_lora(model, cfg.lora)
    return tokenizer, model


def _distinct_pad(tokenizer: Any) -> None:
    """A reward model is scored at its sequence's last token, the EOS every row ends with; transformers'
    ForSequenceClassification pools at the last token that is not `pad_token_id`, so where pad is EOS (SmolLM2) the
    saved scorer loaded there scored the token before it. Pad with another special token the tokenizer has (unk,
    bos, an added one; training masks pads, so their id changes no number), and the saved config and tokenizer say
    so. Rows end in EOS, so a pad never hides a row's last token."""
    eos = tokenizer.eos_token_id
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == eos:
        added = [t.content for t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values() if t.special]
        other = next((t for t in (tokenizer.unk_token, tokenizer.bos_token, *added)
                      if t is not None and tokenizer.convert_tokens_to_ids(t) != eos), None)
        if other is not None:
            tokenizer.pad_token = other


def finish_lora(model: Any, base: str, tokenizer: Any, out: Any) -> None:
    """Move the adapter the loop saved to out/adapter and write the merged scorer to out: the live `model` merged,
    or under FSDP, whose sharded merge needs every rank (it hung on rank 0's alone), the run's own base
    (`load_scorer(base)`: an SFT adapter folder folded in, as at the run's start; the adapter's recorded base is
    the bare model then) with the adapter files just saved. The merged files are written to a folder of their own
    and moved in whole, so a kill leaves the adapter's output or the merged one, never a half-written
    model.safetensors; `MergeAtFinalSave` runs this before the loop's closing metrics row, so an interrupted merge
    leaves an unfinished run, which a rerun resumes and merges again."""
    import os
    import shutil
    from pathlib import Path

    from peft import PeftModel

    from alignlab.models.heads import load_scorer
    from alignlab.models.lora import merge_lora
    from alignlab.train.fsdp import is_sharded

    out = Path(out)
    staged = out / ".merged.tmp"
    shutil.rmtree(staged, ignore_errors=True)
    sharded = is_sharded(model)
    merged = merge_lora(PeftModel.from_pretrained(load_scorer(base), str(out)) if sharded else model)
    merged.config.pad_token_id = tokenizer.pad_token_id  # as training's (load_reward_model), not the base's
    merged.save_pretrained(str(staged))
    tokenizer.save_pretrained(str(staged))
    adapter = out / "adapter"
    shutil.rmtree(adapter, ignore_errors=True)
    adapter.mkdir()
    for p in out.iterdir():
        if p.is_file() and p.name.startswith("adapter_"):
            p.rename(adapter / p.name)
    tokenizer.save_pretrained(str(adapter))  # the run's chat template: the base's was used where it was loaded
    for p in sorted(staged.iterdir(), key=lambda p: p.name == "model.safetensors"):  # the weights last
        os.replace(p, out / p.name)
    staged.rmdir()


class MergeAtFinalSave(Callback):
    """merge_lora: the merged scorer is written at the loop's final save, before its closing metrics row."""

    def __init__(self, model: Any, base: str, tokenizer: Any, out: Any, is_main: bool):
        from pathlib import Path

        self.model, self.base, self.tokenizer, self.out, self.is_main = model, base, tokenizer, Path(out), is_main

    def on_save(self, step: int, path: Any) -> None:
        from pathlib import Path

        if self.is_main and Path(path) == self.out:  # checkpoints are out/checkpoint-N
            finish_lora(self.model, self.base, self.tokenizer, self.out)
