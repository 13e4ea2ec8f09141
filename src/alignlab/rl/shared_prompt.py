"""Prompt-shared forwards of a rollout: each prompt runs once for all of its samples in the batch.

A GRPO group is k completions of one prompt. The padded layout (rl/rollout.py) runs the prompt k times, plus
the padding of the longest prompt and the longest completion in every row. Here the rows selected for a
forward are laid out in ONE padding-free row: for each distinct prompt, [prompt | completion 1 | completion
2 | ...], with span attention (models/attention.py): the prompt and the first completion causal, every other
completion over the prompt and itself, never over a sibling (data/layout.py's prefix plan, generalised
from DPO's two branches to k). Position ids restart after the prompt for every completion, as the sampler
counted them; the row's width is rounded up with a pad tail (`pad_to_multiple_of`). The final hidden state that
predicts each completion token is gathered (for the RL losses only the real tokens' states, so the LM head skips
the padding; for distillation the whole [n, T] grid), and the temperature, log-probs and entropy that follow are
the padded path's code on the same numbers
(tests/unit/test_rl_shared_prompt.py: equal log-probs, entropies and gradients).

What it saves is the repeated prompt and the padding: SmolLM2 GSM8K groups of 8 with ~100-token prompts and
~200-token answers run ~1,700 tokens per group instead of 8 x (longest prompt + longest answer).
"""

from __future__ import annotations

from typing import Any

import torch

from alignlab.data.layout import pad_tail_span, round_up, shared_prefix_spans


def shared_prompt_batch(ro: Any, idx: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor]:
    """(forward batch of one padding-free row, gather index [len(idx), T] into it) for rollout rows `idx`.
    Rows whose prompt token ids are equal share one copy of the prompt."""
    P, T = ro.prompt_len, ro.resp_len
    ids, att = ro.input_ids[idx].tolist(), ro.attention_mask[idx].tolist()
    units: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    for j, (row, mask) in enumerate(zip(ids, att)):
        prompt = tuple(t for t, m in zip(row[:P], mask[:P]) if m)
        completion = [t for t, m in zip(row[P:], mask[P:]) if m]
        units.setdefault(prompt, []).append((j, completion))
    flat, pos, spans = [], [], []
    gather = torch.zeros((len(idx), T), dtype=torch.long)
    for prompt, members in units.items():
        start, p = len(flat), len(prompt)
        flat += prompt
        pos += range(p)
        spans += shared_prefix_spans(0, start, p, [len(completion) for _, completion in members])
        for j, completion in members:
            c0, n = len(flat), len(completion)
            flat += completion
            pos += range(p, p + n)
            # token t is predicted by the hidden state before it: the prompt's last token, then its own tokens
            gather[j, :n] = torch.tensor([start + p - 1] + list(range(c0, c0 + n - 1)), dtype=torch.long)[:n]
    tail = round_up(len(flat), ro.pad_to_multiple_of) - len(flat)
    # a span of its own (token 0, positions from 0): no real token sees it, nothing gathers it
    spans += pad_tail_span(0, len(flat), len(flat) + tail)
    flat += [0] * tail
    pos += range(tail)
    dev = ro.input_ids.device
    batch = {"input_ids": torch.tensor([flat], device=dev), "position_ids": torch.tensor([pos], device=dev),
             "attention_mask": None, "attn_spans": tuple(spans)}
    return batch, gather.to(dev)


def shared_prompt_logits(model: Any, ro: Any, idx: torch.Tensor, cells: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [len(idx), T, V] of the rollout's completion tokens through the prompt-shared layout (cells past a
    completion's end hold the logits at its prompt's first position, masked by the caller as padding is); with
    `cells` (bool [len(idx), T]) only those cells' logits [N, V], in row-major order: no LM head on padding."""
    from alignlab.ops.logprobs import lm_head_logits
    from alignlab.train.preference import _unwrap

    if cells is not None:
        return lm_head_logits(_unwrap(model), shared_prompt_hidden(model, ro, idx, cells))
    hidden, gather = _final_hidden(model, ro, idx)
    grid = hidden.index_select(0, gather.reshape(-1)).reshape(*gather.shape, hidden.shape[-1])
    return lm_head_logits(_unwrap(model), grid)


def shared_prompt_hidden(model: Any, ro: Any, idx: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """The final hidden states [N, H] that predict the completion tokens at `cells` (row-major): what
    `shared_prompt_logits` runs the LM head on."""
    hidden, gather = _final_hidden(model, ro, idx)
    return hidden.index_select(0, gather[cells])


def _final_hidden(model: Any, ro: Any, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from alignlab.train.preference import final_hidden

    batch, gather = shared_prompt_batch(ro, idx)
    return final_hidden(model, batch)[0], gather
