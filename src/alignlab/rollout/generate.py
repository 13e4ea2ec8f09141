"""Batched sampling with a KV cache driven by our own loop around a Hugging Face causal LM's forward.

Why not `model.generate`: for RL rollouts (many samples per prompt, ragged completion lengths) the
generic loop spends its time on work we can skip. The levers, each measured in bench/gen_vs_hf.py:

- prefix sharing: a prompt is prefilled once and its cache rows are repeated for its n samples;
- continuous batching: a finished row leaves the batch (and the KV cache) at once, and once n slots are
  free the next waiting prompt is prefilled and joins the running batch (rollout/engine.py);
- a KV cache reserved for the whole generation (prompt width + max_new_tokens), written one column per
  step, instead of `torch.cat` of the whole cache at every step (rollout/kvcache.py);
- bf16 sampling weights (`weights_dtype`): a bf16 copy of the parameters made once per call and used
  in the caller's modules for each forward only (its parameters are put back after; the training model's
  weights, gradients and optimizer state are never converted); decoding is
  memory-bound, so halving the bytes read per step is the largest single lever on CPUs with bf16 units;
  a plain Llama sampled in bf16 on CPU runs a step with fewer, fused calls instead of its forward
  (rollout/decode_step.py: the model's numbers to bf16 rounding, not its bits);
- only the last position's logits (`logits_to_keep=1`), one fused sampling function instead of a
  per-step chain of logits processors (its draw: `inverse_cdf`, two levels), `torch.inference_mode`;
- prompts sorted by length so a batch holds prompts of similar length (less padding).

Prompts are left-padded; position ids come from the attention mask, so padded rows see exactly the
positions they would see alone (greedy output with the model's own weights equals
`model.generate(do_sample=False)` token for token).
Sampling uses a private `torch.Generator` seeded from the config: same seed, same inputs, same output,
whatever the global RNG does. Structured generation (`json_schema`, `regex`, `lark`) masks the logits of
every step with rollout/constrained.py before the draw.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from alignlab.errors import AlignlabError
from alignlab.rollout.encode import encode_prompt, eos_token_ids
from alignlab.rollout.weights import resolve_weights_dtype, sampling_forward  # noqa: F401 (re-exported)

FINISH_REASONS = ("eos", "stop", "length")
WEIGHTS_DTYPES = ("model", "auto", "float32", "bfloat16")


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
    """Draw each sequence's randomness from (seed, its global index, its token position) alone, so its sample
    does not depend on what else shares its batch or when it joined: data-parallel ranks each sampling their
    share reproduce one process."""
    first_prompt: int = 0
    """Global index of prompts[0] under per_row_seed (a rank's offset into the global batch)."""
    continuous_batching: bool = True
    """Let waiting prompts join the running batch as rows finish (n free slots per prompt); off: a new batch
    starts only when the last one has ended. Greedy output is the same either way."""
    weights_dtype: str = "model"
    """Weights used for sampling: 'model' (as loaded), 'float32', 'bfloat16' (a bf16 copy made once per
    call), or 'auto' (bfloat16 when the model is float32 and the device has bf16 matrix units: CUDA with
    bf16, or a CPU with AVX512-BF16 or AMX; else as loaded). Log-probs are the sampler's own (from these
    weights), which is what an importance-sampling correction needs."""
    json_schema: Any = None
    """Constrain every completion to JSON valid under this schema (a dict, or its JSON text); needs the
    optional extra `structured` (llguidance). Log-probs are then under the masked distribution."""
    regex: str | None = None
    """Constrain every completion to match this regular expression (llguidance syntax)."""
    lark: str | None = None
    """Constrain every completion to this Lark grammar (llguidance's dialect)."""

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
        if self.weights_dtype not in WEIGHTS_DTYPES:
            raise AlignlabError(f"sampling: weights_dtype must be one of {', '.join(WEIGHTS_DTYPES)}, "
                                f"got {self.weights_dtype!r}")
        if sum(x is not None for x in (self.json_schema, self.regex, self.lark)) > 1:
            raise AlignlabError("sampling: give at most one of json_schema, regex and lark")


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
             *, n: int = 1, prompt_keys: Sequence[int] | None = None) -> GenerationResult:
    """Sample `n` completions for every prompt. See the module docstring for what makes it fast.
    `prompt_keys`: under per_row_seed, prompt i's global index (default first_prompt + i), for callers whose
    prompts are not one contiguous run of the global batch (multi-turn episodes still running)."""
    import torch

    from alignlab.rollout.engine import Engine

    cfg = cfg or SamplingConfig()
    cfg.validate()
    if n < 1:
        raise AlignlabError(f"generate: n must be >= 1, got {n}")
    if prompt_keys is not None and len(prompt_keys) != len(prompts):
        raise AlignlabError(f"generate: {len(prompt_keys)} prompt_keys for {len(prompts)} prompts")
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise AlignlabError(f"generate: prompt {i} encodes to no tokens")
    constraint = _constraint(tokenizer, model, cfg)
    gen = torch.Generator(device=model.device).manual_seed(cfg.seed)
    order = list(range(len(encoded)))
    if cfg.sort_by_length:
        order.sort(key=lambda i: -len(encoded[i]))
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            engine = Engine(model, sampling_forward(model, cfg), encoded, order, n, cfg,
                            eos_token_ids(model, tokenizer), _pad_id(tokenizer), _sampler(cfg, gen, constraint, n, prompt_keys),
                            _stop_checker(tokenizer, cfg.stop), constraint.advance if constraint else None)
            rows = engine.run()
        out = {i: rows[i * n:(i + 1) * n] for i in range(len(encoded))}
        samples = to_samples(tokenizer, encoded, out, n, cfg.stop)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    return GenerationResult(samples, sum(len(s.completion_ids) for s in samples), seconds)


