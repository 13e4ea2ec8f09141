"""Speculative decoding with Medusa heads (Cai et al. 2024, Sec. 2.1.2), greedy and exact, at batch 1.

Each step has the base model's next token t0 = argmax p(. | x) in hand (from the previous forward) and the
heads' guesses c_1..c_K for the K tokens after it (head k's top-1 at the same hidden state). One forward
over the chain [t0, c_1, ..., c_K] with the KV cache gives the base's greedy choice after every chain
prefix; the longest prefix whose guesses all equal those choices is accepted (exact-match acceptance,
the greedy case of Medusa's acceptance rule), and the base's choice after it is the next step's t0. Every
emitted token is therefore the base's own argmax given the tokens before it: the output equals plain
greedy decoding token for token (up to float ties between two logits), and each forward emits 1 + a
tokens, a = accepted guesses. The rejected tail's cache columns are cut before the next step.

This verifies one candidate chain (top-1 of each head) rather than Medusa's tree of top-k combinations
(Sec. 2.1.2, tree attention): simpler, equally exact, and it accepts fewer tokens per forward than a
tree would. Sampling (Medusa's typical acceptance) is not implemented: `medusa_generate` asks for greedy.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alignlab.errors import AlignlabError
from alignlab.rollout.encode import encode_prompt, eos_token_ids
from alignlab.rollout.generate import GenerationResult, Sample, SamplingConfig, forward_kwargs

__all__ = ["SpeculativeStats", "medusa_from_flag", "medusa_generate"]


@dataclass
class SpeculativeStats:
    """What speculation bought: tokens emitted per verifying forward."""

    forwards: int
    """Verifying forwards of the base (prefills not counted)."""
    tokens: int
    """Tokens emitted by those forwards."""
    accepted: list[int]
    """Histogram: accepted[a] = forwards that accepted a head guesses (a = 0..K)."""

    @property
    def mean_accepted_length(self) -> float:
        """Tokens per forward (Medusa's "acceleration rate"); 1.0 = no gain over plain decoding."""
        return self.tokens / self.forwards if self.forwards else 0.0


def _crop(cache: Any, length: int) -> None:
    """Keep the first `length` cached positions of every layer (full-attention layers only)."""
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None:
            continue
        layer.keys = layer.keys[..., :length, :]
        layer.values = layer.values[..., :length, :]


def _forward(model: Any, ids: list[int], start: int, cache: Any, kv: str) -> tuple[Any, Any]:
    """Logits [L, V] and final hidden states [L, H] of `ids` placed at positions start.. after the cache."""
    import torch

    x = torch.tensor([ids], dtype=torch.long, device=model.device)
    pos = torch.arange(start, start + len(ids), device=model.device)[None]
    out = model(input_ids=x, position_ids=pos, use_cache=True, output_hidden_states=True, **{kv: cache})
    return out.logits[0], out.hidden_states[-1][0]


def _decode_one(model: Any, heads: Any, prompt: list[int], max_new: int, eos: set[int], stats: SpeculativeStats,
                kv: str, stop_hit: Any) -> tuple[list[int], str]:
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache(config=model.config)
    logits, hidden = _forward(model, prompt, 0, cache, kv)
    logit, h = logits[-1], hidden[-1]
    done: list[int] = []
    while True:
        t0 = int(logit.float().argmax())
        room = max_new - len(done)
        if t0 in eos or room == 1:  # nothing after t0 is wanted: no forward needed
            done.append(t0)
            return done, "eos" if t0 in eos else ("stop" if stop_hit and stop_hit(done) else "length")
        guesses = heads(h[None])[:, 0].float().argmax(-1).tolist()[: room - 1]
        chain = [t0] + guesses
        past = len(prompt) + len(done)
        logits, hidden = _forward(model, chain, past, cache, kv)
        choice = logits.float().argmax(-1).tolist()  # choice[i]: the base's greedy token after chain[:i + 1]
        a = 0
        while a < len(guesses) and choice[a] == chain[a + 1]:
            a += 1
        stats.forwards += 1
        stats.accepted[a] += 1
        for tok in chain[: a + 1]:
            done.append(tok)
            stats.tokens += 1
            if tok in eos:
                return done, "eos"
            if stop_hit is not None and stop_hit(done):
                return done, "stop"
        if len(done) >= max_new:
            return done, "length"
        _crop(cache, past + a + 1)
        logit, h = logits[a], hidden[a]


def medusa_generate(model: Any, heads: Any, tokenizer: Any, prompts: Sequence[Any],
                    cfg: SamplingConfig | None = None) -> tuple[GenerationResult, SpeculativeStats]:
    """Greedy completions of `prompts` (one each, batch 1) verified against Medusa `heads` guesses; the same
    samples `rollout.generate.generate` returns for greedy decoding, plus the acceptance statistics."""
    import torch

    from alignlab.rollout.generate import _stop_checker, _to_samples

    cfg = cfg or SamplingConfig(greedy=True)
    cfg.validate()
    if not (cfg.greedy or cfg.top_k == 1) or cfg.logprobs:
        raise AlignlabError("speculative decoding with Medusa heads is greedy only here (exact-match acceptance); "
                            "pass --greedy (typical acceptance for sampling is not implemented)")
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    if any(not ids for ids in encoded):
        raise AlignlabError("generate: a prompt encodes to no tokens")
    eos = set(eos_token_ids(model, tokenizer))
    kv = forward_kwargs(model)
    stats = SpeculativeStats(0, 0, [0] * (heads.num_heads + 1))
    stop_hit = _stop_checker(tokenizer, cfg.stop)
    out: dict[int, list[tuple[list[int], None, str]]] = {}
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            for i, ids in enumerate(encoded):
                toks, reason = _decode_one(model, heads, ids, cfg.max_new_tokens, eos, stats, kv, stop_hit)
                out[i] = [(toks, None, reason)]
        samples: list[Sample] = _to_samples(tokenizer, encoded, out, 1, cfg.stop)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    return GenerationResult(samples, sum(len(s.completion_ids) for s in samples), seconds), stats


def medusa_from_flag(flag: str, model: Any, tokenizer: Any, prompts: Sequence[Any], cfg: SamplingConfig,
                     *, n: int | None = None) -> GenerationResult:
    """`generate --speculative medusa=DIR`: load the heads, decode, print the acceptance statistics."""
    import sys

    from alignlab.models.medusa import load_medusa

    kind, sep, directory = flag.partition("=")
    if kind != "medusa" or not sep or not directory:
        raise AlignlabError(f"generate: --speculative takes medusa=DIR (heads from `alignlab medusa`), got {flag!r}")
    if n not in (None, 1):
        raise AlignlabError("generate: --speculative decodes one greedy completion per prompt; drop --n")
    res, stats = medusa_generate(model, load_medusa(directory, model), tokenizer, prompts, cfg)
    print(f"medusa: {stats.tokens} tokens from {stats.forwards} verifying forwards: mean accepted length "
          f"{stats.mean_accepted_length:.3f} tokens/forward (accepted guesses histogram {stats.accepted})",
          file=sys.stderr)
    return res
