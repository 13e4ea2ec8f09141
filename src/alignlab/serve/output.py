"""What a request's samples become on the wire: whole responses, streamed chunks, log-prob objects.

Text is decoded from the sampled ids. While streaming, text that could still change is held back: a
trailing replacement character (half of a multi-byte character) and a tail that could be the start of a
stop string, so a client never receives text that the final answer would cut. `token_ids` are every sampled
token, including the EOS token and the tokens that spell a stop string (as vLLM and `generate` keep them);
`text` is cut before the stop string unless include_stop_str_in_output.
"""

from __future__ import annotations

import functools
import time
import uuid
from typing import Any

from alignlab.serve.protocol import FINISH, Job


class SeqOut:
    """One sample's tokens, log-probs and the text already streamed."""

    def __init__(self, tokenizer: Any, job: Job, prompt_ids: list[int]):
        self.tokenizer, self.job, self.prompt_ids = tokenizer, job, prompt_ids
        self.ids: list[int] = []
        self.lps: list[float | None] = []
        self.alts: list[list | None] = []
        self.reason: str | None = None
        self.sent_text, self.sent_tokens = "", 0

    def add(self, token: int, logprob: float | None, alts: list | None) -> None:
        self.ids.append(token)
        self.lps.append(logprob)
        self.alts.append(alts)

    def _cut(self, text: str) -> tuple[str, str | None]:
        """(text up to the first stop string, the stop string) or (text, None)."""
        hits = [(text.find(s), s) for s in self.job.params.stop if s in text]
        if not hits:
            return text, None
        at, stop = min(hits)
        return (text[:at + len(stop)] if self.job.include_stop else text[:at]), stop

    def text(self, final: bool = False) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.job.params.skip_special)
        cut, stop = self._cut(text)
        if final or stop is not None:
            return cut
        while cut.endswith("\ufffd"):
            cut = cut[:-1]
        for s in self.job.params.stop:  # hold back a tail that may grow into a stop string
            for k in range(min(len(s) - 1, len(cut)), 0, -1):
                if cut.endswith(s[:k]):
                    cut = cut[:-k]
                    break
        return cut

    @property
    def stop_reason(self) -> str | None:
        if self.reason != "stop":
            return None
        return self._cut(self.tokenizer.decode(self.ids, skip_special_tokens=self.job.params.skip_special))[1]

    def delta(self) -> tuple[str, int, int]:
        """New text since the last call, and the range of tokens not yet sent."""
        text = self.text(final=self.reason is not None)
        new = text[len(self.sent_text):] if len(text) > len(self.sent_text) else ""
        self.sent_text += new
        start, self.sent_tokens = self.sent_tokens, len(self.ids)
        return new, start, len(self.ids)


def _token(tokenizer: Any, tid: int, as_ids: bool) -> str:
    return f"token_id:{tid}" if as_ids else tokenizer.decode([tid])


