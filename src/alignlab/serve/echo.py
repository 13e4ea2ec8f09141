"""`echo: true` on /v1/completions: the prompt's own token log-probs, nothing sampled (vLLM's prompt log-probs).

A body with `echo: true` and `max_tokens: 0` scores each prompt: choice i's `text` is prompt i decoded, and
with `logprobs: N` its `logprobs` holds every prompt token with log p(token | the tokens before it) under the
model's plain distribution (temperature 1, as vLLM's prompt log-probs), null for the first token, which has no
context, plus the N most likely tokens at each position. This is what a remote teacher of on-policy
distillation returns for the student's sampled tokens (rl/distill.py). `return_token_ids` adds
`prompt_token_ids` (and an empty `token_ids`), `return_tokens_as_token_ids` spells tokens `token_id:<id>`.
Echo with generation (max_tokens > 0), streaming and n > 1 are refused with 400 `unsupported`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from alignlab.rollout.encode import encode_prompt
from alignlab.serve import protocol
from alignlab.serve.output import char_offset


def parse_echo(body: dict) -> tuple[int | None, bool, bool]:
    """(logprobs, return_token_ids, tokens_as_ids) of an echo body; a 400 for what echo does not do here."""
    if body.get("max_tokens", 16) != 0 or body.get("max_completion_tokens") not in (None, 0):
        raise protocol.bad("echo is supported with max_tokens: 0 only (the prompt's log-probs, nothing sampled)",
                           "max_tokens", "unsupported")
    if protocol._flag(body, "stream", False):
        raise protocol.bad("echo is not supported with stream", "stream", "unsupported")
    if body.get("n", 1) not in (1, None) or body.get("best_of", 1) not in (1, None):
        raise protocol.bad("echo with max_tokens 0 takes n: 1", "n", "unsupported")
    logprobs = protocol._integer(body, "logprobs", None, 0, protocol.MAX_TOP_LOGPROBS)
    return (logprobs, protocol._flag(body, "return_token_ids", False),
            protocol._flag(body, "return_tokens_as_token_ids", False))


def prompt_logprobs(model: Any, ids: list[int], top: int) -> tuple[list[float | None], list[list | None]]:
    """log p(ids[t] | ids[:t]) for every t (None at t = 0) and the `top` most likely (id, log-prob) at each t."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0, :-1]
        logp = torch.log_softmax(logits.float(), -1)
        chosen = logp.gather(-1, torch.tensor(ids[1:], device=device)[:, None])[:, 0].tolist()
        alts: list[list | None] = [None] * len(chosen)
        if top:
            values, index = logp.topk(top, -1)
            alts = [list(zip(i, v)) for i, v in zip(index.tolist(), values.tolist())]
    return [None, *chosen], [None, *alts]


def _logprobs_object(tokenizer: Any, ids: list[int], lps: list, alts: list, top: int, as_ids: bool) -> dict:
    def spell(t: int) -> str:
        return f"token_id:{t}" if as_ids else tokenizer.decode([t])

    tokens = [spell(t) for t in ids]
    # characters of the text before token k (as the echoed `text` decodes it), less a trailing half character: the
    # sum of each token's own decode counted every byte piece of a multi-byte character as one U+FFFD
    text = tokenizer.decode(ids)
    offsets = [char_offset(tokenizer, ids, k, text=text) for k in range(len(ids))]
    tops = [None if a is None else {spell(i): v for i, v in a} for a in alts] if top else None
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def echo_response(server: Any, body: dict) -> dict:
    """The whole text_completion for an echo body, computed on the engine's thread between decode steps (so a
    weight load never runs under it)."""
    server._check_model(body)
    raw = protocol.prompts(body)
    top, want_ids, as_ids = parse_echo(body)
    tok = server.tokenizer
    encoded = [encode_prompt(tok, p) for p in raw]
    for ids in encoded:
        if not ids or min(ids) < 0 or max(ids) >= server.vocab:
            raise protocol.bad(f"a prompt is empty or has a token id outside the vocabulary [0, {server.vocab})",
                               "prompt")
        if server.context and len(ids) > server.context:
            raise protocol.bad(f"prompt ({len(ids)} tokens) exceeds the model's context of {server.context} tokens",
                               "prompt", "context_length_exceeded")
    scored = server.engine.call(lambda: [prompt_logprobs(server.engine.model, ids, top or 0) for ids in encoded])
    choices = []
    for i, (ids, (lps, alts)) in enumerate(zip(encoded, scored)):
        c: dict[str, Any] = {"index": i, "text": tok.decode(ids), "finish_reason": "length", "stop_reason": None,
                             "logprobs": None if top is None else _logprobs_object(tok, ids, lps, alts, top, as_ids)}
        if want_ids:
            c.update(token_ids=[], prompt_token_ids=ids)
        choices.append(c)
    n_prompt = sum(len(ids) for ids in encoded)
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": server.model_id, "choices": choices,
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": 0, "total_tokens": n_prompt}}
