"""Rows -> token ids with labels, the one place tokenisation rules live (DESIGN §4).

Joint tokenisation: the whole text is tokenised once, and the completion starts at its first token that reaches
past the prompt's text (character offsets; the prompt's text is where the prompt's render and the whole text agree).
A BPE merge across the boundary (prompt "Hello wor" + completion "ld" -> " world") therefore lands in the
completion, and `prompt_ids + completion_ids` is exactly the tokenisation of the whole text. Offsets, not a
comparison with the prompt tokenised alone: a template marker the tokenizer does not know as one token tokenises
otherwise before an answer (a Llama 3 header's "\n\n" is one token alone and two before a word on SmolLM2's
tokenizer; its "<|eot_id|>" merges its ">" with the next header's "<"), and comparing ids trained the "\n\n" and
left the end-of-turn ">" untrained. Tokenizers without offsets (pure-Python ones) or with trimmed ones compare ids.

- Plain text (`chat=False`): texts are tokenised with the tokenizer's special tokens (BOS if it adds
  one) and the completion ends with exactly one EOS (trailing EOS from the text or from a tokenizer that
  appends its own are folded into one).
- Chat (`chat=True`): the chat template renders the prompt with `add_generation_prompt=True` and the
  full conversation without; the text is tokenised without special tokens (the template holds BOS
  when the model wants one). A completion ends at the template's end-of-turn marker: whitespace the
  template writes after it (ChatML's "\\n") is not part of what the model generates, so it is dropped
  from completions and never trained.
- Multi-turn SFT: each assistant message at index >= `num_prompt` is located the same way (the
  conversation before it with a generation prompt, vs. the conversation through it); every other
  token, system and user turns and turn headers included, gets label -100.

Truncation (`max_length` counts prompt + completion): when the longest completion does not fit, or
the prompt is longer than `max_prompt_length`, the prompt is cut to `max_prompt_length` (default
`max_length // 2`) keeping its end (`keep_prompt="end"`, default: the question nearest the answer
survives) or its start; then completions are cut to the room left. Every result records
`prompt_cut` / `completion_cut` (tokens removed); `truncation_stats` sums them over a dataset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from alignlab.data.chat import render
from alignlab.data.formats import common_prefix_len
from alignlab.data.rows import PreferenceRow, PromptRow, SFTRow, UnpairedRow, text_of
from alignlab.errors import AlignlabError

IGNORE = -100
Keep = Literal["end", "start"]


@dataclass
class TokenizedSFT:
    input_ids: list[int]
    labels: list[int]  # == -100 where not trained
    prompt_cut: int = 0  # prompt tokens removed by truncation
    completion_cut: int = 0  # trained-side tokens removed by truncation


@dataclass
class TokenizedPair:
    prompt_ids: list[int]  # common prefix of the joint tokenisations of prompt+chosen and prompt+rejected
    chosen_ids: list[int]
    rejected_ids: list[int]
    prompt_cut: int = 0
    chosen_cut: int = 0
    rejected_cut: int = 0


@dataclass
class TokenizedUnpaired:
    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool
    prompt_cut: int = 0
    completion_cut: int = 0


def encode(tok: Any, text: str, special: bool) -> list[int]:
    return list(tok(text, add_special_tokens=special)["input_ids"])


def _untrimmed_offsets(tok: Any) -> bool:
    """Whether the tokenizer gives character spans that cover every character: a post-processor that trims offsets
    (ByteLevel's or RoBERTa's trim_offsets) leaves whitespace outside every span, so an answer's leading
    "\n    " went to the prompt."""
    if not getattr(tok, "is_fast", False):
        return False
    post = getattr(getattr(tok, "backend_tokenizer", None), "post_processor", None)
    return post is None or b'"trim_offsets":true' not in post.__getstate__()


def _encode(tok: Any, texts: list[str], special: bool) -> tuple[list[list[int]], list[list[tuple[int, int]] | None]]:
    """Each text's ids and, where the tokenizer gives whole spans (`_untrimmed_offsets`), each token's character
    span in the text."""
    if _untrimmed_offsets(tok):
        enc = tok(texts, add_special_tokens=special, return_offsets_mapping=True)
        return [list(x) for x in enc["input_ids"]], [list(map(tuple, o)) for o in enc["offset_mapping"]]
    return [list(x) for x in tok(texts, add_special_tokens=special)["input_ids"]], [None] * len(texts)


def _starts(part_ids: list[int], part: str, ids: list[int], text: str, offsets: list | None, end: bool = False) -> int:
    """The first token of `ids` (the tokenised `text`) that reaches past what `part`, a render of the conversation's
    beginning, has in common with `text` (with end=True: past that common text without its trailing whitespace, so
    a token ending the turn that merges with the next turn's first characters counts as this turn's). Without
    offsets: where `part_ids` and `ids` stop matching."""
    if offsets is None:
        return common_prefix_len(part_ids, ids)
    n = len(os.path.commonprefix([part, text]))
    if end:
        n = len(text[:n].rstrip())
        return next((j for j, (a, _) in enumerate(offsets) if a >= n), len(ids))
    # special tokens a tokenizer adds (BOS) span no characters: they belong to the prompt
    return next((j for j, (a, b) in enumerate(offsets) if b > n and b > a), len(ids))


def _eos(tok: Any) -> int:
    if tok.eos_token_id is None:
        raise AlignlabError("plain-text completions need an EOS token, and the tokenizer has none")
    return tok.eos_token_id


def _trim_tail(tok: Any, ids: list[int], start: int, end: int) -> int:
    """End of a chat completion span without the whitespace the template writes after end-of-turn."""
    while end - start > 1 and not tok.decode([ids[end - 1]]).strip():
        end -= 1
    return end


def _check_prefix(before: str, full: str, origin: Any) -> None:
    """A chat template must render a conversation's beginning (without the generation prompt, which may hold text the
    answer turn does not, as DeepSeek-R1's `<think>`) the same whatever follows it, or no split into context and
    answer exists: Mistral v0.3 moves the system prompt into the last user turn (and drops it when an assistant turn
    ends the conversation), so the split trained the user's text as the answer, silently."""
    if not full.startswith(before):
        at = next((i for i, (a, b) in enumerate(zip(before, full)) if a != b), min(len(before), len(full)))
        raise AlignlabError(
            f"{origin}: the chat template renders the context differently once an answer follows it (they part at "
            f"{before[max(0, at - 30):at + 30]!r} against {full[max(0, at - 30):at + 30]!r}), so the answer cannot be "
            "told from the context; set chat_template to a template that renders earlier turns as they are")


