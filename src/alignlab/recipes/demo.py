"""`alignlab demo`: the DPO paper's controlled sentiment task, end to end on a CPU in a few minutes.

Wiring only: SmolLM2-135M-Instruct (models.load) continues movie-review openings (data.builtin); several
samples per prompt from the base model are scored by VADER (rollout.rewards) and the best and worst of each
prompt become a preference pair (rollout.pairs, best-vs-worst is a stronger signal than two random
samples); LoRA-DPO trains on them with the disabled adapter as reference (train.dpo, the shared loop);
base and trained policies are compared on held-out prompts (eval.policy): mean reward, win rate under the
reward judge with its bootstrap interval (eval.judges, eval.winrate) and KL to the base (eval.kl); the
per-token implicit reward of a few completions (eval.credit) goes into report.html (eval.demo_report).
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
    from alignlab.data.builtin import builtin_rows

    rows = builtin_rows("sentiment", cfg.train_prompts + cfg.eval_prompts, cfg.seed)
    held = rows[cfg.train_prompts:]
    return rows[:cfg.train_prompts], held, held[:cfg.progress_prompts]


def compare(cfg: DemoConfig, policy: Any, tokenizer: Any, rows: list, reward_fn: Any) -> dict[str, Any]:
    """Base (adapter off) and trained policy on the same held-out prompts with the same sampling seed."""
    from alignlab.eval.judges import RewardModelJudge
    from alignlab.eval.lc import lc_for_comparison
    from alignlab.eval.policy import score_policy
    from alignlab.eval.winrate import win_rate
    from alignlab.models.lora import adapter_disabled
    from alignlab.rollout.pairs import progress_bar

    kw = dict(n=cfg.eval_samples, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 1)
    with progress_bar("evaluate", 2) as (bar, task):
        with adapter_disabled(policy):
            base = score_policy(policy, tokenizer, rows, reward_fn, with_kl=False, **kw)
        bar.advance(task)
        trained = score_policy(policy, tokenizer, rows, reward_fn, **kw)
        bar.advance(task)
    prompts = [r.prompt[0]["content"] for r in rows for _ in range(cfg.eval_samples)]
    judge = RewardModelJudge(reward_fn, mode="hard")
    outcomes = [j.prob_a_better for j in judge.compare_batch(prompts, trained.texts, base.texts)]
    wr = win_rate([o for o in outcomes if o is not None], seed=cfg.seed)
    lc = lc_for_comparison(outcomes, trained.texts, base.texts, seed=cfg.seed)  # AlpacaEval 2's length control
    return {"base": base, "trained": trained, "prompts": prompts, "win_rate": wr, "lc_win_rate": lc}


def run(cfg: DemoConfig) -> dict[str, Any]:
    """The whole demo; returns results.json's content."""
    import torch

    from alignlab.eval.credit import implicit_rewards
    from alignlab.eval.demo_report import print_summary, results_dict, write_report
    from alignlab.eval.policy import score_policy
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.rollout.pairs import sample_pairs
    from alignlab.rollout.rewards import get_reward
    from alignlab.train.dpo import lora_dpo_config, train_lora_dpo
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
    pairs = sample_pairs(model, tokenizer, train_rows, reward_fn, out / "preferences.jsonl",
                         samples_per_prompt=cfg.samples_per_prompt, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)

    def progress_fn(policy: Any) -> dict[str, float]:
        s = score_policy(policy, tokenizer, progress_rows, reward_fn, max_new_tokens=cfg.max_new_tokens,
                         seed=cfg.seed + 2)
        return {"eval_reward": s.reward, "eval_kl": s.kl.k3, "eval_kl_k1": s.kl.k1}

    dcfg = lora_dpo_config(cfg.model, pairs, str(out / "model"), lora_r=cfg.lora_r, beta=cfg.beta,
                           learning_rate=cfg.learning_rate, batch_size=cfg.batch_size, eval_steps=cfg.eval_steps,
                           seed=cfg.seed, cpu_threads=cfg.cpu_threads, progress=cfg.progress, epochs=cfg.epochs)
    policy, result = train_lora_dpo(dcfg, model, tokenizer, progress_fn)
    cmp = compare(cfg, policy, tokenizer, held, reward_fn)
    tr = cmp["trained"]
    k = min(cfg.explain_examples, len(tr.texts))
    credits = implicit_rewards(policy, tokenizer, tr.prompt_ids[:k], tr.completion_ids[:k], beta=cfg.beta)
    results = results_dict(cfg, cmp, result, time.perf_counter() - t0)
    path = write_report(cfg, results, cmp, result.evals, credits, out)
    print_summary(results, path)
    return results
