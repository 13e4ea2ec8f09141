"""`alignlab experiment rejection-sampling`: iterative rejection-sampling fine-tuning (Llama 2, Sec. 3.2.3).

Wiring only: prompts (a file or builtin:sentiment), R rounds of sample-K from the current policy / score
with a reward (a registry name such as sentiment, or reward_model with reward_options.path) / keep the best
per prompt across all rounds (rollout.rejection) / SFT on that pool with the shared loop. After every round
(and for the base, round 0) held-out prompts are sampled at temperature 1 and scored: mean reward and
KL(policy || base) (k1, k3; eval.measures). rounds.json and rounds.png (reward and KL per round) land in
output_dir; round r's model in output_dir/round_r.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from alignlab.errors import AlignlabError, AlreadyDone
from alignlab.files import write_text_atomic
from alignlab.train.config import TrainConfig


@dataclass
class RejectionSamplingConfig(TrainConfig):
    data: str = "builtin:sentiment"
    """Prompt file (any format alignlab reads) or a built-in set (builtin:sentiment, builtin:reverse, ...)."""
    data_format: str | None = None
    """Force the prompt file's format (e.g. sharegpt, alpaca, hh); null detects it."""
    columns: dict[str, str] | str | None = None
    """Column mapping for a prompt table in no known format, e.g. {prompt: Question} for TruthfulQA's CSV."""
    prompts: int = 64
    """Prompts used (the first N; built-in sets generate N), before the held-out split (eval_split)."""
    rounds: int = 3
    """R: rounds of sample / score / keep-best / fine-tune."""
    samples: int = 4
    """K: samples per prompt per round."""
    reward: str = "sentiment"
    """Reward registry name (sentiment, gsm8k, format, reward_model) or module.path:function."""
    reward_options: dict[str, Any] = field(default_factory=dict)
    """Options for the reward factory, e.g. {path: RM_DIR} for reward_model."""
    temperature: float = 1.0
    """Sampling temperature of the K rollouts (Llama 2 raised it in later rounds; held-out scoring uses 1)."""
    max_new_tokens: int = 24
    """Longest sampled completion (rollouts and held-out scoring)."""
    from_base: bool = True
    """Each round fine-tunes the base on the pool (Llama 2 style); false continues from the last round's policy."""

    def validate(self) -> None:
        super().validate()
        if min(self.prompts, self.rounds, self.max_new_tokens) < 1 or self.samples < 2 or self.temperature <= 0:
            raise AlignlabError("rejection-sampling: prompts, rounds, max_new_tokens >= 1, samples >= 2, "
                                "temperature > 0")
        if self.eval_steps:  # a round's fine-tune has no eval function: the held-out prompts are scored per round
            raise AlignlabError("eval_steps: rejection-sampling scores its held-out prompts after every round only")


def _split(cfg: RejectionSamplingConfig) -> Any:
    """The prompts' Split (data.prepare): held out by eval_split alone (or eval_data), scored up to max_eval_rows."""
    from alignlab.data.builtin import BUILTIN_PREFIX, builtin_rows
    from alignlab.data.prepare import train_eval_rows
    from alignlab.data.sources import load_rows

    def load(path: str) -> list:  # the first `prompts` rows of data (built-in sets make that many); all of eval_data
        if path.startswith(BUILTIN_PREFIX):
            return builtin_rows(path, cfg.prompts, cfg.seed)
        rows = load_rows(path, task="prompt", format=cfg.data_format, columns=cfg.columns,
                         on_bad_row=cfg.on_bad_row).rows
        return rows[: cfg.prompts] if path == cfg.data else rows

    split = train_eval_rows(cfg, load)
    if not split.train or not split.scored:
        dup = split.info.get("held_out_duplicates_of_train", 0)
        raise AlignlabError(f"rejection-sampling: {cfg.prompts} prompts leave no train or no held-out prompts "
                            + (f"({dup} held-out prompts are training prompts too) " if dup else "")
                            + "(raise prompts, set eval_split in (0, 1) or give eval_data)")
    return split