def _joint(tok: Any, prompt: list, completions: list[list], chat: bool,
           origin: Any = None) -> tuple[list[int], list[list[int]]]:
    """Prompt ids shared by every completion, and each completion's ids (see module docstring)."""
    if chat:  # the generation prompt on the prompt side, as the model will see it when generating
        p_text = render(tok, prompt, True, origin)
        texts = [render(tok, prompt + c, False, origin) for c in completions]
        context = render(tok, prompt, False, origin)
        for text in texts:
            _check_prefix(context, text, origin)
    else:
        p_text = text_of(prompt)
        texts = [p_text + text_of(c) for c in completions]
    # One batch call: the fast tokenizer encodes the texts in parallel.
    (p_ids, *fulls), offsets = _encode(tok, [p_text, *texts], not chat)
    k = min(_starts(p_ids, p_text, f, t, o) for f, t, o in zip(fulls, texts, offsets[1:]))
    k = min([k] + [common_prefix_len(fulls[0], f) for f in fulls[1:]])  # the prompt ids all completions share
    outs = []
    for f in fulls:
        if chat:
            outs.append(f[k:_trim_tail(tok, f, k, len(f))])
        else:
            # Exactly one EOS at the end, whether the text or the tokenizer's post-processor brought one.
            eos, comp = _eos(tok), f[k:]
            while comp and comp[-1] == eos:
                comp.pop()
            outs.append(comp + [eos])
    if any(not o for o in outs):
        raise AlignlabError(f"{origin}: a completion tokenises to nothing; does the chat template render "
                            "the final assistant message?")
    return fulls[0][:k], outs


