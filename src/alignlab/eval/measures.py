"""The model-touching halves of the measures: log-probs of token sequences, reward and implicit-reward
accuracy, KL from samples, perplexity, mean reward. The statistics themselves live in winrate / ratings /
kl; this module only turns models and rows into the numbers those functions take.

Log-probs come from one plain forward per batch (right-padded, `ops.logprobs.token_logprobs` on the
shifted labels), in float32, summed over completion tokens as DESIGN §4 says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from alignlab.errors import AlignlabError
from alignlab.eval.winrate import bootstrap_mean_interval

__all__ = ["completion_logps", "dpo_accuracy", "kl_from_samples", "mean_reward", "perplexity_on_rows", "prompt_arg",
           "reward_accuracy"]


def completion_logps(model: Any, pairs: Sequence[tuple[list[int], list[int]]], *, batch_size: int = 8,
                     pad_id: int = 0) -> list[list[float]]:
    """Per-token log-probs of each completion given its prompt: [(prompt_ids, completion_ids)] -> [[float]]."""
    import torch

    from alignlab.ops.logprobs import token_logprobs

    if any(not p for p, _ in pairs):
        raise AlignlabError("completion_logps: every sequence needs at least one prompt token (e.g. BOS)")
    out: list[list[float]] = []
    model.eval()
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        width = max(len(p) + len(c) for p, c in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, (p, c) in enumerate(chunk):
            seq = list(p) + list(c)
            ids[r, :len(seq)] = torch.tensor(seq)
            mask[r, :len(seq)] = 1
            labels[r, len(p):len(seq)] = torch.tensor(list(c), dtype=torch.long)
        with torch.inference_mode():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
            lp = token_logprobs(logits[:, :-1], labels[:, 1:].to(model.device)).cpu()
        for r, (p, c) in enumerate(chunk):
            start_t = len(p) - 1  # logits at position t predict token t + 1
            out.append(lp[r, start_t:start_t + len(c)].tolist())
    return out


def _interval(x: np.ndarray, seed: int, n_boot: int) -> tuple[float | None, float | None]:
    """A bootstrap interval of the mean; none from one value (a zero-width interval would claim certainty)."""
    return bootstrap_mean_interval(x, n_boot=n_boot, seed=seed) if x.size > 1 else (None, None)


def _pair_accuracy(chosen: np.ndarray, rejected: np.ndarray, seed: int, n_boot: int) -> dict[str, Any]:
    """TRL's rewards/accuracies (chosen strictly above rejected) with a bootstrap interval over pairs."""
    wins = (chosen > rejected).astype(np.float64)
    low, high = _interval(wins, seed, n_boot)
    return {"accuracy": float(wins.mean()), "low": low, "high": high, "n": int(wins.size),
            "margin_mean": float((chosen - rejected).mean()), "chosen_mean": float(chosen.mean()),
            "rejected_mean": float(rejected.mean())}


def prompt_arg(row: Any) -> Any:
    from alignlab.data.rows import text_of

    return row.prompt if row.chat else text_of(row.prompt)


def reward_accuracy(score_fn: Any, rows: Sequence[Any], *, seed: int = 0, n_boot: int = 1000) -> dict[str, Any]:
    """Fraction of preference rows whose chosen answer the scorer rates strictly above the rejected one."""
    from alignlab.data.rows import text_of
    from alignlab.rollout.rewards import score

    prompts = [prompt_arg(r) for r in rows]
    chosen = np.array(score(score_fn, prompts, [text_of(r.chosen) for r in rows]))
    rejected = np.array(score(score_fn, prompts, [text_of(r.rejected) for r in rows]))
    return _pair_accuracy(chosen, rejected, seed, n_boot)


def dpo_accuracy(policy: Any, reference: Any, tokenizer: Any, rows: Sequence[Any], *, beta: float,
                 max_length: int | None = 512, batch_size: int = 8, seed: int = 0,
                 n_boot: int = 1000) -> dict[str, Any]:
    """DPO implicit-reward accuracy: r = beta * (log pi(y|x) - log ref(y|x)) (Rafailov et al. 2023, eq. 5),
    chosen above rejected, on held-out pairs."""
    from alignlab.data.tokenize import tokenize_pair

    toks = [tokenize_pair(r, tokenizer, max_length) for r in rows]
    seqs = [(t.prompt_ids, t.chosen_ids) for t in toks] + [(t.prompt_ids, t.rejected_ids) for t in toks]
    pad = tokenizer.pad_token_id or 0
    pol = np.array([sum(x) for x in completion_logps(policy, seqs, batch_size=batch_size, pad_id=pad)])
    ref = np.array([sum(x) for x in completion_logps(reference, seqs, batch_size=batch_size, pad_id=pad)])
    rewards = beta * (pol - ref)
    n = len(toks)
    out = _pair_accuracy(rewards[:n], rewards[n:], seed, n_boot)
    out["beta"] = beta
    return out