@functools.cache
def _unicode_to_byte() -> dict[str, int]:
    """Byte-level BPE's alphabet (GPT-2, Radford et al. 2019; SmolLM2, Llama 3): each byte is spelled as one
    printable character, the printable Latin-1 bytes as themselves and the other 68 as chr(256 + i) in order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return type(getattr(backend, "decoder", None)).__name__ == "ByteLevel"


def token_bytes(tokenizer: Any, tid: int) -> list[int]:
    """The token's own bytes (OpenAI's `bytes`: a client joins them across tokens that split a character, which
    decoding one token alone turns into U+FFFD): byte-level pieces mapped back to bytes, sentencepiece's byte
    pieces (<0xNN>) as that byte, anything else as the UTF-8 of its text."""
    piece = tokenizer.convert_ids_to_tokens(tid)
    if isinstance(piece, str):
        table = _unicode_to_byte()
        if _byte_level(tokenizer) and all(c in table for c in piece):
            return [table[c] for c in piece]
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return [int(piece[3:5], 16)]
    return list(tokenizer.decode([tid]).encode("utf-8"))


def char_offset(tokenizer: Any, ids: list[int], k: int, skip_special: bool = False, text: str | None = None) -> int:
    """Character offset of token k in `text`, the decode of `ids` so far: the text of the tokens before it, less a
    trailing half character (token k starts inside that character, which begins where the half does). A byte that
    a later token leaves incomplete stays a U+FFFD of the text, and counts (offsets after it were one short)."""
    if not k:
        return 0
    before = tokenizer.decode(ids[:k], skip_special_tokens=skip_special)
    if not before.endswith("\ufffd"):
        return len(before)
    text = tokenizer.decode(ids, skip_special_tokens=skip_special) if text is None else text
    kept = text.startswith(before) and text[len(before):].strip("\ufffd") != ""  # text follows it: it stays
    return len(before) if kept else len(before.rstrip("\ufffd"))


def _offset(out: SeqOut, k: int) -> int:
    return char_offset(out.tokenizer, out.ids, k, out.job.params.skip_special)


def chat_logprobs(out: SeqOut, start: int, end: int) -> dict | None:
    """OpenAI chat shape: {"content": [{token, logprob, bytes, top_logprobs: [...]}, ...]}."""
    if out.job.params.logprobs is None:
        return None
    tok, as_ids = out.tokenizer, out.job.tokens_as_ids
    content = []
    for k in range(start, end):
        tops = [{"token": _token(tok, a, as_ids), "logprob": lp, "bytes": token_bytes(tok, a)}
                for a, lp in (out.alts[k] or [])]
        content.append({"token": _token(tok, out.ids[k], as_ids), "logprob": out.lps[k],
                        "bytes": token_bytes(tok, out.ids[k]), "top_logprobs": tops})
    return {"content": content}


def completion_logprobs(out: SeqOut, start: int, end: int) -> dict | None:
    """OpenAI legacy shape: tokens, token_logprobs, top_logprobs ({token: logprob} per position, null when
    logprobs is 0), text_offset (character offset of each token in the completion text)."""
    if out.job.params.logprobs is None:
        return None
    tok, as_ids = out.tokenizer, out.job.tokens_as_ids
    tokens = [_token(tok, out.ids[k], as_ids) for k in range(start, end)]
    offsets = [_offset(out, k) for k in range(start, end)]
    tops = None
    if out.job.params.logprobs:
        tops = [{_token(tok, a, as_ids): lp for a, lp in (out.alts[k] or [])} for k in range(start, end)]
    return {"tokens": tokens, "token_logprobs": out.lps[start:end], "top_logprobs": tops, "text_offset": offsets}


def _ids_fields(job: Job, out: SeqOut, chat: bool, start: int = 0, end: int | None = None) -> dict:
    if not job.return_token_ids:
        return {}
    fields = {"token_ids": out.ids[start:end]}
    if not chat and start == 0:
        fields["prompt_token_ids"] = out.prompt_ids
    return fields


def response(job: Job, model_id: str, outs: list[SeqOut]) -> dict:
    """A whole chat.completion / text_completion. Every sample of a prompt shares its prompt tokens: each
    prompt counts once in usage, as OpenAI counts it."""
    choices = []
    for i, out in enumerate(outs):
        text = out.text(final=True)
        c: dict[str, Any] = {"index": i, "finish_reason": FINISH[out.reason], "stop_reason": out.stop_reason}
        if job.chat:
            c["message"] = {"role": "assistant", "content": text}
            c["logprobs"] = chat_logprobs(out, 0, len(out.ids))
        else:
            c["text"] = text
            c["logprobs"] = completion_logprobs(out, 0, len(out.ids))
        c.update(_ids_fields(job, out, job.chat))
        choices.append(c)
    body = {"id": new_id(job), "object": "chat.completion" if job.chat else "text_completion",
            "created": int(time.time()), "model": model_id, "choices": choices, "usage": usage(job, outs)}
    if job.chat and job.return_token_ids:
        body["prompt_token_ids"] = outs[0].prompt_ids
    return body


def usage(job: Job, outs: list[SeqOut]) -> dict:
    prompt_tokens = sum(len(outs[i].prompt_ids) for i in range(0, len(outs), job.n))
    completion_tokens = sum(len(o.ids) for o in outs)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def new_id(job: Job) -> str:
    return f"{'chatcmpl' if job.chat else 'cmpl'}-{uuid.uuid4().hex}"


def chunk(job: Job, head: dict, index: int, out: SeqOut, first: bool) -> dict | None:
    """The next streamed chunk of one sample (None when there is nothing new to say)."""
    text, start, end = out.delta()
    finish = FINISH[out.reason] if out.reason in FINISH else None
    # a token whose text is held back (half a character, a stop string's prefix) still goes out with its ids and
    # log-probs: they counted as sent, and the stream's token_ids came up short of the answer's
    carries = (job.params.logprobs is not None or job.return_token_ids) and start < end
    if not text and not first and finish is None and not carries:
        return None
    c: dict[str, Any] = {"index": index, "finish_reason": finish}
    if finish is not None:
        c["stop_reason"] = out.stop_reason
    if job.chat:
        c["delta"] = ({"role": "assistant", "content": text} if first else {"content": text})
        c["logprobs"] = chat_logprobs(out, start, end)
    else:
        c["text"] = text
        c["logprobs"] = completion_logprobs(out, start, end)
    c.update(_ids_fields(job, out, job.chat, start, end))
    return {**head, "choices": [c]}
