"""Structured generation: token masks from a grammar (JSON schema, regex, Lark) applied in our sampler.

The grammar engine is llguidance (the `structured` extra: `pip install 'alignlab[structured]'`): it
compiles the grammar against the tokenizer's vocabulary and, for each row's state, says which next tokens
keep the output inside the grammar (EOS only once the output is complete). Our sampler sets every other
logit to -inf before the draw, so every sample is in the language of the grammar unless it runs out of
`max_new_tokens` first (finish 'length').

The mask is one pure step, `allowed_token_mask(state) -> bool[vocab]`, and `advance(state, token)` moves a
state (`new_state(grammar, tokenizer, vocab_size, eos)`) on; `token_masks(grammar, tokenizer, vocab_size, completion_ids)` replays a finished completion
into the masks the sampler saw at each position. An RL trainer that scores the sampled tokens applies the
same masks to its logits, so its log-probs are of the same (masked) distribution the sampler recorded in
`Sample.logprobs`, and importance ratios compare like with like.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from alignlab.errors import AlignlabError

INSTALL = "pip install 'alignlab[structured]'  (llguidance)"
JSON_DEFAULTS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _llguidance():
    try:
        import llguidance
        import llguidance.hf
        import llguidance.torch
    except ImportError:
        raise AlignlabError(f"structured generation needs the llguidance package: {INSTALL}") from None
    return llguidance


def grammar_for(cfg: Any) -> str:
    """llguidance's grammar text for the SamplingConfig's json_schema, regex or lark field."""
    ll = _llguidance()
    if cfg.json_schema is not None:
        schema = cfg.json_schema
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise AlignlabError(f"sampling: json_schema is not valid JSON: {e}") from None
        if not isinstance(schema, dict):
            raise AlignlabError(f"sampling: json_schema must be a JSON object, got {type(schema).__name__}")
        # Compact separators as json.dumps writes them, no free whitespace (a schema's own "x-guidance"
        # options override these): a sampled object is then as short as its content allows.
        return ll.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_DEFAULTS)
    if cfg.regex is not None:
        return ll.LLMatcher.grammar_from_regex(cfg.regex)
    if cfg.lark is not None:
        return ll.LLMatcher.grammar_from_lark(cfg.lark)
    raise AlignlabError("sampling: no json_schema, regex or lark to constrain with")


_TOKENIZERS: dict[tuple[int, int, tuple[int, ...]], tuple[Any, Any]] = {}


def ll_tokenizer(tokenizer: Any, vocab_size: int, eos: list[int]):
    """llguidance's view of the vocabulary (about a second to build for a 50k vocabulary: cached per
    tokenizer object, which the cache keeps alive so its id is never reused). Fast HF tokenizers with a byte-level or SentencePiece decoder go through
    llguidance's own converter; any other tokenizer through each id's decoded bytes."""
    ll = _llguidance()
    key = (id(tokenizer), vocab_size, tuple(eos))
    if key not in _TOKENIZERS:
        try:
            lltok = ll.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=list(eos))
        except (ValueError, TypeError):
            lltok = ll.LLTokenizer(ll.TokenizerWrapper(_ByteVocab(tokenizer, vocab_size, eos)),
                                   n_vocab=vocab_size, eos_token=list(eos))
        _TOKENIZERS[key] = (tokenizer, lltok)
    return _TOKENIZERS[key][1]


class _ByteVocab:
    """A tokenizer as llguidance's TokenizerWrapper reads it: each id's bytes, the special ids, encode."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos: list[int]):
        special = set(getattr(tokenizer, "all_special_ids", [])) | set(eos)
        self.eos_token_id = eos[0] if eos else tokenizer.eos_token_id
        self.bos_token_id = getattr(tokenizer, "bos_token_id", None)
        self.special_token_ids = sorted(i for i in special if i < vocab_size)
        self.tokens = [b"" if i in special or i >= len(tokenizer) else tokenizer.decode([i]).encode("utf-8")
                       for i in range(vocab_size)]
        self._tok = tokenizer

    def __call__(self, text: str) -> list[int]:
        return list(self._tok(text, add_special_tokens=False).input_ids)


