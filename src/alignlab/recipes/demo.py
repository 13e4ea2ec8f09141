"""`alignlab demo`: the DPO paper's controlled sentiment task, end to end on a CPU in a few minutes.

Wiring only: SmolLM2-135M-Instruct (models.load) continues movie-review openings (recipes.prompts); several
samples per prompt from the base model (rollout.generate) are scored by VADER (rollout.rewards) and the best
and worst of each prompt become a preference pair (rollout.sampling, best-vs-worst is a stronger signal than
two random samples); LoRA-DPO trains on them with the disabled adapter as reference (recipes.dpo's parts, the
shared loop); base and trained policies are compared on held-out prompts: mean reward, win rate under the
reward judge with its bootstrap interval (eval.judges, eval.winrate) and KL to the base (eval.kl); the
per-token implicit reward of a few completions (eval.credit) goes into report.html (recipes.demo_report).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from alignlab.config import ConfigError


@dataclass
class DemoConfig:
    model: str = "smollm2-135m-instruct"
    """Base policy (alias, HF directory or hub id in the offline cache)."""
    output_dir: str = "runs/demo"
    """Where preferences.jsonl, the adapter, metrics.jsonl, results.json and report.html go."""
    train_prompts: int = 160
    """Movie-review openings sampled for preference pairs (train and held-out sets never overlap; 712 exist)."""
    samples_per_prompt: int = 6
    """Samples per training prompt; the best and the worst by reward make the pair."""
    eval_prompts: int = 96
    """Held-out prompts for the final comparison of base and trained policy."""
    eval_samples: int = 2
    """Samples per held-out prompt and policy (sample j of trained vs sample j of base is one judged outcome)."""
    progress_prompts: int = 24
    """Held-out prompts scored at each evaluation during training (the reward/KL curve)."""
    max_new_tokens: int = 24
    """Tokens per completion (the reward reads only the completion)."""
    beta: float = 0.1
    """DPO beta: strength of the KL-to-reference (Rafailov et al. 2023, eq. 7)."""
    learning_rate: float = 5e-4
    """Peak learning rate of the LoRA adapter (cosine decay, short warmup)."""
    batch_size: int = 8
    """Pairs per optimizer step."""
    epochs: float = 2.0
    """Passes over the preference pairs."""
    lora_r: int = 16
    """LoRA rank (alpha = 2r, on every linear layer of the decoder)."""
    eval_steps: int = 10
    """Score the progress prompts every N optimizer steps (and before and after training)."""
    explain_examples: int = 4
    """Trained completions shown with their per-token implicit reward."""
    seed: int = 0
    """Seeds prompts, sampling and training."""
    cpu_threads: int = 0
    """torch threads (0: torch's default, one per core; 1 is faster when other jobs share the cores)."""
    progress: Literal["auto", "rich", "plain", "none"] = "auto"
    """Training progress display: auto, rich, plain or none."""

    def validate(self) -> None:
        for name in ("train_prompts", "eval_prompts", "eval_samples", "progress_prompts", "max_new_tokens",
                     "batch_size", "lora_r", "eval_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.samples_per_prompt < 2:
            raise ConfigError(f"samples_per_prompt: best-vs-worst needs >= 2, got {self.samples_per_prompt}")
        if self.train_prompts + self.eval_prompts > 712:
            raise ConfigError("train_prompts + eval_prompts: at most 712 distinct movie-review openings exist")
        if self.beta <= 0 or self.learning_rate <= 0 or self.epochs <= 0:
            raise ConfigError("beta, learning_rate and epochs must be positive")


def prompt_sets(cfg: DemoConfig) -> tuple[list, list, list]:
    """(train, held-out, progress) PromptRows: one seeded order of the distinct openings, split, so no
    held-out prompt is ever trained on; the progress set is the first part of the held-out one."""
    from alignlab.recipes.prompts import builtin_rows

    rows = builtin_rows("sentiment", cfg.train_prompts + cfg.eval_prompts, cfg.seed)
    held = rows[cfg.train_prompts:]
    return rows[:cfg.train_prompts], held, held[:cfg.progress_prompts]


def sample_pairs(cfg: DemoConfig, model: Any, tokenizer: Any, rows: list, reward_fn: Any, out: Path) -> Path:
    """Best-vs-worst preference pairs from the base model's samples, written as TRL-format jsonl."""
    from alignlab.rollout.generate import GenerationResult, SamplingConfig
    from alignlab.rollout.sampling import BestOfN, preference_records, sample_and_score, write_jsonl

    sc = SamplingConfig(max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, batch_size=64)
    groups, samples, tokens, seconds = [], [], 0, 0.0
    chunk = max(1, 64 // cfg.samples_per_prompt)
    with _bar("sample pairs", len(rows)) as (bar, task):
        for start in range(0, len(rows), chunk):
            sc.seed = cfg.seed + start  # a fresh stream per chunk; the run stays a pure function of the seed
            part = sample_and_score(model, tokenizer, rows[start:start + chunk], reward_fn,
                                    cfg.samples_per_prompt, sc)
            groups += part.groups
            samples += part.generation.samples
            tokens, seconds = tokens + part.generation.num_tokens, seconds + part.generation.seconds
            bar.advance(task, len(part.groups))
    result = BestOfN(groups, GenerationResult(samples, tokens, seconds))
    records = preference_records(result)
    gap = sum(r["score_chosen"] - r["score_rejected"] for r in records) / max(len(records), 1)
    print(f"{len(records)} pairs from {len(rows)} prompts x {cfg.samples_per_prompt} samples "
          f"({tokens / max(seconds, 1e-9):.0f} tok/s), mean reward gap {gap:.3f}, dropped {result.dropped}",
          flush=True)
    return write_jsonl(out / "preferences.jsonl", records)


def _bar(label: str, total: int):
    from contextlib import contextmanager

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    @contextmanager
    def ctx():
        with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as p:
            yield p, p.add_task(label, total=total)

    return ctx()


def dpo_config(cfg: DemoConfig, pairs: Path) -> Any:
    """The demo's DPO settings as recipes.dpo's config (LoRA, the disabled adapter as reference)."""
    from alignlab.models.lora import LoraConfig
    from alignlab.recipes.dpo import DPOConfig

    dcfg = DPOConfig(model=cfg.model, data=str(pairs), output_dir=str(Path(cfg.output_dir) / "model"),
                     lora=LoraConfig(r=cfg.lora_r, alpha=2 * cfg.lora_r, dropout=0.0), beta=cfg.beta,
                     learning_rate=cfg.learning_rate, batch_size=cfg.batch_size, epochs=cfg.epochs,
                     eval_steps=cfg.eval_steps, logging_steps=max(1, cfg.eval_steps // 2), warmup_ratio=0.1,
                     max_length=256, seed=cfg.seed, cpu_threads=cfg.cpu_threads, progress=cfg.progress,
                     reference="adapter", resume="never", eval_split=0.0)
    dcfg.validate()
    return dcfg


def train_dpo(dcfg: Any, policy: Any, tokenizer: Any, progress_fn: Any) -> tuple[Any, Any]:
    """LoRA-DPO (any paired loss of dcfg.loss) through recipes.dpo's parts and the shared loop on the pairs
    file dcfg.data; `progress_fn(policy) -> {eval_...}` runs at every evaluation. Returns (policy, TrainResult)."""
    from alignlab.data.pairs import PairCollator
    from alignlab.data.sources import load_rows
    from alignlab.losses import combine
    from alignlab.models.lora import apply_lora
    from alignlab.recipes.dpo import make_reference, tokenize_rows
    from alignlab.recipes.sft import saved_config_text
    from alignlab.train.loop import train
    from alignlab.train.preference import PreferenceStep

    policy = apply_lora(policy, dcfg.lora)
    mix = combine(dcfg.loss, dcfg.loss_weights, dcfg.loss_params)
    beta = dcfg.beta if dcfg.beta is not None else mix.default_beta
    examples = tokenize_rows(load_rows(dcfg.data, task="preference").rows, tokenizer, dcfg, dcfg.data, True)
    kind = "adapter" if mix.needs_reference else "none"
    step_fn = PreferenceStep(mix, make_reference(dcfg, kind, policy, policy), beta=beta,
                             chunk_size=dcfg.logprob_chunk_size)
    collate = PairCollator(tokenizer.pad_token_id, dcfg.forward_path, row_tokens=dcfg.row_tokens)
    result = train(dcfg, policy, step_fn, examples, collate, eval_fn=progress_fn, tokenizer=tokenizer,
                   config_yaml=saved_config_text(dcfg))
    return policy, result


def compare(cfg: DemoConfig, policy: Any, tokenizer: Any, rows: list, reward_fn: Any) -> dict[str, Any]:
    """Base (adapter off) and trained policy on the same held-out prompts with the same sampling seed."""
    from alignlab.eval.judges import RewardModelJudge
    from alignlab.eval.winrate import win_rate
    from alignlab.models.lora import adapter_disabled
    from alignlab.recipes.frontier import score_policy

    kw = dict(n=cfg.eval_samples, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 1)
    with _bar("evaluate", 2) as (bar, task):
        with adapter_disabled(policy):
            base = score_policy(policy, tokenizer, rows, reward_fn, with_kl=False, **kw)
        bar.advance(task)
        trained = score_policy(policy, tokenizer, rows, reward_fn, **kw)
        bar.advance(task)
    prompts = [r.prompt[0]["content"] for r in rows for _ in range(cfg.eval_samples)]
    judge = RewardModelJudge(reward_fn, mode="hard")
    outcomes = [j.prob_a_better for j in judge.compare_batch(prompts, trained.texts, base.texts)]
    wr = win_rate([o for o in outcomes if o is not None], seed=cfg.seed)
    return {"base": base, "trained": trained, "prompts": prompts, "win_rate": wr}


def run(cfg: DemoConfig) -> dict[str, Any]:
    """The whole demo; returns results.json's content."""
    import torch

    from alignlab.eval.credit import implicit_rewards
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.recipes.demo_report import print_summary, results_dict, write_report
    from alignlab.recipes.frontier import score_policy
    from alignlab.rollout.rewards import get_reward
    from alignlab.train.loop import seed_everything

    cfg.validate()
    t0 = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    seed_everything(cfg.seed)
    once = " (the first use converts SmolLM2's GGUF once, ~1 min)" if "smollm2" in cfg.model else ""
    print(f"alignlab demo: loading {cfg.model}{once}", flush=True)
    tokenizer, model = load_tokenizer(cfg.model), load_model(cfg.model)
    reward_fn = get_reward("sentiment")
    train_rows, held, progress_rows = prompt_sets(cfg)
    pairs = sample_pairs(cfg, model, tokenizer, train_rows, reward_fn, out)

    def progress_fn(policy: Any) -> dict[str, float]:
        s = score_policy(policy, tokenizer, progress_rows, reward_fn, max_new_tokens=cfg.max_new_tokens,
                         seed=cfg.seed + 2)
        return {"eval_reward": s.reward, "eval_kl": s.kl.k3, "eval_kl_k1": s.kl.k1}

    policy, result = train_dpo(dpo_config(cfg, pairs), model, tokenizer, progress_fn)
    cmp = compare(cfg, policy, tokenizer, held, reward_fn)
    tr = cmp["trained"]
    k = min(cfg.explain_examples, len(tr.texts))
    credits = implicit_rewards(policy, tokenizer, tr.prompt_ids[:k], tr.completion_ids[:k], beta=cfg.beta)
    results = results_dict(cfg, cmp, result, time.perf_counter() - t0)
    path = write_report(cfg, results, cmp, result.evals, credits, out)
    print_summary(results, path)
    return results
