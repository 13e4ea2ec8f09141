"""Medusa decoding heads (Cai et al. 2024, "Medusa: Simple LLM Inference Acceleration Framework with
Multiple Decoding Heads", Sec. 2.1.1 and 2.2.1).

Head k (k = 1..K) reads the base model's final hidden state h_t and predicts the token at t + k + 1 (the
base LM head predicts t + 1). Each head is a residual block h + SiLU(W h + b) (W zero-initialised, so a
fresh head starts as the base head's prediction, Eq. 1) followed by a vocabulary projection: its own copy
of the base LM head (`own_lm_head`, as Medusa-1) or the base's frozen LM head shared by every head (far
fewer trained parameters and optimizer bytes: only the K residual blocks train, which is what fits a CPU).
Training is Medusa-1: the base is frozen and the loss is sum_k lambda^k * CE(head_k(h_t), x_{t+k+1})
(Eq. 2 with lambda_k = lambda^k, 0.8 in the paper) on the base's own generations (self-distillation,
Sec. 2.3.2), so the heads learn what the base would say, not what a dataset says.

`MedusaModel` wraps base + heads for the shared train loop: its state_dict, load_state_dict and
save_pretrained cover the heads only (the base never changes), so checkpoints are small and resume
restores exactly the trained weights. `load_medusa(dir, base)` attaches saved heads to a base model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignlab.errors import AlignlabError

__all__ = ["MEDUSA_CONFIG", "MedusaHeads", "MedusaModel", "load_medusa", "medusa_step", "self_distill_examples"]

MEDUSA_CONFIG = "medusa_config.json"
_WEIGHTS = "model.safetensors"


class ResBlock(nn.Module):
    """h + SiLU(W h + b), W and b zero-initialised so the block starts as the identity (Medusa Eq. 1)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.linear = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + nn.functional.silu(self.linear(h))


