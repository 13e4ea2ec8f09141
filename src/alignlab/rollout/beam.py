"""Beam search over a policy's log-probs: decoding a DPO policy by search on its implicit reward.

Rafailov et al. 2024 ("From r to Q*", Sec. 5.2) read a DPO policy as a token-level soft Q-function:
beta * log pi(y_t | s_t) = beta * log pi_ref(y_t | s_t) + r_t with r_t the per-token implicit reward
(eval/credit.py), up to the state's value. Summed over a completion,

    log pi(y | x) = log pi_ref(y | x) + r(x, y) / beta,

so the completion that maximises the policy's log-likelihood is the one that maximises the implicit reward
plus the reference log-likelihood, and beam search on log pi is search on that objective (the paper finds
wider beams raise the reward, then overfit it). No reference model is needed during the search.

The search keeps `num_beams` partial completions; each step scores every continuation of every beam,
keeps the top 2 x num_beams, moves those ending in EOS (when ranked within the first num_beams) to the
finished list and continues the best num_beams others, as Hugging Face's beam search does. It stops once
num_beams completions have finished (HF `early_stopping=True`) or at max_new_tokens; the best finished or
live hypothesis by sum log-prob / length ** length_penalty wins. With one beam this is exactly greedy
decoding: the EOS continuation is kept only when it is the argmax, and then the search stops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alignlab.errors import AlignlabError


@dataclass
class BeamConfig:
    """Beam search settings."""

    num_beams: int = 4
    """Partial completions kept at each step (1 = greedy decoding)."""
    max_new_tokens: int = 64
    """Most tokens per completion (EOS included)."""
    length_penalty: float = 0.0
    """Rank finished completions by sum log-prob / length ** length_penalty (0: the plain log-likelihood,
    which is what search on the implicit reward means; HF's default is 1.0)."""

    def validate(self) -> None:
        if self.num_beams < 1:
            raise AlignlabError(f"beam search: num_beams must be >= 1, got {self.num_beams}")
        if self.max_new_tokens < 1:
            raise AlignlabError(f"beam search: max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class Hypothesis:
    """The chosen completion of one prompt."""

    completion_ids: list[int]
    """Generated tokens, EOS included when finish_reason is 'eos'."""
    text: str
    """Decoded without special tokens."""
    logp: float
    """Sum of the policy's log-probs of completion_ids."""
    finish_reason: str
    """'eos' or 'length'."""


def beam_search(model: Any, tokenizer: Any, prompts: Sequence[Any], cfg: BeamConfig | None = None) -> list[Hypothesis]:
    """The highest-scoring completion of each prompt (string, token ids, chat messages or a PromptRow)."""
    import torch

    from alignlab.rollout.encode import encode_prompt, eos_token_ids

    cfg = cfg or BeamConfig()
    cfg.validate()
    eos = set(eos_token_ids(model, tokenizer))
    out = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for i, prompt in enumerate(prompts):
                ids = encode_prompt(tokenizer, prompt)
                if not ids:
                    raise AlignlabError(f"beam search: prompt {i} encodes to no tokens")
                toks, logp, reason = _search(model, ids, cfg, eos)
                out.append(Hypothesis(toks, tokenizer.decode(toks, skip_special_tokens=True), logp, reason))
    finally:
        model.train(was_training)
    return out


def _search(model: Any, prompt: list[int], cfg: BeamConfig, eos: set[int]) -> tuple[list[int], float, str]:
    """Beam search for one prompt; see the module docstring for the rules."""
    import torch
    from transformers.cache_utils import DynamicCache

    from alignlab.rollout.generate import forward_kwargs

    device = model.device
    kv = forward_kwargs(model)
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=torch.tensor([prompt], device=device), use_cache=True, logits_to_keep=1,
                   **{kv: cache}).logits[:, -1]
    beams: list[list[int]] = [[]]
    scores = torch.zeros(1, dtype=torch.float64, device=device)
    finished: list[tuple[float, float, list[int], str]] = []  # (rank score, sum logp, tokens, reason)

    def rank(s: float, n: int) -> float:
        return s / (n ** cfg.length_penalty) if cfg.length_penalty else s

    for step in range(cfg.max_new_tokens):
        cand = scores[:, None] + torch.log_softmax(logits.double(), -1)  # [beams, V], float64 sums
        vocab = cand.shape[-1]
        # HF's pool: max(2, 1 + number of EOS ids) x beams, so num_beams non-EOS continuations always survive (with
        # two EOS ids, 2 x beams could hold fewer: the search went on narrower than HF's)
        pool = max(2, 1 + len(eos)) * cfg.num_beams
        top, flat = cand.reshape(-1).topk(min(pool, cand.numel()))
        keep_rows, keep_toks, keep_scores, new_beams = [], [], [], []
        for r, (s, f) in enumerate(zip(top.tolist(), flat.tolist())):
            b, t = divmod(f, vocab)
            if t in eos:
                if r < cfg.num_beams:  # an EOS ranked below the beam width would not have survived anyway
                    seq = beams[b] + [t]
                    finished.append((rank(s, len(seq)), s, seq, "eos"))
                continue
            keep_rows.append(b), keep_toks.append(t), keep_scores.append(s), new_beams.append(beams[b] + [t])
            if len(new_beams) == cfg.num_beams:
                break
        if step == cfg.max_new_tokens - 1:  # the live beams end here too, before any early stop drops them
            finished += [(rank(s, len(seq)), s, seq, "length") for s, seq in zip(keep_scores, new_beams)]
            break
        if len(finished) >= cfg.num_beams or not new_beams:
            break
        beams, scores = new_beams, torch.tensor(keep_scores, dtype=torch.float64, device=device)
        cache.reorder_cache(torch.tensor(keep_rows, device=device))
        logits = model(input_ids=torch.tensor(keep_toks, device=device)[:, None], use_cache=True, logits_to_keep=1,
                       **{kv: cache}).logits[:, -1]
    best = max(finished, key=lambda h: h[0])  # max keeps the first of equal scores: deterministic
    return best[2], best[1], best[3]