def _truncate(prompt: list, comps: list[list], max_length: int | None, max_prompt_length: int | None,
              keep: Keep) -> tuple[list, list[list], int, list[int]]:
    """(prompt, completions, prompt tokens cut, completion tokens cut each) under the module's rule."""
    if keep not in ("end", "start"):
        raise AlignlabError(f"keep_prompt must be 'end' or 'start', got {keep!r}")
    if max_length is not None and max_prompt_length is not None and max_prompt_length >= max_length:
        raise AlignlabError(f"max_prompt_length ({max_prompt_length}) must be below max_length ({max_length}), "
                            "or no completion token would fit")
    longest = max((len(c) for c in comps), default=0)
    overflow = max_length is not None and len(prompt) + longest > max_length
    too_long = max_prompt_length is not None and len(prompt) > max_prompt_length
    if not (overflow or too_long):
        return prompt, comps, 0, [0] * len(comps)
    budget = max_prompt_length if max_prompt_length is not None else max_length // 2
    cut = max(0, len(prompt) - budget)
    if cut:
        prompt = prompt[cut:] if keep == "end" else prompt[:budget]
    room = len(prompt) + longest if max_length is None else max(max_length - len(prompt), 0)
    return prompt, [c[:room] for c in comps], cut, [max(0, len(c) - room) for c in comps]


def tokenize_pair(row: PreferenceRow, tok: Any, max_length: int | None, max_prompt_length: int | None = None,
                  *, keep_prompt: Keep = "end") -> TokenizedPair:
    prompt, (chosen, rejected) = _joint(tok, row.prompt, [row.chosen, row.rejected], row.chat, row.origin)
    prompt, (chosen, rejected), pcut, (ccut, rcut) = _truncate(
        prompt, [chosen, rejected], max_length, max_prompt_length, keep_prompt)
    return TokenizedPair(prompt, chosen, rejected, pcut, ccut, rcut)


def tokenize_unpaired(row: UnpairedRow, tok: Any, max_length: int | None, max_prompt_length: int | None = None,
                      *, keep_prompt: Keep = "end") -> TokenizedUnpaired:
    prompt, (comp,) = _joint(tok, row.prompt, [row.completion], row.chat, row.origin)
    prompt, (comp,), pcut, (ccut,) = _truncate(prompt, [comp], max_length, max_prompt_length, keep_prompt)
    return TokenizedUnpaired(prompt, comp, row.label, pcut, ccut)


def tokenize_prompt(row: PromptRow, tok: Any, max_length: int | None = None, *, keep_prompt: Keep = "end") -> list[int]:
    """Prompt ids ready for generation (chat: with the generation prompt)."""
    if row.chat:
        ids = encode(tok, render(tok, row.prompt, True, row.origin), special=False)
    else:
        ids = encode(tok, text_of(row.prompt), special=True)
        while ids and ids[-1] == tok.eos_token_id:  # a post-processor's EOS would end generation at once
            ids.pop()
    if max_length is not None and len(ids) > max_length:
        ids = ids[len(ids) - max_length:] if keep_prompt == "end" else ids[:max_length]
    return ids


