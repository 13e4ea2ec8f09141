"""Token-level credit: the per-token implicit reward of a DPO policy (Rafailov et al. 2024, "From r to Q*").

DPO's implicit reward of a completion y (Rafailov et al. 2023, eq. 5) is
r(x, y) = beta * log pi(y | x) / pi_ref(y | x), and since log pi(y | x) = sum_t log pi(y_t | x, y_<t)
it splits into per-token terms r_t = beta * (log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)), which the
r-to-Q* paper reads as the token's credit (eq. 8: a DPO policy is a token-level soft Q-function). The terms
sum exactly to the sequence reward the DPO loss uses, so a heat-map over them shows which tokens the
training made more (green) or less (red) likely.

`completion_logps` is the plain-forward scorer the demo, the frontier and `alignlab explain` share: token
log-probs of given completions under a model, float32, via `ops.logprobs.token_logprobs`.
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from alignlab.errors import AlignlabError

__all__ = ["TokenCredit", "completion_logps", "implicit_rewards", "reference_forward", "render_html",
           "render_rich"]


@dataclass
class TokenCredit:
    """Per-token implicit reward of one completion."""

    tokens: list[str]
    """The completion's tokens as text pieces (decoded one by one)."""
    rewards: list[float]
    """beta * (log pi - log pi_ref) of each token."""
    policy_logps: list[float]
    ref_logps: list[float]
    beta: float
    trained: list[bool] | None = None
    """Which tokens training scored (None: all). Others, such as a later user turn inside a multi-turn
    conversation, get reward 0 and are shown uncoloured: the total is the sequence reward the loss trains."""

    @property
    def total(self) -> float:
        """The sequence-level implicit reward beta * log pi(y|x)/pi_ref(y|x) (DPO eq. 5 without log Z)."""
        return float(sum(self.rewards))


def completion_logps(model: Any, prompts: Sequence[list[int]], completions: Sequence[list[int]], *,
                     batch_size: int = 16, pad_id: int = 0) -> list[list[float]]:
    """log p(completion token | prompt, earlier completion tokens) for each pair, float32, no grad.

    Rows are right-padded, so positions count from 0 in every row, as in the sampler's left-padded decode
    (position ids there come from the mask)."""
    import torch

    from alignlab.ops.logprobs import token_logprobs

    if len(prompts) != len(completions):
        raise AlignlabError(f"completion_logps: {len(prompts)} prompts but {len(completions)} completions")
    if any(len(p) == 0 for p in prompts):  # the first completion token would have nothing to be predicted from
        raise AlignlabError("completion_logps: every sequence needs at least one prompt token (e.g. BOS)")
    out: list[list[float]] = []
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                out.extend(_score_batch(model, prompts[start:start + batch_size],
                                        completions[start:start + batch_size], pad_id, device, token_logprobs))
    finally:
        model.train(was_training)
    return out