def _held_out(policy: Any, base: Any, tok: Any, rows: list, reward_fn: Any, cfg: RejectionSamplingConfig) -> dict:
    from alignlab.eval.measures import kl_from_samples
    from alignlab.rollout.generate import SamplingConfig, generate
    from alignlab.rollout.rewards import score
    from alignlab.rollout.sampling import reward_input, row_fields

    gen = generate(policy, tok, rows, SamplingConfig(max_new_tokens=cfg.max_new_tokens, seed=cfg.seed))
    rewards = score(reward_fn, [reward_input(r) for r in rows], [s.text for s in gen.samples], **row_fields(rows, 1))
    kl = kl_from_samples(policy, base, gen, pad_id=tok.pad_token_id or 0)
    mean = sum(rewards) / len(rewards)
    se = (sum((x - mean) ** 2 for x in rewards) / max(len(rewards) - 1, 1) / len(rewards)) ** 0.5
    return {"eval_reward": mean, "eval_reward_se": se, "kl_k1": kl["k1"], "kl_k3": kl["k3"]}


def _plot(rounds: list[dict], path: Path) -> None:
    from alignlab.eval.report import png_figure

    with png_figure(path, (6.4, 3.6)) as (fig, ax):
        x = [r["round"] for r in rounds]
        ax.errorbar(x, [r["eval_reward"] for r in rounds], yerr=[r["eval_reward_se"] for r in rounds], fmt="o-",
                    color="#4c72b0", capsize=3, label="held-out reward (+- 1 se)")
        ax.set_xlabel("round (0 = base)")
        ax.set_ylabel("mean reward", color="#4c72b0")
        ax.set_xticks(x)
        ax2 = ax.twinx()
        ax2.plot(x, [r["kl_k3"] for r in rounds], "s--", color="#dd8452", label="KL k3")
        ax2.set_ylabel("KL(policy || base)", color="#dd8452")
        ax.set_title("iterative rejection sampling")


def run(cfg: RejectionSamplingConfig) -> list[dict]:
    from alignlab.config import config_text
    from alignlab.data.collate import pad
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.models.prepare import trainable_model
    from alignlab.models.tokenizer import use_chat_template
    from alignlab.rollout.generate import SamplingConfig
    from alignlab.rollout.rejection import BestPerPrompt
    from alignlab.rollout.rewards import get_reward
    from alignlab.rollout.sampling import sample_and_score
    from alignlab.train.checkpoint import load_model_weights
    from alignlab.train.loop import seed_everything, train
    from alignlab.train.resume import experiment_guard
    from alignlab.train.steps import causal_lm_step

    out, text = Path(cfg.output_dir), config_text(cfg)
    rounds_file = out / "rounds.json"
    experiment_guard(out, cfg.resume, text, lambda: rounds_file.is_file() and len(json.loads(rounds_file.read_text(
        encoding="utf-8"))) > cfg.rounds)
    seed_everything(cfg.seed)
    split = _split(cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.yaml", text)
    split.save(out, resuming=rounds_file.is_file())
    reward_fn = get_reward(cfg.reward, **cfg.reward_options)
    tok = use_chat_template(load_tokenizer(cfg.model), cfg.chat_template)
    base = load_model(cfg.model, device=cfg.device).eval()
    policy, pool = base, BestPerPrompt()
    rounds = [{"round": 0, **_held_out(base, base, tok, split.scored, reward_fn, cfg)}]
    collate = lambda xs: pad(xs, tok.pad_token_id if tok.pad_token_id is not None else 0)  # noqa: E731
    for r in range(1, cfg.rounds + 1):
        sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed + r)
        stats = pool.update(sample_and_score(policy, tok, split.train, reward_fn, cfg.samples, sampling).groups, r)
        seed_everything(cfg.seed + r)  # the round's fresh adapter is the same whether or not earlier rounds replayed
        student = trainable_model(load_model(cfg.model), cfg.lora) if cfg.from_base or r == 1 else policy
        round_cfg = replace(cfg, output_dir=str(out / f"round_{r}"), resume="auto")
        try:
            train(round_cfg, student, causal_lm_step, pool.examples(cfg.max_length), collate, tokenizer=tok,
                  config_yaml=config_text(round_cfg))
        except AlreadyDone:  # finished before an interruption: its saved weights, as trained
            load_model_weights(student, Path(round_cfg.output_dir))
        policy = student.eval()
        rounds.append({**stats, **_held_out(policy, base, tok, split.scored, reward_fn, cfg)})
        print(f"round {r}: " + ", ".join(f"{k} {v:.4g}" for k, v in rounds[-1].items() if k != "round"), flush=True)
        write_text_atomic(rounds_file, json.dumps(rounds, indent=1) + "\n")  # a kill never leaves half of it
    _plot(rounds, out / "rounds.png")
    print(f"rejection sampling done: {cfg.rounds} rounds; rounds.json and rounds.png in {out}")
    return rounds