@dataclass
class GrammarState:
    """Where one completion stands in the grammar: llguidance's matcher and the model's vocabulary size."""

    matcher: Any
    vocab_size: int
    eos: tuple[int, ...] = ()

    @property
    def done(self) -> bool:
        """The grammar is complete and EOS was consumed (or it can take nothing more)."""
        return self.matcher.is_stopped()


def new_state(grammar: str, tokenizer: Any, vocab_size: int, eos: list[int]) -> GrammarState:
    """A fresh state at the grammar's start, for a model with `vocab_size` logits and these EOS ids."""
    ll = _llguidance()
    try:
        m = ll.LLMatcher(ll_tokenizer(tokenizer, vocab_size, eos), grammar)
    except ValueError as e:
        raise AlignlabError(f"structured generation: the grammar does not compile: {e}") from None
    if m.is_error():
        raise AlignlabError(f"structured generation: the grammar does not compile: {m.get_error()}")
    return GrammarState(m, vocab_size, tuple(eos))


def allowed_token_mask(state: GrammarState):
    """bool[vocab_size]: True for the tokens that keep this completion inside the grammar (only EOS once it
    is complete). Pure: the state is only read."""
    import torch

    ll = _llguidance()
    bits = ll.torch.allocate_token_bitmask(1, state.vocab_size)
    ll.torch.fill_next_token_bitmask(state.matcher, bits, 0)
    shifts = torch.arange(32, dtype=torch.int32)
    return ((bits[0][:, None] >> shifts) & 1).flatten()[:state.vocab_size].bool()


def advance(state: GrammarState, token: int) -> None:
    """Move the state past `token`; a token the grammar refuses is an error (the sampler never draws one).
    Once the grammar has stopped, only EOS may follow (and changes nothing)."""
    if state.done and int(token) in state.eos:
        return
    if state.done or not state.matcher.consume_token(int(token)):
        raise AlignlabError(f"structured generation: token {int(token)} is outside the grammar "
                            f"({state.matcher.get_error()})")


def token_masks(grammar: str, tokenizer: Any, vocab_size: int, eos: list[int], completion_ids: list[int]):
    """bool[len(completion_ids), vocab_size]: the mask the sampler applied before drawing each token of a
    completion (for a trainer scoring the completion under the same constraint)."""
    import torch

    state = new_state(grammar, tokenizer, vocab_size, eos)
    rows = []
    for t in completion_ids:
        rows.append(allowed_token_mask(state))
        advance(state, t)
    return torch.stack(rows) if rows else torch.zeros(0, vocab_size, dtype=torch.bool)


class Constraint:
    """The per-row states of one generate() call: `masks(rows, width)` before each draw, `advance(rows,
    tokens)` after it (rows: global row ids of the live batch rows)."""

    def __init__(self, grammar: str, tokenizer: Any, vocab_size: int, eos: list[int]):
        self.grammar, self.tokenizer, self.vocab_size, self.eos = grammar, tokenizer, vocab_size, eos
        self.states: dict[int, GrammarState] = {}

    def _state(self, row: int) -> GrammarState:
        if row not in self.states:
            self.states[row] = new_state(self.grammar, self.tokenizer, self.vocab_size, self.eos)
        return self.states[row]

    def masks(self, rows, width: int):
        import torch

        out = torch.zeros(len(rows), width, dtype=torch.bool)
        for k, r in enumerate(rows.tolist()):
            out[k, :self.vocab_size] = allowed_token_mask(self._state(r))
        return out.to(rows.device)

    def advance(self, rows, tokens) -> None:
        for r, t in zip(rows.tolist(), tokens.tolist()):
            advance(self._state(r), t)