def _constraint(tokenizer: Any, model: Any, cfg: SamplingConfig):
    if cfg.json_schema is None and cfg.regex is None and cfg.lark is None:
        return None
    from alignlab.rollout.constrained import Constraint, grammar_for

    vocab = model.config.get_text_config(decoder=True).vocab_size
    return Constraint(grammar_for(cfg), tokenizer, vocab, eos_token_ids(model, tokenizer))


def _sampler(cfg: SamplingConfig, gen: Any, constraint: Any, n: int = 1, prompt_keys: Sequence[int] | None = None):
    """fn(logits [B, V], rows [B], positions [B]) -> (tokens, log-probs): the constraint's masks (if any), then
    sample_next (per_row_seed: keyed by the global row and the row's own token position)."""
    def global_prompt(i: int) -> int:
        return prompt_keys[i] if prompt_keys is not None else cfg.first_prompt + i

    def sample(logits, rows, positions):
        if constraint is not None:
            logits = logits.float().masked_fill(~constraint.masks(rows, logits.shape[-1]), float("-inf"))
        keys = None
        if cfg.per_row_seed:  # rows are prompt-major (i * n + j) within this call
            keys = ([global_prompt(r // n) * n + r % n for r in rows.tolist()], positions.tolist())
        return sample_next(logits, cfg, gen, keys)

    return sample


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, name, None)
        if isinstance(v, int):
            return v
    return 0


def stop_tail(ids: Any, stops: list[str], special: Any = frozenset()) -> list[int]:
    """The latest ids (a list or a 1-d tensor) that can spell any of `stops`: its UTF-8 bytes in tokens (a token
    holds at least one byte; one character may take up to four tokens under byte-level BPE), plus a few for a
    character cut at the edge, not counting `special` ids (skipped in decoding, they spell nothing)."""
    need, k = max(len(s.encode("utf-8")) for s in stops) + 4, 0
    while True:
        k = max(2 * k, need)
        tail = ids[-k:]
        tail = tail.tolist() if hasattr(tail, "tolist") else list(tail)
        if k >= len(ids) or sum(t not in special for t in tail) >= need:
            return tail


def _stop_checker(tokenizer: Any, stops: list[str]):
    """Return fn(completion_ids) -> bool, or None without stop strings. Only the tail is decoded each step
    (enough tokens to spell the longest stop string: `stop_tail`), so checking stays O(1) per step."""
    if not stops:
        return None
    special = frozenset(getattr(tokenizer, "all_special_ids", ()))

    def hit(ids: Any) -> bool:
        text = tokenizer.decode(stop_tail(ids, stops, special), skip_special_tokens=True)
        return any(s in text for s in stops)

    return hit


def to_samples(tokenizer, encoded, out, n, stops) -> list[Sample]:
    samples = []
    for i in range(len(encoded)):
        for j, (ids, lps, reason) in enumerate(out[i]):
            text = tokenizer.decode(ids, skip_special_tokens=True)
            if reason == "stop":
                cut = min((text.find(s) for s in stops if s in text), default=-1)
                text = text[:cut] if cut >= 0 else text
            samples.append(Sample(i, j, list(encoded[i]), ids, text, reason, lps))
    return samples


_to_samples = to_samples  # the name other rollout modules (speculative decoding) import


def forward_kwargs(model: Any) -> str:
    """Name of the forward's KV-cache argument: `cache` in transformers >= 5.2x, `past_key_values` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model wraps it
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


# ---------------------------------------------------------------- sampling


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def keyed_uniforms(seed: int, rows: list[int], steps: list[int]) -> list[float]:
    """One uniform in [0, 1) per (seed, row, step), a pure function of the three (counter-based, SplitMix64)."""
    return [(_splitmix64(_splitmix64(_splitmix64(seed) ^ r) ^ t) >> 11) / 2.0**53 for r, t in zip(rows, steps)]


def sample_next(logits, cfg: SamplingConfig, gen, keys: tuple[list[int], list[int]] | None = None):
    """Pick one token per row from last-position logits [B, V] in one function (no processor chain).
    Returns (tokens [B], log-probs [B] under softmax(logits / T), or None when not asked for).
    keys=(global row ids, token positions): per-row keyed uniforms instead of the batch generator."""
    import torch

    if cfg.greedy:
        logits = logits.float()
        tok = logits.argmax(-1)
        lp = torch.log_softmax(logits, -1).gather(-1, tok[:, None])[:, 0] if cfg.logprobs else None
        return tok, lp
    scaled = logits.float() / cfg.temperature if cfg.temperature != 1.0 else logits  # bf16 rows: see inverse_cdf
    filtered = filter_logits(scaled.float(), cfg) if cfg.top_k > 0 or cfg.top_p < 1.0 else scaled
    if keys is None:
        u = torch.rand(scaled.shape[0], 1, generator=gen, device=scaled.device)
    else:
        u = torch.tensor(keyed_uniforms(cfg.seed, *keys), dtype=torch.float32, device=scaled.device)[:, None]
    tok, top, total = inverse_cdf(filtered, u)
    if not cfg.logprobs:
        return tok, None
    if filtered is scaled:  # log-softmax from the draw's own normaliser: max + log(sum(exp(x - max)))
        return tok, scaled.gather(-1, tok[:, None])[:, 0].float() - top - total.log()
    return tok, torch.log_softmax(scaled.float(), -1).gather(-1, tok[:, None])[:, 0]


def inverse_cdf(logits, u, block: int = 256):
    """Tokens [B] drawn from softmax(logits) [B, V] (any float dtype; -inf entries are never drawn) by inverse CDF,
    one uniform `u` [B, 1] in [0, 1) per row: the first token whose cumulative mass exceeds u times the total. Also
    each row's max [B] and sum(exp(logits - max)) [B] (float32), the softmax's normaliser.

    In two levels: the sums of blocks of `block` tokens and their cumulative sum pick the block, then a cumulative sum
    over that block only picks the token. The same draw as one cumulative sum over the vocabulary (up to float
    rounding at the boundaries), without a sequential scan of all V entries, and with the unnormalised weights (no
    division): 16 x 49,152 bf16 logits in 0.76 ms against 3.5 ms for softmax, cumsum and log_softmax, 64 rows in
    2.7 ms against 13.8 (one thread, Intel Xeon with AMX).
    Rounding can put u x total at or past the last boundary; the draw is then held to the last token (block) with
    weight, so a -inf token is never returned. One uniform per row, where torch.multinomial or an exponential race
    draws one per vocabulary entry."""
    import torch
    import torch.nn.functional as F

    rows, vocab = logits.shape
    weight = logits.float()  # bf16 logits: one conversion, then in place (a float32 caller's logits are not written)
    top = weight.amax(-1, keepdim=True)
    weight = (weight.sub_(top) if weight is not logits else weight - top).exp_()
    if vocab % block:
        weight = F.pad(weight, (0, block - vocab % block))
    blocks = weight.view(rows, -1, block)
    cdf = blocks.sum(-1).cumsum_(-1)
    total = cdf[:, -1:]
    target = u * total
    blk = torch.minimum(torch.searchsorted(cdf, target, right=True), (cdf < total).sum(-1, keepdim=True))
    before = torch.where(blk > 0, cdf.gather(-1, (blk - 1).clamp_(min=0)), 0.0)
    inner = blocks[torch.arange(rows, device=logits.device), blk[:, 0]].cumsum_(-1)
    idx = torch.minimum(torch.searchsorted(inner, target - before, right=True),
                        (inner < inner[:, -1:]).sum(-1, keepdim=True))
    return (blk * block + idx)[:, 0], top[:, 0], total[:, 0]


def filter_logits(scaled, cfg: SamplingConfig):
    """Temperature-scaled logits [B, V] with the tokens top-k / top-p exclude set to -inf (the distribution
    `sample_next` draws from; speculative decoding's typical acceptance judges candidates under it too)."""
    import torch

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
    return filtered