def _chat_sft_labels(row: SFTRow, tok: Any) -> tuple[list[int], list[int]]:
    """input ids of the whole conversation and labels that keep only the trained assistant messages."""
    msgs, where = row.messages, row.origin
    trained = [i for i in range(row.num_prompt, len(msgs))
               if msgs[i]["role"] == "assistant" and msgs[i].get("train", True)]  # "train": False, a context turn
    # For turn i: the conversation before it with a generation prompt (where its tokens start) and the
    # conversation through it (where they end); all texts go to the tokenizer in one batch.
    texts = [render(tok, msgs, False, where)]
    for i in trained:
        _check_prefix(render(tok, msgs[:i], False, where), texts[0], where)
        texts += [render(tok, msgs[:i], True, where), render(tok, msgs[: i + 1], False, where)]
    (ids, *parts), (offsets, *_) = _encode(tok, texts, False)
    labels = [IGNORE] * len(ids)
    for n, i in enumerate(trained):
        start = _starts(parts[2 * n], texts[2 * n + 1], ids, texts[0], offsets)
        last = i == len(msgs) - 1
        end = len(ids) if last else _starts(parts[2 * n + 1], texts[2 * n + 2], ids, texts[0], offsets, end=True)
        if end <= start and not last:  # rendered otherwise when not the last turn (Qwen3: <think> in the last only)
            end = _turn_end(tok, ids, start, parts[2 * n + 1], msgs[i], where)
        end = _trim_tail(tok, ids, start, end)
        if end <= start:
            raise AlignlabError(f"{where}: assistant message {i} renders to no tokens; does the chat "
                                "template render assistant messages?")
        labels[start:end] = ids[start:end]
    return ids, labels


def _turn_end(tok: Any, ids: list[int], start: int, alone: list[int], message: dict, where: Any) -> int:
    """Where assistant turn i ends in the whole conversation when its render as the last turn is not a prefix of
    it: just past the first end-of-turn marker after `start` (the marker: the last non-blank token of that render),
    provided the turn's text lies before it: its whole text, or what follows its reasoning (Qwen3's template drops
    an earlier turn's `<think>...</think>`, and that turn trains on what the template shows)."""
    marker = alone[_trim_tail(tok, alone, 0, len(alone)) - 1]
    end = next((k + 1 for k in range(start, len(ids)) if ids[k] == marker), None)
    span = tok.decode(ids[start:end]) if end is not None else ""
    content = message["content"].strip()
    if end is None or (content not in span and content.split("</think>")[-1].strip() not in span):
        raise AlignlabError(f"{where}: the chat template renders assistant turns before the last one differently, "
                            "and this one's end could not be found; set chat_template to a training template")
    return end


def tokenize_sft(row: SFTRow, tok: Any, max_length: int | None, max_prompt_length: int | None = None,
                 *, keep_prompt: Keep = "end") -> TokenizedSFT:
    """input_ids and labels (-100 except on trained assistant tokens and, for plain text, EOS)."""
    if row.chat:
        ids, labels = _chat_sft_labels(row, tok)
        if max_length is not None and len(ids) > max_length:  # the template's text after the last trained token
            end = max((i + 1 for i, lab in enumerate(labels) if lab != IGNORE), default=len(ids))  # (its "\n")
            ids, labels = ids[:end], labels[:end]  # trains nothing: it goes before any prompt token does
    else:
        prompt, (comp,) = _joint(tok, row.messages[: row.num_prompt], [row.messages[row.num_prompt:]], False, row.origin)
        ids, labels = prompt + comp, [IGNORE] * len(prompt) + comp
    # Truncation treats everything before the first trained token as the prompt.
    first = next((i for i, lab in enumerate(labels) if lab != IGNORE), len(ids))
    head, (tail,), pcut, (ccut,) = _truncate(ids[:first], [ids[first:]], max_length, max_prompt_length, keep_prompt)
    start = pcut if keep_prompt == "end" else 0
    tail_labels = labels[first:first + len(tail)]
    return TokenizedSFT(head + tail, labels[start:start + len(head)] + tail_labels, pcut, ccut)


def truncation_stats(items: list) -> dict[str, int]:
    """Totals over tokenised examples: rows whose prompt / completion was cut, and tokens removed."""
    def comp_cuts(x: Any) -> list[int]:
        return [x.chosen_cut, x.rejected_cut] if isinstance(x, TokenizedPair) else [x.completion_cut]

    return {
        "rows": len(items),
        "prompt_truncated": sum(1 for x in items if x.prompt_cut),
        "completion_truncated": sum(1 for x in items if any(comp_cuts(x))),
        "prompt_tokens_cut": sum(x.prompt_cut for x in items),
        "completion_tokens_cut": sum(sum(comp_cuts(x)) for x in items),
    }