def check_same_vocabulary(policy: tuple[Any, Any], reference: tuple[Any, Any], policy_name: str,
                          reference_name: str) -> Any:
    """The reference model of a (model, tokenizer) pair, which scores the policy's token ids: refused where its
    vocabulary (output size or token strings) differs, as it would score other text."""
    sizes = [m.get_output_embeddings().weight.shape[0] for m, _ in (policy, reference)]
    if sizes[0] != sizes[1] or policy[1].get_vocab() != reference[1].get_vocab():
        raise AlignlabError(f"reference {reference_name!r} has another vocabulary than {policy_name!r} (output size "
                            f"{sizes[1]} against {sizes[0]}, or other tokens at the same ids): its log-probs of the "
                            f"policy's token ids would score other text")
    return reference[0]


def kl_from_samples(policy: Any, reference: Any, result: Any, *, batch_size: int = 8, pad_id: int = 0) -> dict:
    """KL(policy || reference) from a GenerationResult sampled from the policy: token log-probs of each
    sample under both models (temperature 1), then eval.kl.sequence_kl (k1 and k3)."""
    import torch

    from alignlab.eval.kl import sequence_kl

    seqs = [(s.prompt_ids, s.completion_ids) for s in result.samples if s.completion_ids]
    if not seqs:
        raise AlignlabError("kl: every sampled completion is empty")
    pol = completion_logps(policy, seqs, batch_size=batch_size, pad_id=pad_id)
    ref = completion_logps(reference, seqs, batch_size=batch_size, pad_id=pad_id)
    width = max(len(x) for x in pol)
    lp, lr, mask = (torch.zeros(len(seqs), width, dtype=torch.float64) for _ in range(3))
    for i, (a, b) in enumerate(zip(pol, ref)):
        lp[i, :len(a)], lr[i, :len(b)], mask[i, :len(a)] = torch.tensor(a), torch.tensor(b), 1.0
    return sequence_kl(lp, lr, mask).to_dict()


def perplexity_on_rows(model: Any, tokenizer: Any, rows: Sequence[Any], *, max_length: int | None = 512,
                       batch_size: int = 8) -> dict[str, Any]:
    """Token-weighted perplexity over the trained tokens of SFT rows (labels != -100), as eval.kl.perplexity."""
    from alignlab.data.tokenize import tokenize_sft
    from alignlab.eval.kl import perplexity

    seqs, trained = [], []
    for r in rows:
        t = tokenize_sft(r, tokenizer, max_length)
        # a row trained from its first token (empty prompt, no BOS) is scored from its second: the first has no
        # context, and training's shifted loss leaves it out too
        first = max(next((i for i, lab in enumerate(t.labels) if lab != -100), len(t.labels)), 1)
        if first < len(t.input_ids):
            seqs.append((t.input_ids[:first], t.input_ids[first:]))
            # scored from the first trained token on, kept where trained: a multi-turn row's later user turns and
            # the template's text after an end-of-turn token are context, not targets (as eval_perplexity in training)
            trained.append([lab != -100 for lab in t.labels[first:]])
    if not seqs:
        raise AlignlabError("perplexity: no row has a trained completion after its prompt")
    lps = completion_logps(model, seqs, batch_size=batch_size, pad_id=tokenizer.pad_token_id or 0)
    flat = np.array([v for x, keep in zip(lps, trained) for v, k in zip(x, keep) if k])
    return {"perplexity": perplexity(flat), "tokens": int(flat.size), "n": len(seqs),
            "nll_per_token": float(-flat.mean())}


def mean_reward(reward_fn: Any, prompts: Sequence[Any], completions: Sequence[str], *, seed: int = 0,
                n_boot: int = 1000, **fields: Any) -> dict[str, Any]:
    """Mean reward of completions with a bootstrap interval and the standard error."""
    from alignlab.rollout.rewards import score

    values = np.array(score(reward_fn, prompts, completions, **fields))
    low, high = _interval(values, seed, n_boot)
    se = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else float("nan")
    return {"mean": float(values.mean()), "low": low, "high": high, "se": se, "n": int(values.size)}