class MedusaHeads(nn.Module):
    """K heads over hidden states [..., H]: forward returns logits [K, ..., V]."""

    def __init__(self, hidden: int, vocab: int, num_heads: int, *, layers: int = 1, own_lm_head: bool = False,
                 lm_head: nn.Module | None = None):
        super().__init__()
        if num_heads < 1 or layers < 1:
            raise AlignlabError(f"medusa: num_heads and head_layers must be >= 1 (got {num_heads}, {layers})")
        self.hidden, self.vocab, self.num_heads, self.layers = hidden, vocab, num_heads, layers
        self.own_lm_head = own_lm_head
        self.blocks = nn.ModuleList(nn.Sequential(*[ResBlock(hidden) for _ in range(layers)])
                                    for _ in range(num_heads))
        self.lm_heads = nn.ModuleList(nn.Linear(hidden, vocab, bias=False) for _ in range(num_heads)) \
            if own_lm_head else None
        # The shared head is the base's: kept out of this module's parameters (a plain attribute) so it is
        # neither trained nor saved with the heads.
        self._shared: list[nn.Module] = [lm_head] if lm_head is not None else []

    def init_from(self, lm_head: nn.Module) -> None:
        """Copy the base LM head into every own head (Medusa-1 init) and remember it as the shared head."""
        self._shared = [lm_head]
        if self.lm_heads is not None:
            with torch.no_grad():
                for head in self.lm_heads:
                    head.weight.copy_(lm_head.weight)

    def project(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """Logits of head k (0-based) for hidden states h [..., H]."""
        z = self.blocks[k](h)
        if self.lm_heads is not None:
            return self.lm_heads[k](z)
        if not self._shared:
            raise AlignlabError("medusa: heads without their own LM head need the base's (call init_from)")
        return self._shared[0](z)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.lm_heads is not None or not self._shared:
            return torch.stack([self.project(k, h) for k in range(self.num_heads)])
        # The shared head projects all K blocks' outputs in one call: its V x H weight is read once, not K times
        # (at batch 1 decoding that read is what a head projection costs).
        return self._shared[0](torch.stack([blk(h) for blk in self.blocks]))

    def config(self) -> dict[str, Any]:
        return {"num_heads": self.num_heads, "head_layers": self.layers, "own_lm_head": self.own_lm_head,
                "hidden_size": self.hidden, "vocab_size": self.vocab}


def _dims(base: Any) -> tuple[int, int]:
    head = base.get_output_embeddings()
    return int(head.weight.shape[1]), int(head.weight.shape[0])


class MedusaModel(nn.Module):
    """A frozen base model plus Medusa heads; only the heads train, save and load."""

    def __init__(self, base: Any, heads: MedusaHeads, base_name: str = ""):
        super().__init__()
        self.base = base
        self.heads = heads
        self.base_name = base_name
        for p in base.parameters():
            p.requires_grad_(False)
        if not heads._shared:  # the shared projection is the base's own head, never a copy
            heads._shared = [base.get_output_embeddings()]

    @classmethod
    def create(cls, base: Any, *, num_heads: int, layers: int = 1, own_lm_head: bool = False,
               base_name: str = "") -> MedusaModel:
        hidden, vocab = _dims(base)
        heads = MedusaHeads(hidden, vocab, num_heads, layers=layers, own_lm_head=own_lm_head)
        heads.init_from(base.get_output_embeddings())
        return cls(base, heads.to(next(base.parameters()).dtype), base_name)

    @property
    def device(self) -> torch.device:
        return next(self.heads.parameters()).device

    def train(self, mode: bool = True) -> MedusaModel:
        super().train(mode)
        self.base.eval()  # frozen: dropout and friends stay off so targets and hidden states are the base's own
        return self

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # heads only: the base never changes
        return {f"heads.{k}": v for k, v in self.heads.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        inner = {k.removeprefix("heads."): v for k, v in state.items()}
        return self.heads.load_state_dict(inner, strict=strict)

    def save_pretrained(self, directory: str, state_dict: dict | None = None, **_: Any) -> None:
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in (state_dict or self.state_dict()).items()}
        save_file(tensors, str(out / _WEIGHTS))
        meta = {**self.heads.config(), "base_model": self.base_name, "format": "alignlab-medusa-1"}
        (out / MEDUSA_CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def load_medusa(directory: str | Path, base: Any) -> MedusaHeads:
    """Heads saved by `alignlab medusa` in `directory`, attached to `base` (checked to match its sizes)."""
    from safetensors.torch import load_file

    d = Path(directory)
    if not (d / MEDUSA_CONFIG).is_file():
        raise AlignlabError(f"{d}: no {MEDUSA_CONFIG}; give a directory written by `alignlab medusa`")
    meta = json.loads((d / MEDUSA_CONFIG).read_text(encoding="utf-8"))
    hidden, vocab = _dims(base)
    if (meta.get("hidden_size"), meta.get("vocab_size")) != (hidden, vocab):
        raise AlignlabError(f"{d}/{MEDUSA_CONFIG}: heads are for hidden {meta.get('hidden_size')} / vocab "
                            f"{meta.get('vocab_size')}, the base model has {hidden} / {vocab} "
                            f"(trained on {meta.get('base_model') or 'an unnamed base'})")
    heads = MedusaHeads(hidden, vocab, int(meta["num_heads"]), layers=int(meta["head_layers"]),
                        own_lm_head=bool(meta["own_lm_head"]), lm_head=base.get_output_embeddings())
    state = {k.removeprefix("heads."): v for k, v in load_file(str(d / _WEIGHTS)).items()}
    heads.load_state_dict(state)
    ref = next(base.parameters())
    return heads.to(device=ref.device, dtype=ref.dtype).eval()


def medusa_step(model: MedusaModel, batch: dict, decay: float = 0.8) -> tuple[torch.Tensor, dict[str, Any]]:
    """Medusa-1 loss (Eq. 2): sum_k decay^k * CE(head_k(h_t), labels[t + k + 1]) over positions whose target
    is trained, divided by the batch's trained next-token count (the loop's unit, `batch_weight`).
    Metrics: each head's top-1 accuracy on its targets (`head{k}_accuracy`, k = 1..K), weighed by its own target
    count (a plain mean per micro-batch moved with the batch size, and a batch without targets counted 0)."""
    from alignlab.train.step import Weighted

    with torch.no_grad():
        out = model.base(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                         output_hidden_states=True, logits_to_keep=batch["input_ids"].new_zeros(0), use_cache=False)
        hidden = out.hidden_states[-1]
    labels = batch["labels"]
    units = labels[:, 1:].ne(-100).sum().clamp(min=1)
    total = hidden.new_zeros((), dtype=torch.float32)
    metrics: dict[str, Any] = {}
    for k in range(model.heads.num_heads):
        shift = k + 2  # head k (0-based) predicts the token k + 2 positions ahead of its hidden state
        target = labels[:, shift:]
        mask = target.ne(-100)
        if not mask.any():
            continue
        logits = model.heads.project(k, hidden[:, :-shift][mask]).float()  # trained positions only: [N, V]
        ce = nn.functional.cross_entropy(logits, target[mask], reduction="sum")
        total = total + (decay ** (k + 1)) * ce
        hits = (logits.argmax(-1) == target[mask]).float()
        metrics[f"head{k + 1}_accuracy"] = Weighted(hits.mean().detach(), hits.numel())
    return total / units, metrics


def self_distill_examples(base: Any, tokenizer: Any, prompts: list, sampling: Any, max_length: int) -> list[dict]:
    """Training sequences for the heads from the base's own completions of `prompts` (Medusa Sec. 2.3.2):
    {input_ids: prompt + completion (cut to max_length), labels: -100 on the prompt, the completion after};
    completions too short to give even head 1 a target (fewer than 2 tokens) are dropped."""
    from alignlab.rollout.generate import generate

    res = generate(base, tokenizer, prompts, sampling)
    out = []
    for s in res.samples:
        ids = (s.prompt_ids + s.completion_ids)[:max_length]
        labels = ([-100] * len(s.prompt_ids) + s.completion_ids)[:max_length]
        if sum(x != -100 for x in labels) >= 2:
            out.append({"input_ids": ids, "labels": labels})
    return out
