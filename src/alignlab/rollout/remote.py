"""Rollouts from an external OpenAI-compatible engine (alignlab serve, vLLM, ...) and weight pushes to it.

The wire format is docs/serving.md, section "Rollout engine protocol": token ids in, token ids and the
sampler's per-token log-probs out (vLLM's `return_token_ids` / `return_tokens_as_token_ids` fields), so
the trainer scores exactly the tokens the engine sampled, with the engine's own log-probs kept for an
importance-sampling correction. The standard library's urllib is the HTTP client: four endpoints and JSON
bodies do not need a new dependency.

    engine = RemoteEngine(url="http://127.0.0.1:8000", model="policy")
    res = generate_remote(engine, tokenizer, prompts, SamplingConfig(max_new_tokens=64, logprobs=True), n=8)
    push_weights(engine, "runs/grpo/step-100")          # full weights (alignlab serve) or a peft adapter
"""

from __future__ import annotations

import http.client
import json
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignlab.errors import AlignlabError
from alignlab.rollout.encode import encode_prompt
from alignlab.rollout.generate import GenerationResult, SamplingConfig, to_samples

KINDS = ("openai",)
SERVERS = ("alignlab", "vllm")


@dataclass
class RemoteEngine:
    """Where rollouts are sampled when they are not sampled in-process."""

    kind: str = "openai"
    """Wire protocol; 'openai' is /v1/completions with vLLM's token-id fields (docs/serving.md)."""
    url: str = "http://127.0.0.1:8000"
    """The server's root URL, without /v1."""
    model: str = "alignlab"
    """The `model` field of every request: the served model's name (after a LoRA push to vLLM: its name)."""
    api_key_env: str | None = None
    """Environment variable holding the API key sent as `Authorization: Bearer ...` (None: no header)."""
    timeout: float = 600.0
    """Seconds to wait for one HTTP reply (a whole batch of rollouts, or a weight reload)."""
    server: str = "alignlab"
    """What answers at `url`: 'alignlab' (alignlab serve: /v1/load_weights takes full weights or an adapter)
    or 'vllm' (LoRA adapters through /v1/load_lora_adapter only)."""
    prompts_per_request: int = 0
    """Split the prompts into requests of at most this many (0: one request), for servers with a body size
    limit. Request k is seeded with seed + k, so a split changes the random stream: with the same split
    the samples are reproducible, but they equal in-process generate()'s only with one request."""
    logprobs_scaled: bool = False
    """The server's log-probs already include the temperature (vLLM with `--logprobs-mode
    processed_logprobs`; top-p and top-k are then refused: vLLM renormalises after them). alignlab serve always
    does; for vLLM without it only temperature 1 gives log-probs comparable with the trainer's, and other
    temperatures are refused."""

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise AlignlabError(f"rollout_engine: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.server not in SERVERS:
            raise AlignlabError(f"rollout_engine: server must be one of {', '.join(SERVERS)}, got {self.server!r}")
        if not self.url.startswith(("http://", "https://")):
            raise AlignlabError(f"rollout_engine: url must start with http:// or https://, got {self.url!r}")
        if self.prompts_per_request < 0:
            raise AlignlabError(f"rollout_engine: prompts_per_request must be >= 0, got {self.prompts_per_request}")
        if self.timeout <= 0:
            raise AlignlabError(f"rollout_engine: timeout must be > 0, got {self.timeout}")
        if self.api_key_env and not os.environ.get(self.api_key_env):
            raise AlignlabError(f"rollout_engine: api_key_env names {self.api_key_env}, which is not set")


def request_json(engine: RemoteEngine, method: str, route: str, body: dict | None = None,
                 text_ok: bool = False, label: str = "rollout engine") -> dict:
    """One HTTP call; a non-2xx reply or an unreachable server is an AlignlabError naming `label` and the URL.
    With `text_ok` a plain-text 2xx reply (vLLM's LoRA endpoints answer so) becomes {"message": text}."""
    url = engine.url.rstrip("/") + route
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if engine.api_key_env:
        headers["Authorization"] = f"Bearer {os.environ.get(engine.api_key_env, '')}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=engine.timeout) as reply:
            raw = reply.read()
    except urllib.error.HTTPError as e:
        raise AlignlabError(f"{label} {method} {url}: HTTP {e.code}: {_error_message(e.read())}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:  # OSError: timeouts, resets
        reason = getattr(e, "reason", e)
        raise AlignlabError(f"{label} {method} {url}: cannot reach the server ({reason})") from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        if text_ok:
            return {"message": raw.decode(errors="replace").strip()}
        raise AlignlabError(f"{label} {method} {url}: reply is not JSON: {raw[:200]!r}") from None


def _error_message(raw: bytes) -> str:
    try:
        err = json.loads(raw).get("error")
        return err.get("message", str(err)) if isinstance(err, dict) else str(err)
    except (json.JSONDecodeError, AttributeError):
        return raw[:300].decode(errors="replace")


def completion_request(engine: RemoteEngine, prompts: list[list[int]], cfg: SamplingConfig, n: int) -> dict:
    """The /v1/completions body for these token-id prompts (docs/serving.md, section 1)."""
    if cfg.json_schema is not None or cfg.regex is not None or cfg.lark is not None:
        raise AlignlabError("rollout engine: constrained sampling (json_schema/regex/lark) is not part of the "
                            "remote protocol; sample in-process")
    if engine.server == "vllm" and not engine.logprobs_scaled and not cfg.greedy and cfg.temperature != 1.0:
        raise AlignlabError(
            f"rollout engine: vLLM returns log-probs without the temperature ({cfg.temperature}) by default, so "
            "they would not compare with the trainer's; start vLLM with --logprobs-mode processed_logprobs and "
            "set logprobs_scaled: true (with top_p 1 and no top_k), or sample at temperature 1")
    if engine.server == "vllm" and engine.logprobs_scaled and not cfg.greedy and (cfg.top_p < 1.0 or cfg.top_k > 0):
        raise AlignlabError(
            f"rollout engine: vLLM's processed_logprobs are taken after top-p/top-k (top_p {cfg.top_p}, top_k "
            f"{cfg.top_k}) and renormalised, so each is log p - log Z and every importance weight would come out Z "
            "instead of 1; sample with top_p 1 and top_k 0, or at temperature 1 with logprobs_scaled: false")
    body = {"model": engine.model, "prompt": prompts, "n": n, "max_tokens": cfg.max_new_tokens,
            "temperature": 0.0 if cfg.greedy else cfg.temperature, "top_p": 1.0 if cfg.greedy else cfg.top_p,
            "top_k": cfg.top_k if cfg.top_k > 0 and not cfg.greedy else -1, "seed": cfg.seed, "logprobs": 0,
            "return_token_ids": True, "return_tokens_as_token_ids": True, "skip_special_tokens": True,
            "include_stop_str_in_output": False}
    if cfg.stop:
        body["stop"] = list(cfg.stop)
    if cfg.per_row_seed and engine.server == "alignlab":  # our extension: the same keyed draws as in-process
        body["alignlab_first_prompt"] = cfg.first_prompt
    return body


def generate_remote(engine: RemoteEngine, tokenizer: Any, prompts: Sequence[Any], cfg: SamplingConfig | None = None,
                    n: int = 1, vocab_size: int | None = None) -> GenerationResult:
    """`generate`'s result, sampled by the engine: samples prompt-major, completion_ids and (with
    cfg.logprobs) logprobs exactly as the engine returned them, finish reasons 'eos'/'stop'/'length'.
    vocab_size (the trained model's embedding rows): token ids at or above it are refused."""
    cfg = cfg or SamplingConfig()
    cfg.validate()
    engine.validate()
    if n < 1:
        raise AlignlabError(f"generate_remote: n must be >= 1, got {n}")
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise AlignlabError(f"generate_remote: prompt {i} encodes to no tokens")
    start = time.perf_counter()
    step = engine.prompts_per_request or max(len(encoded), 1)
    out: dict[int, list] = {}
    for k, lo in enumerate(range(0, len(encoded), step)):
        part = encoded[lo:lo + step]
        body = completion_request(engine, part, cfg, n)
        body["seed"] = cfg.seed + k
        got = parse_choices(request_json(engine, "POST", "/v1/completions", body), part, n, cfg, engine.url,
                            vocab_size)
        out.update({lo + i: rows for i, rows in got.items()})
    samples = to_samples(tokenizer, encoded, out, n, cfg.stop)
    return GenerationResult(samples, sum(len(s.completion_ids) for s in samples), time.perf_counter() - start)


def parse_choices(reply: dict, encoded: list[list[int]], n: int, cfg: SamplingConfig, where: str,
                  vocab_size: int | None = None) -> dict[int, list[tuple[list[int], list[float] | None, str]]]:
    """Choices -> {prompt index: [(completion ids, log-probs, finish reason)] * n}, checked against the
    request: the count, every index, the echoed prompt ids, at most max_new_tokens ids in the vocabulary (none
    only if the engine stopped), and one finite log-prob per token."""
    choices = reply.get("choices")
    if not isinstance(choices, list) or len(choices) != len(encoded) * n:
        got = len(choices) if isinstance(choices, list) else type(choices).__name__
        raise AlignlabError(f"rollout engine {where}: expected {len(encoded) * n} choices "
                            f"({len(encoded)} prompts x n={n}), got {got}")
    out: dict[int, list] = {i: [None] * n for i in range(len(encoded))}
    for c in choices:
        k = c.get("index")
        if not isinstance(k, int) or not 0 <= k < len(choices) or out[k // n][k % n] is not None:
            raise AlignlabError(f"rollout engine {where}: bad or repeated choice index {k!r}")
        i, j = divmod(k, n)
        ids = c.get("token_ids")
        if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
            raise AlignlabError(f"rollout engine {where}: choice {k} has no token_ids (the server must honour "
                                "return_token_ids, as vLLM >= 0.10.2 and alignlab serve do)")
        if len(ids) > cfg.max_new_tokens or any(t < 0 or (vocab_size and t >= vocab_size) for t in ids):
            raise AlignlabError(f"rollout engine {where}: choice {k} holds {len(ids)} token ids for max_tokens "
                                f"{cfg.max_new_tokens}, or one outside the vocabulary [0, {vocab_size or 'inf'})")
        if c.get("prompt_token_ids") not in (None, encoded[i]):
            raise AlignlabError(f"rollout engine {where}: choice {k} echoes other prompt token ids than sent")
        lps = None
        if cfg.logprobs:
            lps = (c.get("logprobs") or {}).get("token_logprobs")
            if not isinstance(lps, list) or len(lps) != len(ids) or not all(
                    isinstance(x, (int, float)) and math.isfinite(x) for x in lps):
                raise AlignlabError(f"rollout engine {where}: choice {k} needs one finite log-prob per token "
                                    f"({len(ids)}), got {lps if not isinstance(lps, list) else lps[:8]}")
            lps = [float(x) for x in lps]
        out[i][j] = (ids, lps, _finish(c, k, where))
        if not ids and out[i][j][2] == "length":
            raise AlignlabError(f"rollout engine {where}: choice {k} is empty with finish_reason length")
    return out


def _finish(choice: dict, k: int, where: str) -> str:
    """OpenAI's 'stop'/'length' back to ours: 'stop' with a string stop_reason is a stop string; 'stop' for
    an EOS token (stop_reason null) or a stop-token id (an int) is 'eos'."""
    reason = choice.get("finish_reason")
    if reason == "length":
        return "length"
    if reason != "stop":
        raise AlignlabError(f"rollout engine {where}: choice {k} has finish_reason {reason!r} "
                            "(expected 'stop' or 'length')")
    return "stop" if isinstance(choice.get("stop_reason"), str) else "eos"


def push_weights(engine: RemoteEngine, path: str | Path) -> dict:
    """Make the engine sample with the weights in `path`: an HF model directory or a peft adapter directory
    (docs/serving.md, section 2). Returns the server's reply."""
    engine.validate()
    path = Path(path).resolve()
    adapter = (path / "adapter_config.json").is_file()
    if not adapter and not (path / "config.json").is_file():
        raise AlignlabError(f"push_weights: {path} holds neither config.json (a model) nor adapter_config.json "
                            "(a peft adapter)")
    if engine.server == "alignlab":
        return request_json(engine, "POST", "/v1/load_weights", {"path": str(path)})
    if not adapter:
        raise AlignlabError(f"push_weights: a stock vLLM server cannot load full weights over HTTP ({path}); "
                            "train with LoRA and push the adapter, or use alignlab serve")
    return request_json(engine, "POST", "/v1/load_lora_adapter",
                        {"lora_name": engine.model, "lora_path": str(path), "load_inplace": True}, text_ok=True)
