"""Speculative decoding with Medusa heads (Cai et al. 2024): tree verification, exact for greedy, typical
acceptance for sampling, at batch 1.

Each step has the base model's logits after the text so far (from the previous forward). The root t0 is drawn
from them by the ordinary sampler (argmax for greedy), so every step makes progress with the base's own token.
The heads read the same hidden state and guess the tokens after t0; their top-k candidates fill a static tree
(rollout/medusa_tree.py: `tree_nodes` paths, ranks < `tree_top_k`, one head per depth). One forward of the base
over [t0, nodes...] with tree attention (each node sees the cache and its ancestors; positions by depth) gives
the base's distribution after every candidate prefix, and the longest path the base accepts is emitted:

- greedy: a candidate is accepted when it is the base's argmax after its prefix (exact match), so every
  emitted token is the base's own argmax given the tokens before it: the output equals plain greedy decoding
  token for token (up to float ties between two logits);
- sampling: Medusa's typical acceptance (Sec. 2.3.1), p(x) > min(epsilon, delta * exp(-H(p))) under the
  base's distribution at the temperature (top-k / top-p applied). This trades exactness for speed: the output
  is not distributed exactly as plain sampling (the paper's own caveat). Since p <= 1, a threshold >= 1 accepts
  nothing: with typical_epsilon = typical_delta = inf the output is plain sampling's, draw for draw (epsilon
  alone -> inf leaves the threshold at delta * exp(-H), which still accepts confident candidates).

The accepted nodes' key/value columns are gathered into place and the rest of the tree is cut; the base's
logits after the last accepted node give the next root. Each verifying forward emits 1 + a tokens.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from alignlab.errors import AlignlabError
from alignlab.rollout.encode import encode_prompt, eos_token_ids
from alignlab.rollout.generate import GenerationResult, Sample, SamplingConfig, forward_kwargs
from alignlab.rollout.medusa_tree import (
    MedusaTree,
    build_tree,
    gather_cache,
    sparse_paths,
    tree_mask,
    typical_accepts,
    walk,
)

__all__ = ["MedusaDecoder", "MedusaDecoding", "SpeculativeStats", "add_speculative_args", "check_sampling",
           "decoding_from_args", "medusa_from_flag", "medusa_generate", "parse_flag"]


@dataclass
class MedusaDecoding:
    """How Medusa candidates are verified and accepted."""

    tree_nodes: int = 16
    """Candidate nodes verified per step besides the root (the tree's size): the verify forward runs
    tree_nodes + 1 tokens. Ignored when `paths` is given."""
    tree_top_k: int = 4
    """Candidates per head: a node at depth d is one of head d's tree_top_k most likely tokens. 1 gives the
    top-1 chain (then at most num_heads nodes). Ignored when `paths` is given."""
    typical_epsilon: float = 0.09
    """Typical acceptance (sampling only): hard threshold epsilon of p(x) > min(epsilon, delta * exp(-H));
    0.09 is the Medusa repository's default (posterior_threshold). inf, with typical_delta inf, accepts nothing
    (plain sampling)."""
    typical_delta: float = 0.3
    """Typical acceptance (sampling only): entropy-scaled threshold delta; 0.3 is Medusa's default
    (posterior_alpha, = sqrt(0.09))."""
    paths: list[list[int]] | None = None
    """An explicit tree (Medusa's `medusa_choices`): rank paths such as [[0], [1], [0, 0]]; node (i_1..i_d) is
    head 1's i_1-th candidate followed by ... head d's i_d-th. None: `sparse_paths(tree_nodes, tree_top_k)`."""

    def validate(self) -> None:
        if self.tree_nodes < 1 or self.tree_top_k < 1:
            raise AlignlabError(f"speculative: tree_nodes and tree_top_k must be >= 1, got {self.tree_nodes}, "
                                f"{self.tree_top_k}")
        if not (self.typical_epsilon >= 0 and self.typical_delta >= 0):
            raise AlignlabError(f"speculative: typical_epsilon and typical_delta must be >= 0, got "
                                f"{self.typical_epsilon}, {self.typical_delta}")

    def tree(self, num_heads: int) -> MedusaTree:
        self.validate()
        paths = self.paths if self.paths is not None else sparse_paths(self.tree_nodes, self.tree_top_k, num_heads)
        return build_tree(paths, num_heads)


@dataclass
class SpeculativeStats:
    """What speculation bought: tokens emitted per verifying forward."""

    forwards: int
    """Verifying forwards of the base (prefills not counted)."""
    tokens: int
    """Tokens emitted by those forwards."""
    accepted: list[int]
    """Histogram: accepted[a] = forwards that accepted a head guesses (a = 0..K)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time by part (verify forward; acceptance walk with the LM head and the heads' projections), for
    finding where a step's time goes."""

    @property
    def mean_accepted_length(self) -> float:
        """Tokens per forward (Medusa's "acceleration rate"); 1.0 = no gain over plain decoding."""
        return self.tokens / self.forwards if self.forwards else 0.0

    def add_time(self, part: str, start: float) -> float:
        now = time.perf_counter()
        self.seconds[part] = self.seconds.get(part, 0.0) + now - start
        return now


def _greedy_accepts(logits: Any, tokens: Any) -> tuple[Any, Any]:
    import torch

    return tokens == logits.float().argmax(-1, keepdim=True), torch.zeros(tokens.shape, device=tokens.device)


def _rope_types(config: Any) -> set[str]:
    """The rope types a config names (transformers 5's rope_parameters, per layer type or not; older rope_scaling)."""
    found: set[str] = set()
    for spec in (getattr(config, "rope_parameters", None), getattr(config, "rope_scaling", None)):
        for part in (spec.values() if isinstance(spec, dict) and "rope_type" not in spec and "type" not in spec
                     else [spec]):
            if isinstance(part, dict):
                found.add(str(part.get("rope_type", part.get("type", "default"))))
    return found


def check_full_attention(model: Any) -> None:
    """Medusa verifies a tree against a cache that holds every past column (medusa_tree.tree_mask, gather_cache),
    each node at position past + depth: a sliding-window or chunked layer's cache keeps only its window (a shape
    error once a sequence outgrew it); ALiBi takes a key's bias from its index in the cache, not its position
    (MPT's greedy output differed from plain greedy); dynamic-NTK and LongRoPE frequencies follow the largest
    position in the forward, which the deepest node raises for every node. Such models are refused before any
    decoding."""
    from alignlab.models.layouts import local_attention

    config = getattr(model, "config", None)
    if config is None:
        return
    name = type(model).__name__
    if local_attention(config):
        raise AlignlabError(f"speculative decoding: {name} has sliding-window or chunked attention layers, and "
                            "Medusa's tree verification needs full attention; decode without --speculative")
    alibi = getattr(config, "alibi", False) or getattr(getattr(config, "attn_config", None), "alibi", False)
    if alibi is True or getattr(config, "model_type", "") in ("bloom", "mpt"):
        raise AlignlabError(f"speculative decoding: {name} uses ALiBi position biases, which Medusa's tree positions "
                            "cannot express; decode without --speculative")
    if moving := _rope_types(config) & {"dynamic", "longrope"}:
        raise AlignlabError(f"speculative decoding: {name}'s {', '.join(sorted(moving))} rope scaling changes its "
                            "frequencies with the longest position of a forward, which a tree verification raises; "
                            "decode without --speculative")


class MedusaDecoder:
    """One prompt's speculative decoding, a step at a time (so a server can interleave it with other work).
    `start()` prefills; each `step()` verifies one tree and returns the tokens it emitted; `reason` is set
    (eos / stop / length) once the completion is finished, and `done` holds its tokens."""

    def __init__(self, model: Any, heads: Any, tree: MedusaTree, prompt: list[int], cfg: SamplingConfig,
                 decoding: MedusaDecoding, *, eos: set[int], gen: Any, stats: SpeculativeStats,
                 stop_hit: Any = None, row: int = 0):
        self.model, self.heads, self.tree, self.prompt, self.cfg = model, heads, tree, prompt, cfg
        self.eos, self.gen, self.stats, self.stop_hit, self.row = eos, gen, stats, stop_hit, row
        self.kv = forward_kwargs(model)
        # positions a node may take: a learned-position table ends at the context (IndexError past it)
        self.context = getattr(model.config, "max_position_embeddings", None) or 2**62
        self._cut: dict[int, MedusaTree] = {}
        self.done: list[int] = []
        self.reason: str | None = None
        self.cache = self.logits = self.top = None
        self.candidates: list[list[int]] = []  # [K][r]: the heads' top tokens after the pending root
        if cfg.greedy:
            self.accepts = _greedy_accepts
        else:
            from alignlab.rollout.generate import filter_logits

            eps, delta, temp = decoding.typical_epsilon, decoding.typical_delta, cfg.temperature
            self.accepts = lambda logits, toks: typical_accepts(logits, toks, temp, eps, delta,
                                                                lambda s: filter_logits(s, cfg))

    def _tree_within(self, depth: int) -> MedusaTree:
        """The tree's nodes at most `depth` after the root (BFS order keeps them first): deeper ones could not be
        emitted (max_new_tokens) or would sit past the context."""
        if depth >= self.tree.max_depth:
            return self.tree
        if depth not in self._cut:
            self._cut[depth] = build_tree([p for p in self.tree.paths[1:] if len(p) <= depth], self.heads.num_heads)
        return self._cut[depth]

    def _forward(self, ids: list[int], pos: Any, mask: Any = None) -> Any:
        """Final hidden states [L, H] of `ids` at positions `pos` [L] after the cache (no logits formed)."""
        import torch

        dev = self.model.device
        x = torch.tensor([ids], dtype=torch.long, device=dev)
        out = self.model(input_ids=x, position_ids=pos.to(dev)[None], attention_mask=mask, use_cache=True,
                         output_hidden_states=True, logits_to_keep=torch.zeros(0, dtype=torch.long, device=dev),
                         **{self.kv: self.cache})
        return out.hidden_states[-1][0]

    def _logits(self, hidden: Any) -> Any:
        """The base's logits [M, V] at final hidden states [M, H]. The heads' candidates at the same rows
        (their top max_rank tokens, [K, M, r]) are kept in `self.top`: with the shared LM head they come from
        the same matmul, so at batch 1 the V x H weight is read once per call rather than once more for the
        heads (the top-k order is the same under the model's logit scale or soft-cap: both are monotone)."""
        import torch

        from alignlab.ops.logprobs import lm_head_logits

        rank = self.tree.max_rank
        if self.heads.lm_heads is not None:  # own heads: their own projections
            self.top = self.heads(hidden).topk(rank, dim=-1).indices
            return lm_head_logits(self.model, hidden)
        z = torch.stack([hidden] + [blk(hidden) for blk in self.heads.blocks])  # [1 + K, M, H]
        logits = lm_head_logits(self.model, z)
        self.top = logits[1:].topk(rank, dim=-1).indices
        return logits[0]

    def start(self) -> None:
        import torch
        from transformers.cache_utils import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        hidden = self._forward(self.prompt, torch.arange(len(self.prompt)))
        self.logits = self._logits(hidden[-1:])[0]
        self.candidates = self.top[:, 0].tolist()

    def _draw(self) -> int:
        from alignlab.rollout.generate import sample_next

        keys = ([self.cfg.first_prompt + self.row], [len(self.done)]) if self.cfg.per_row_seed else None
        return int(sample_next(self.logits[None], self.cfg, self.gen, keys)[0][0])

    def _emit(self, tokens: list[int]) -> list[int]:
        """Append tokens until one finishes the completion; returns those appended."""
        for i, tok in enumerate(tokens):
            self.done.append(tok)
            if tok in self.eos:
                self.reason = "eos"
            elif self.stop_hit is not None and self.stop_hit(self.done):
                self.reason = "stop"
            elif len(self.done) >= self.cfg.max_new_tokens:
                self.reason = "length"
            if self.reason:
                return tokens[: i + 1]
        return tokens

    def step(self) -> list[int]:
        """Draw the root, verify the heads' tree after it in one forward, emit the accepted path."""
        if self.reason is not None:
            return []
        t0 = self._draw()
        if t0 in self.eos or self.cfg.max_new_tokens - len(self.done) == 1:  # nothing after t0 is wanted
            return self._emit([t0])
        st, t = self.stats, time.perf_counter()
        past = len(self.prompt) + len(self.done)
        tree = self._tree_within(min(self.cfg.max_new_tokens - len(self.done), self.context - past) - 1)
        tokens = tree.tokens(t0, self.candidates)
        mask = tree_mask(tree, past, self.model, self.model.device)
        hidden = self._forward(tokens, past + tree.depth, mask)
        t = st.add_time("verify_forward", t)
        verdict = walk(tree, tokens, hidden, self._logits, self.accepts)
        st.add_time("accept", t)
        st.forwards += 1
        st.accepted[len(verdict.path) - 1] += 1
        out = self._emit([tokens[n] for n in verdict.path])
        st.tokens += len(out)
        if self.reason is None:
            gather_cache(self.cache, past, verdict.path)
            self.logits, self.candidates = verdict.logits, self.top[:, verdict.row].tolist()
        return out


def check_sampling(cfg: SamplingConfig) -> None:
    """What speculative decoding does not do: log-probs, constrained decoding, a separate weights dtype."""
    cfg.validate()
    if cfg.logprobs:
        raise AlignlabError("speculative decoding does not return log-probs; drop logprobs")
    if cfg.json_schema is not None or cfg.regex is not None or cfg.lark is not None:
        raise AlignlabError("speculative decoding does not apply json_schema / regex / lark constraints")
    if cfg.weights_dtype != "model":
        raise AlignlabError("speculative decoding runs the model's own weights; drop weights_dtype")


def medusa_generate(model: Any, heads: Any, tokenizer: Any, prompts: Sequence[Any], cfg: SamplingConfig | None = None,
                    decoding: MedusaDecoding | None = None) -> tuple[GenerationResult, SpeculativeStats]:
    """One completion per prompt (batch 1, in order) verified against Medusa `heads`' candidate tree; the same
    samples `rollout.generate.generate` returns, plus the acceptance statistics. Greedy: the tokens of plain
    greedy decoding. Sampling: one draw of the config's generator per verifying step (the root), so with
    nothing accepted it is generate(batch_size=1, sort_by_length=False)'s sampling draw for draw."""
    import torch

    from alignlab.rollout.generate import _stop_checker, _to_samples

    cfg = cfg or SamplingConfig(greedy=True)
    check_sampling(cfg)
    check_full_attention(model)
    decoding = decoding or MedusaDecoding()
    tree = decoding.tree(heads.num_heads)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    if any(not ids for ids in encoded):
        raise AlignlabError("generate: a prompt encodes to no tokens")
    eos = set(eos_token_ids(model, tokenizer))
    stats = SpeculativeStats(0, 0, [0] * (tree.max_depth + 1))
    gen = torch.Generator(device=model.device).manual_seed(cfg.seed)
    stop_hit = _stop_checker(tokenizer, cfg.stop)
    out: dict[int, list[tuple[list[int], None, str]]] = {}
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            for i, ids in enumerate(encoded):
                dec = MedusaDecoder(model, heads, tree, ids, cfg, decoding, eos=eos, gen=gen, stats=stats,
                                    stop_hit=stop_hit, row=i)
                dec.start()
                while dec.reason is None:
                    dec.step()
                out[i] = [(dec.done, None, dec.reason)]
        samples: list[Sample] = _to_samples(tokenizer, encoded, out, 1, cfg.stop)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    return GenerationResult(samples, sum(len(s.completion_ids) for s in samples), seconds), stats


def parse_flag(flag: str, command: str) -> str:
    """The heads directory of `--speculative medusa=DIR`."""
    kind, sep, directory = flag.partition("=")
    if kind != "medusa" or not sep or not directory:
        raise AlignlabError(f"{command}: --speculative takes medusa=DIR (heads from `alignlab medusa`), got {flag!r}")
    return directory


def add_speculative_args(p: Any) -> None:
    """The flags `generate` and `serve` share for `--speculative medusa=DIR`."""
    d = MedusaDecoding()
    p.add_argument("--speculative", metavar="medusa=DIR", default=None,
                   help="speculative decoding with Medusa heads from `alignlab medusa`: the heads' top-k candidates "
                        "verified as a tree in one forward (batch 1); greedy output equals plain greedy, sampling "
                        "uses typical acceptance")
    p.add_argument("--tree-nodes", type=int, default=None, help=f"--speculative: candidate nodes per step "
                   f"(default {d.tree_nodes})")
    p.add_argument("--tree-top-k", type=int, default=None, help=f"--speculative: candidates per head "
                   f"(default {d.tree_top_k}; 1 = the top-1 chain)")
    p.add_argument("--typical-epsilon", type=float, default=None, help=f"--speculative, sampling: typical "
                   f"acceptance threshold epsilon (default {d.typical_epsilon})")
    p.add_argument("--typical-delta", type=float, default=None, help=f"--speculative, sampling: typical "
                   f"acceptance entropy factor delta (default {d.typical_delta})")


def decoding_from_args(args: Any, command: str) -> MedusaDecoding | None:
    """MedusaDecoding from the flags of `add_speculative_args` (None without --speculative)."""
    given = {k: getattr(args, k) for k in ("tree_nodes", "tree_top_k", "typical_epsilon", "typical_delta")
             if getattr(args, k) is not None}
    if args.speculative is None:
        if given:
            raise AlignlabError(f"{command}: --{next(iter(given)).replace('_', '-')} applies only with --speculative")
        return None
    decoding = MedusaDecoding(**given)
    decoding.validate()
    return decoding


def medusa_from_flag(flag: str, model: Any, tokenizer: Any, prompts: Sequence[Any], cfg: SamplingConfig,
                     *, n: int | None = None, decoding: MedusaDecoding | None = None) -> GenerationResult:
    """`generate --speculative medusa=DIR`: load the heads, decode, print the acceptance statistics."""
    import sys

    from alignlab.models.medusa import load_medusa

    directory = parse_flag(flag, "generate")
    if n not in (None, 1):
        raise AlignlabError("generate: --speculative decodes one completion per prompt; drop --n")
    res, stats = medusa_generate(model, load_medusa(directory, model), tokenizer, prompts, cfg, decoding)
    print(f"medusa: {stats.tokens} tokens from {stats.forwards} verifying forwards: mean accepted length "
          f"{stats.mean_accepted_length:.3f} tokens/forward (accepted guesses histogram {stats.accepted})",
          file=sys.stderr)
    return res

