"""Batched sampling with a KV cache driven by our own loop around a Hugging Face causal LM's forward.

Why not `model.generate`: for RL rollouts (many samples per prompt, ragged completion lengths) the
generic loop spends its time on work we can skip. The levers, each measured in bench/gen_vs_hf.py:

- prefix sharing: a prompt is prefilled once and its cache rows are repeated for its n samples;
- batch compaction: a finished row leaves the batch (and the KV cache) at once instead of decoding
  padding until the longest row ends; cache columns that no live row attends to are trimmed too;
- a growing pre-allocated KV buffer (amortised doubling) instead of `torch.cat` of the whole cache
  at every step;
- only the last position's logits (`logits_to_keep=1`), one fused sampling function instead of a
  per-step chain of logits processors, `torch.inference_mode`;
- prompts sorted by length so a batch holds prompts of similar length (less padding).

Prompts are left-padded; position ids come from the attention mask, so padded rows see exactly the
positions they would see alone (greedy output equals `model.generate(do_sample=False)` token for token).
Sampling uses a private `torch.Generator` seeded from the config: same seed, same inputs, same output,
whatever the global RNG does.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from alignlab.errors import AlignlabError
from alignlab.rollout.encode import encode_prompt, eos_token_ids

FINISH_REASONS = ("eos", "stop", "length")


@dataclass
class SamplingConfig:
    """How to sample completions. Defaults follow TRL's GRPO defaults (temperature 1, no top-p/top-k)."""

    max_new_tokens: int = 64
    """Most tokens generated per completion (EOS included); a row that reaches it finishes with 'length'."""
    temperature: float = 1.0
    """Logits are divided by this before sampling (and before top-k/top-p). Must be > 0 unless greedy."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability mass reaches top_p (1.0 = off)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off). top_k=1 is greedy decoding."""
    greedy: bool = False
    """Take the argmax token at every step (temperature, top-p and top-k are ignored)."""
    stop: list[str] = field(default_factory=list)
    """Stop strings: a row finishes ('stop') once its decoded text contains one; the text is cut before it."""
    seed: int = 0
    """Seed of the private torch.Generator used for sampling (the global RNG is never touched)."""
    logprobs: bool = False
    """Return the log-prob of each sampled token under softmax(logits / temperature), untruncated by
    top-k/top-p: the same number a training forward at that temperature computes (what RL needs)."""
    batch_size: int = 64
    """Sequences decoded together (prompts x samples); bounds memory."""
    sort_by_length: bool = True
    """Batch prompts of similar length together to cut padding; output order is unchanged."""
    per_row_seed: bool = False
    """Draw each sequence's randomness from (seed, its global index, token position) alone, so its sample does not
    depend on what else shares its batch: data-parallel ranks each sampling their share reproduce one process."""
    first_prompt: int = 0
    """Global index of prompts[0] under per_row_seed (a rank's offset into the global batch)."""

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise AlignlabError(f"sampling: max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.greedy and not self.temperature > 0:
            raise AlignlabError(f"sampling: temperature must be > 0 (or greedy: true), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise AlignlabError(f"sampling: top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise AlignlabError(f"sampling: top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.batch_size < 1:
            raise AlignlabError(f"sampling: batch_size must be >= 1, got {self.batch_size}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise AlignlabError(f"sampling: stop must be a list of non-empty strings, got {self.stop!r}")


@dataclass
class Sample:
    """One completion. completion_ids include the EOS token (finish 'eos') or the tokens of the stop string
    (finish 'stop', as vLLM does); `text` is decoded without special tokens and cut before the stop string."""

    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    finish_reason: str
    logprobs: list[float] | None = None


@dataclass
class GenerationResult:
    samples: list[Sample]
    """Ordered by prompt, then sample: samples[i * n + j] is sample j of prompt i."""
    num_tokens: int
    """Generated tokens, counting each completion up to and including its EOS."""
    seconds: float
    """Wall time from padding the first batch to the last decoded text."""

    @property
    def tokens_per_second(self) -> float:
        return self.num_tokens / self.seconds if self.seconds > 0 else 0.0

    def for_prompt(self, i: int) -> list[Sample]:
        return [s for s in self.samples if s.prompt_index == i]


# ---------------------------------------------------------------- public entry point


def generate(model: Any, tokenizer: Any, prompts: Sequence[Any], cfg: SamplingConfig | None = None,
             *, n: int = 1) -> GenerationResult:
    """Sample `n` completions for every prompt. See the module docstring for what makes it fast."""
    import torch

    cfg = cfg or SamplingConfig()
    cfg.validate()
    if n < 1:
        raise AlignlabError(f"generate: n must be >= 1, got {n}")
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise AlignlabError(f"generate: prompt {i} encodes to no tokens")
    pad_id = _pad_id(tokenizer)
    eos = eos_token_ids(model, tokenizer)
    gen = torch.Generator(device=model.device).manual_seed(cfg.seed)
    order = list(range(len(encoded)))
    if cfg.sort_by_length:
        order.sort(key=lambda i: -len(encoded[i]))
    per_batch = max(1, cfg.batch_size // n)
    out: dict[int, list[tuple[list[int], list[float] | None, str]]] = {}
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            for b in range(0, len(order), per_batch):
                idx = order[b:b + per_batch]
                row_ids = [(cfg.first_prompt + i) * n + j for i in idx for j in range(n)]
                rows = decode_batch(model, [encoded[i] for i in idx], n, cfg, gen, eos, pad_id,
                                    _stop_checker(tokenizer, cfg.stop), row_ids=row_ids)
                for k, i in enumerate(idx):
                    out[i] = rows[k * n:(k + 1) * n]
        samples = _to_samples(tokenizer, encoded, out, n, cfg.stop)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    return GenerationResult(samples, sum(len(s.completion_ids) for s in samples), seconds)


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, name, None)
        if isinstance(v, int):
            return v
    return 0


def _stop_checker(tokenizer: Any, stops: list[str]):
    """Return fn(completion_ids) -> bool, or None without stop strings. Only the tail is decoded each step
    (enough tokens to spell the longest stop string), so checking stays O(1) per step."""
    if not stops:
        return None
    tail = max(len(s) for s in stops) + 4

    def hit(ids: list[int]) -> bool:
        text = tokenizer.decode(ids[-tail:], skip_special_tokens=True)
        return any(s in text for s in stops)

    return hit


def _to_samples(tokenizer, encoded, out, n, stops) -> list[Sample]:
    samples = []
    for i in range(len(encoded)):
        for j, (ids, lps, reason) in enumerate(out[i]):
            text = tokenizer.decode(ids, skip_special_tokens=True)
            if reason == "stop":
                cut = min((text.find(s) for s in stops if s in text), default=-1)
                text = text[:cut] if cut >= 0 else text
            samples.append(Sample(i, j, list(encoded[i]), ids, text, reason, lps))
    return samples


def forward_kwargs(model: Any) -> str:
    """Name of the forward's KV-cache argument: `cache` in transformers >= 5.2x, `past_key_values` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model wraps it
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


# ---------------------------------------------------------------- KV cache


def _growing_layer_cls():
    """A DynamicLayer whose keys/values live in a pre-allocated buffer that doubles when full, so a decode
    step writes one column instead of copying the whole cache (`torch.cat`) in every layer."""
    import torch
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def lazy_initialization(self, key_states, value_states):
            super().lazy_initialization(key_states, value_states)
            self.length = 0
            self.kbuf = self.vbuf = None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            new = key_states.shape[-2]
            if self.kbuf is None or self.length + new > self.kbuf.shape[-2]:
                cap = max(2 * (self.length + new), 16)
                kb = key_states.new_empty(*key_states.shape[:-2], cap, key_states.shape[-1])
                vb = value_states.new_empty(*value_states.shape[:-2], cap, value_states.shape[-1])
                if self.length:
                    kb[..., :self.length, :] = self.kbuf[..., :self.length, :]
                    vb[..., :self.length, :] = self.vbuf[..., :self.length, :]
                self.kbuf, self.vbuf = kb, vb
            self.kbuf[..., self.length:self.length + new, :] = key_states
            self.vbuf[..., self.length:self.length + new, :] = value_states
            self.length += new
            self.keys = self.kbuf[..., :self.length, :]
            self.values = self.vbuf[..., :self.length, :]
            return self.keys, self.values

        def select(self, rows: torch.Tensor, drop_left: int) -> None:
            self.kbuf = self.kbuf[rows, :, drop_left:]
            self.vbuf = self.vbuf[rows, :, drop_left:]
            self.length -= drop_left
            self.keys = self.kbuf[..., :self.length, :]
            self.values = self.vbuf[..., :self.length, :]

        def repeat_rows(self, n: int) -> None:
            self.kbuf = self.kbuf.repeat_interleave(n, dim=0)
            self.vbuf = self.vbuf.repeat_interleave(n, dim=0)
            self.keys = self.kbuf[..., :self.length, :]
            self.values = self.vbuf[..., :self.length, :]

    return GrowingLayer


def _new_cache(model: Any):
    """Our growing cache when every layer is plain full attention; else transformers' DynamicCache."""
    from transformers.cache_utils import Cache, DynamicCache

    text_cfg = model.config.get_text_config(decoder=True)
    types = getattr(text_cfg, "layer_types", None) or ["full_attention"] * text_cfg.num_hidden_layers
    if all(t == "full_attention" for t in types):
        layer = _growing_layer_cls()
        return Cache(layers=[layer() for _ in types]), True
    return DynamicCache(config=model.config), False


# ---------------------------------------------------------------- sampling


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def keyed_uniforms(seed: int, rows: list[int], step: int) -> list[float]:
    """One uniform in [0, 1) per (seed, row, step), a pure function of the three (counter-based, SplitMix64)."""
    return [(_splitmix64(_splitmix64(_splitmix64(seed) ^ r) ^ step) >> 11) / 2.0**53 for r in rows]


def sample_next(logits, cfg: SamplingConfig, gen, keys: tuple[list[int], int] | None = None):
    """Pick one token per row from last-position logits [B, V] in one function (no processor chain).
    Returns (tokens [B], log-probs [B] under softmax(logits / T), or None when not asked for).
    keys=(global row ids, token position): per-row keyed uniforms instead of the batch generator."""
    import torch

    logits = logits.float()
    if cfg.greedy:
        tok = logits.argmax(-1)
        lp = torch.log_softmax(logits, -1).gather(-1, tok[:, None])[:, 0] if cfg.logprobs else None
        return tok, lp
    scaled = logits / cfg.temperature if cfg.temperature != 1.0 else logits
    filtered = scaled
    if cfg.top_k > 0 and cfg.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, cfg.top_k, dim=-1).values[:, -1:]
        filtered = filtered.masked_fill(filtered < kth, float("-inf"))
    if cfg.top_p < 1.0:
        # Nucleus (Holtzman et al. 2020, eq. 3): drop a token when the mass strictly before it already reaches p.
        sorted_l, sorted_i = torch.sort(filtered, dim=-1, descending=True)
        probs = torch.softmax(sorted_l, -1)
        drop = (probs.cumsum(-1) - probs) >= cfg.top_p
        filtered = filtered.scatter(-1, sorted_i, sorted_l.masked_fill(drop, float("-inf")))
    # Inverse-CDF draw: one uniform per row and one cumsum; cheaper than torch.multinomial or an
    # exponential race over the vocabulary (both draw a random number per vocabulary entry).
    cdf = torch.softmax(filtered, -1).cumsum_(-1)
    if keys is None:
        u = torch.rand(cdf.shape[0], 1, generator=gen, device=cdf.device)
    else:
        u = torch.tensor(keyed_uniforms(cfg.seed, *keys), dtype=cdf.dtype, device=cdf.device)[:, None]
    u = u * cdf[:, -1:]
    tok = torch.searchsorted(cdf, u, right=True)[:, 0].clamp_(max=cdf.shape[-1] - 1)
    lp = torch.log_softmax(scaled, -1).gather(-1, tok[:, None])[:, 0] if cfg.logprobs else None
    return tok, lp


# ---------------------------------------------------------------- the decode loop


def _left_pad(prompts: list[list[int]], pad_id: int, device):
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[r, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def decode_batch(model, prompts: list[list[int]], n: int, cfg: SamplingConfig, gen, eos: list[int],
                 pad_id: int, stop_hit=None, row_ids: list[int] | None = None
                 ) -> list[tuple[list[int], list[float] | None, str]]:
    """Prefill `prompts` once, repeat each prompt's cache rows n times, then decode one token per step,
    dropping finished rows. Returns (completion ids, log-probs, finish reason) per sequence, prompt-major."""
    import torch

    device = model.device
    ids, mask = _left_pad(prompts, pad_id, device)
    cache, growing = _new_cache(model)
    kv = forward_kwargs(model)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                   logits_to_keep=1, **{kv: cache}).logits[:, -1]
    if n > 1:  # prefix sharing: the n samples of a prompt share one prefill
        for layer in cache.layers:
            layer.repeat_rows(n) if growing else layer.batch_repeat_interleave(n)
        logits, mask = logits.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
    next_pos = mask.sum(-1, keepdim=True)
    total = len(prompts) * n
    toks = torch.full((total, cfg.max_new_tokens), pad_id, dtype=torch.long, device=device)
    lps = torch.zeros((total, cfg.max_new_tokens), device=device) if cfg.logprobs else None
    length = [0] * total
    reason = ["length"] * total
    live = torch.arange(total, device=device)
    eos_t = torch.tensor(eos or [-1], device=device)
    for step in range(cfg.max_new_tokens):
        keys = ([row_ids[r] for r in live.tolist()], step) if cfg.per_row_seed and row_ids else None
        tok, lp = sample_next(logits, cfg, gen, keys)
        toks[live, step] = tok
        if lps is not None:
            lps[live, step] = lp
        done = torch.isin(tok, eos_t)
        _mark(done, live, step, length, reason, toks, stop_hit)
        if step == cfg.max_new_tokens - 1:
            break
        if done.any():
            keep = (~done).nonzero()[:, 0]
            if keep.numel() == 0:
                break
            live, tok, next_pos, mask = live[keep], tok[keep], next_pos[keep], mask[keep]
            mask = _compact(cache, growing, keep, mask)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        logits = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos, use_cache=True,
                       logits_to_keep=1, **{kv: cache}).logits[:, -1]
        next_pos = next_pos + 1
    for r in range(total):
        if length[r] == 0:
            length[r] = cfg.max_new_tokens
    tl, ll = toks.tolist(), (lps.tolist() if lps is not None else None)
    return [(tl[r][:length[r]], ll[r][:length[r]] if ll else None, reason[r]) for r in range(total)]


def _mark(done, live, step, length, reason, toks, stop_hit) -> None:
    """Record rows that finished at this step; a stop-string hit also sets `done` in place."""
    for r in done.nonzero()[:, 0].tolist():
        row = int(live[r])
        length[row], reason[row] = step + 1, "eos"
    if stop_hit is None:
        return
    for r in (~done).nonzero()[:, 0].tolist():
        row = int(live[r])
        if stop_hit(toks[row, :step + 1].tolist()):
            length[row], reason[row] = step + 1, "stop"
            done[r] = True


def _compact(cache, growing: bool, keep, mask):
    """Drop finished rows from the cache; also drop leading cache columns that are padding in every
    remaining row (they would only be masked out), so later steps attend over fewer columns."""
    lead = int((mask.cumsum(-1) == 0).sum(-1).min())
    for layer in cache.layers:
        if growing:
            layer.select(keep, lead)
        else:
            layer.batch_select_indices(keep)
    return mask[:, lead:] if growing else mask
