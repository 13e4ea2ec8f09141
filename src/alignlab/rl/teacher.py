"""The teacher of `alignlab distill`: a local model, or an OpenAI-compatible endpoint that scores token ids.

A remote teacher is asked for the log-probs of the PROMPT tokens of one /v1/completions request holding
each sample (prompt + the student's completion) as token ids, with `echo: true, max_tokens: 0, logprobs: 1`
(vLLM's prompt log-probs; `alignlab serve` answers the same, serve/echo.py). It returns only the log-prob
of the token that is there, not the distribution, so only the sampled-token estimator of the reverse KL
(`kl_estimator: sampled`, losses/distill.py) can use it. Prompt log-probs are the model's plain
distribution, so a remote teacher takes temperature 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from alignlab.errors import AlignlabError

__all__ = ["RemoteTeacher", "load_teacher", "remote_teacher", "remote_token_logprobs", "teacher_token_logprobs"]


@dataclass
class RemoteTeacher:
    """An OpenAI-compatible server (alignlab serve, vLLM) serving the teacher."""

    url: str = "http://127.0.0.1:8000"
    """The server's root URL, without /v1."""
    model: str | None = None
    """The `model` field of each request; null: the first model the server lists at /v1/models."""
    api_key_env: str | None = None
    """Environment variable holding the API key sent as `Authorization: Bearer ...` (null: no header)."""
    timeout: float = 600.0
    """Seconds to wait for one reply (the log-probs of a whole rollout)."""

    def validate(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise AlignlabError(f"teacher.url: must start with http:// or https://, got {self.url!r}")
        if self.timeout <= 0:
            raise AlignlabError(f"teacher.timeout: must be > 0, got {self.timeout}")
        if self.api_key_env and not os.environ.get(self.api_key_env):
            raise AlignlabError(f"teacher.api_key_env names {self.api_key_env}, which is not set")


def remote_teacher(teacher: str | RemoteTeacher) -> RemoteTeacher | None:
    """The endpoint a `teacher` key names (a RemoteTeacher, or a string starting with http:// or https://),
    None for a local model."""
    if isinstance(teacher, RemoteTeacher):
        return teacher
    return RemoteTeacher(url=teacher) if teacher.startswith(("http://", "https://")) else None


def _model_name(teacher: RemoteTeacher) -> str:
    from alignlab.rollout.remote import request_json

    if teacher.model:
        return teacher.model
    listed = request_json(teacher, "GET", "/v1/models", label="teacher").get("data")
    if not isinstance(listed, list) or not listed or not isinstance(listed[0], dict) or "id" not in listed[0]:
        raise AlignlabError(f"teacher {teacher.url}: /v1/models lists no model; set teacher.model")
    return str(listed[0]["id"])


def _echo(teacher: RemoteTeacher, sequences: list[list[int]]) -> list[dict]:
    """The choices of one echo request (the prompts' own log-probs), in the order of `sequences`; checked: one
    choice per sequence, every index once, the echoed ids (when the server returns them) equal to those sent."""
    from alignlab.rollout.remote import request_json

    teacher.validate()
    body = {"model": _model_name(teacher), "prompt": sequences, "echo": True, "max_tokens": 0, "logprobs": 1,
            "temperature": 1.0, "return_token_ids": True, "return_tokens_as_token_ids": True}
    choices = request_json(teacher, "POST", "/v1/completions", body, label="teacher").get("choices")
    where = f"teacher {teacher.url}"
    if not isinstance(choices, list) or len(choices) != len(sequences):
        raise AlignlabError(f"{where}: expected {len(sequences)} choices, got "
                            f"{len(choices) if isinstance(choices, list) else type(choices).__name__}")
    out: list[dict | None] = [None] * len(sequences)
    for c in choices:
        i = c.get("index")
        if not isinstance(i, int) or not 0 <= i < len(sequences) or out[i] is not None:
            raise AlignlabError(f"{where}: bad or repeated choice index {i!r}")
        if c.get("prompt_token_ids") not in (None, sequences[i]):
            raise AlignlabError(f"{where}: choice {i} echoes other token ids than sent")
        out[i] = c
    return out  # type: ignore[return-value]


def remote_token_logprobs(teacher: RemoteTeacher, sequences: list[list[int]]) -> list[list[float]]:
    """log p_teacher(ids[t] | ids[:t]) for t = 1 .. len(ids) - 1 of each token-id sequence, from one request
    (checked as `_echo` says, and a number for every token after the first)."""
    out = []
    for i, (c, ids) in enumerate(zip(_echo(teacher, sequences), sequences)):
        lps = (c.get("logprobs") or {}).get("token_logprobs")
        if not isinstance(lps, list) or len(lps) < len(ids) or any(x is None for x in lps[1:len(ids)]):
            raise AlignlabError(f"teacher {teacher.url}: choice {i} has no prompt log-prob for each of its {len(ids)} "
                                "tokens (the server must honour echo with max_tokens 0 and logprobs, as vLLM and "
                                "alignlab serve do)")
        out.append([float(x) for x in lps[1:len(ids)]])
    return out


# Words, digits, accents, CJK and symbols: two tokenizers that differ anywhere common read some of these apart.
_PROBE = "Distillation check: the quick brown fox jumps over 13 lazy dogs; naïve café, 数学 ∑ x² = 42.\n"


def _check_remote_tokens(teacher: RemoteTeacher, state: Any) -> None:
    """The endpoint must read the student's token ids as the student does: the ids of a probe text, echoed, come
    back decoded by the server's tokenizer (vLLM and alignlab serve return that text), which must be the student's
    decoding. A teacher served with another tokenizer was trained against unchecked."""
    ids = state.tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    text, want = _echo(teacher, [ids])[0].get("text"), state.tokenizer.decode(ids)
    if isinstance(text, str) and text and text != want:
        raise AlignlabError(f"teacher {teacher.url}: its tokenizer reads the student's tokens of {want!r} as "
                            f"{text!r}; distillation compares the two distributions token by token, so they must "
                            "share one tokenizer")


def load_teacher(cfg: Any, state: Any) -> Any:
    """The frozen local teacher model (its vocabulary checked against the student's), or the RemoteTeacher."""
    remote = remote_teacher(cfg.teacher)
    if remote is not None:
        remote.validate()
        _check_remote_tokens(remote, state)
        return remote
    from alignlab.models.load import load_model

    try:
        model = load_model(cfg.teacher).to(state.world.device).eval().requires_grad_(False)
    except AlignlabError as e:  # the loader's message named no key: it read as the student's `model`
        raise AlignlabError(f"teacher: {e}") from e
    student = state.policy.get_output_embeddings().weight.shape[0]
    if model.config.vocab_size != student:
        raise AlignlabError(f"teacher: {cfg.teacher} has a vocabulary of {model.config.vocab_size}, the student "
                            f"{cfg.model} {student}; distillation compares distributions token by token")
    _check_same_tokens(cfg, state)
    return model


def _check_same_tokens(cfg: Any, state: Any) -> None:
    """Equal sizes are not one vocabulary: a teacher whose token i is another string than the student's scores
    other text (two 512-token BPEs shared 262 ids). Compared where the teacher has a tokenizer of its own."""
    from alignlab.models.load import load_tokenizer

    try:
        theirs = load_tokenizer(cfg.teacher).get_vocab()
    except (AlignlabError, OSError, ValueError):  # no tokenizer files: the sizes, checked above, are all there is
        return
    ours = state.tokenizer.get_vocab()
    if theirs != ours:
        differ = sum(1 for t, i in ours.items() if theirs.get(t) != i)
        raise AlignlabError(f"teacher: {cfg.teacher}'s tokenizer maps {differ} of the student's {len(ours)} tokens to "
                            "other ids; distillation compares the two distributions token by token, so they must share "
                            "one tokenizer")


def teacher_token_logprobs(state: Any, ro: Any) -> Any:
    """[N, T] teacher log-probs of every rollout token (0 on padding), under softmax(logits / temperature) for
    a local teacher (in micro-batches), from the endpoint for a remote one."""
    import torch

    from alignlab.rl.rollout import policy_logprobs

    if isinstance(state.teacher, RemoteTeacher):
        seqs, lens = [], []
        for r in range(ro.input_ids.shape[0]):
            completion = ro.response[r][ro.response[r] != -100].tolist()
            seqs.append(ro.input_ids[r, :ro.prompt_len][ro.attention_mask[r, :ro.prompt_len] == 1].tolist() + completion)
            lens.append(len(completion))
        out = torch.zeros(ro.response.shape, dtype=torch.float32, device=ro.response.device)
        for r, (lps, n) in enumerate(zip(remote_token_logprobs(state.teacher, seqs), lens)):
            if n:
                out[r, :n] = torch.tensor(lps[-n:], dtype=torch.float32)
        return out
    size = max(1, ro.input_ids.shape[0] // max(1, state.cfg.grad_accum))
    with torch.no_grad(), state.compute(cache=True):
        return torch.cat([policy_logprobs(state.teacher, ro, idx, state.cfg.temperature)[0]
                          for idx in torch.arange(ro.input_ids.shape[0], device=ro.response.device).split(size)])