def _score_batch(model, prompts, completions, pad_id, device, token_logprobs) -> list[list[float]]:
    import torch

    seqs = [list(p) + list(c) for p, c in zip(prompts, completions)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for r, (p, s) in enumerate(zip(prompts, seqs)):
        ids[r, :len(s)] = torch.tensor(s)
        mask[r, :len(s)] = 1
        labels[r, len(p):len(s)] = torch.tensor(s[len(p):])
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    # logits at t predict token t+1: shift the labels here (ops.logprobs leaves shifting to its caller).
    lp = token_logprobs(logits[:, :-1], labels[:, 1:].to(device)).cpu()
    return [lp[r, len(p) - 1:len(s) - 1].tolist() for r, (p, s) in enumerate(zip(prompts, seqs))]


@contextlib.contextmanager
def reference_forward(policy: Any, reference: Any = None) -> Iterator[Any]:
    """The model that computes the reference: `reference` when given, else the LoRA policy with its adapter
    switched off (models.lora.adapter_disabled: the base weights exactly, no second copy); a policy without
    LoRA and no reference is an error (train.reference decides, as for training)."""
    if reference is not None:
        yield reference
        return
    from alignlab.models.lora import adapter_disabled
    from alignlab.train.reference import build_reference

    build_reference(policy, "adapter")  # a clear error when the policy has no adapter to switch off

    with adapter_disabled(policy) as base:
        yield base


def implicit_rewards(policy: Any, tokenizer: Any, prompts: Sequence[list[int]], completions: Sequence[list[int]],
                     *, beta: float, reference: Any = None, batch_size: int = 16,
                     trained: Sequence[list[bool]] | None = None) -> list[TokenCredit]:
    """Per-token implicit reward of each (prompt ids, completion ids) pair; see the module docstring.
    `reference=None` uses the policy's disabled LoRA adapter; `trained`: per completion, which tokens carry
    credit (the others get 0; default all)."""
    if beta <= 0:
        raise AlignlabError(f"explain: beta must be positive, got {beta}")
    pad = tokenizer.pad_token_id if isinstance(tokenizer.pad_token_id, int) else 0
    pol = completion_logps(policy, prompts, completions, batch_size=batch_size, pad_id=pad)
    with reference_forward(policy, reference) as ref_model:
        ref = completion_logps(ref_model, prompts, completions, batch_size=batch_size, pad_id=pad)
    out = []
    for i, (c, lp, lr) in enumerate(zip(completions, pol, ref)):
        pieces = [tokenizer.decode([t]) for t in c]
        mask = list(trained[i]) if trained is not None else None
        rewards = [beta * (a - b) if mask is None or mask[k] else 0.0 for k, (a, b) in enumerate(zip(lp, lr))]
        out.append(TokenCredit(pieces, rewards, lp, lr, beta, mask))
    return out


# ----------------------------------------------------------------------------- rendering


def _scale(credits: Sequence[TokenCredit]) -> float:
    """One colour scale for all rows (the largest |r_t|), so rows can be compared by eye."""
    return max((abs(r) for c in credits for r in c.rewards), default=0.0) or 1.0


def _rgb(value: float, scale: float) -> tuple[int, int, int]:
    """Green for positive credit, red for negative, white for zero."""
    a = max(-1.0, min(1.0, value / scale))
    fade = int(255 * (1 - abs(a)))
    return (fade, 255, fade) if a >= 0 else (255, fade, fade)


def render_rich(credits: Sequence[TokenCredit], prompts: Sequence[str] | None = None, console: Any = None) -> None:
    """Print each completion with every token's background coloured by its implicit reward."""
    from rich.console import Console
    from rich.text import Text

    console = console or Console()
    scale = _scale(credits)
    for i, c in enumerate(credits):
        line = Text()
        if prompts is not None:
            line.append(prompts[i], style="dim")
        for k, (piece, r) in enumerate(zip(c.tokens, c.rewards)):
            if c.trained is not None and not c.trained[k]:
                line.append(piece, style="dim")
                continue
            red, green, blue = _rgb(r, scale)
            line.append(piece, style=f"black on rgb({red},{green},{blue})")
        console.print(line)
        n = len(c.tokens) if c.trained is None else sum(c.trained)
        console.print(f"  implicit reward {c.total:+.3f} (beta {c.beta}, {n} trained tokens)", style="dim")


def render_html(credits: Sequence[TokenCredit], prompts: Sequence[str] | None = None) -> str:
    """An HTML fragment: one paragraph per completion, tokens as spans coloured by their implicit reward
    (hover shows the value). All text is escaped: completions are untrusted model output."""
    scale = _scale(credits)
    rows = []
    for i, c in enumerate(credits):
        spans = []
        for k, (piece, r) in enumerate(zip(c.tokens, c.rewards)):
            if c.trained is not None and not c.trained[k]:
                spans.append(f'<span style="color:#777">{html.escape(piece)}</span>')
                continue
            red, green, blue = _rgb(r, scale)
            spans.append(f'<span title="{r:+.4f}" style="background:rgb({red},{green},{blue})">'
                         f"{html.escape(piece)}</span>")
        head = f'<span style="color:#777">{html.escape(prompts[i])}</span>' if prompts is not None else ""
        rows.append(f'<p style="white-space:pre-wrap;font-family:monospace">{head}{"".join(spans)}'
                    f'<br><small>implicit reward {c.total:+.3f}</small></p>')
    legend = (f"<p><small>green: the trained policy made the token more likely than the reference; red: less. "
              f"Colour scale +/-{scale:.3g}.</small></p>")
    return legend + "".join(rows)
