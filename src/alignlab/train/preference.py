"""Preference training step: per-sequence log-probs for any forward path, references, the loss mix.

`sequence_logps(model, batch)` runs the decoder WITHOUT the lm_head on a batch from
`alignlab.data.pairs` (plain, packed or prefix-shared layout), picks the hidden states that predict
completion tokens (`pred_index`) and scores them with `ops.logprobs.chunked_token_logprobs`, so the
float32 [tokens, vocab] logits never exist at once and prompt positions never reach the lm_head.
Sums go to the sequences named by `seq_index` (chosen 0..B-1, rejected B..2B-1).

References (issue 4 item 2) are objects with `logps(policy, batch) -> [2B] summed log-probs | None`:
a separate frozen model, the LoRA base with the adapter disabled, precomputed values carried by the
batch (train/refcache.py), or none. `train.reference.choose_reference_kind` picks one from the config and
the LossMix's `needs_reference` (no loss name is ever compared) and `step_reference` builds it.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from alignlab.errors import AlignlabError
from alignlab.ops.logprobs import lm_head_logprobs

# --------------------------------------------------------------------------- model plumbing


def _unwrap(model: Any) -> Any:
    """The transformers model inside DDP (`.module`) and peft (`get_base_model`) wrappers."""
    while hasattr(model, "module") and not hasattr(model, "get_decoder"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def _is_wrapped(model: Any) -> bool:
    # DDP must see the call: calling a submodule directly would skip its gradient-sync bookkeeping; FSDP
    # gathers the root's weights (embeddings, LM head) only inside the root's own forward.
    from alignlab.train.fsdp import is_sharded

    return (hasattr(model, "module") and not hasattr(model, "get_decoder")) or is_sharded(model)


def _attention_mask(model: Any, batch: dict) -> Any:
    """The batch's mask in the form the model's attention wants (built here for the prefix layout)."""
    if "block_ids" not in batch:
        return batch.get("attention_mask")
    from alignlab.data.pairs import prefix_attention_mask
    from alignlab.models.attention import SPANS
    from alignlab.models.layouts import local_attention

    config = _unwrap(model).config
    if local_attention(config):  # one mask for every layer drops a sliding-window layer's band (models.layouts.pair_layout)
        raise AlignlabError("forward_path: prefix rows carry one mask for all layers, and this model has sliding-window "
                            "(local) attention layers; use forward_path: packed")
    impl = getattr(config, "_attn_implementation", "sdpa") or "sdpa"
    mask = prefix_attention_mask(batch["block_ids"], batch["branch"])
    if impl in ("sdpa", SPANS):  # span attention without a plan is sdpa
        return mask  # transformers hands a 4D mask to sdpa as it is: bool, True = attend
    if impl == "eager":  # eager adds the mask to the scores: 0 where allowed, the dtype's min elsewhere
        dtype = _unwrap(model).get_input_embeddings().weight.dtype
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    raise AlignlabError(
        f"forward_path: prefix needs sdpa or eager attention, the model uses {impl!r}; use forward_path: packed"
    )


def final_hidden(model: Any, batch: dict) -> torch.Tensor:
    """Final (normed) hidden states [R, T, H] of the batch's rows."""
    from alignlab.train.steps import model_inputs

    kwargs = model_inputs(model, batch)
    if "attn_spans" not in kwargs:  # a span plan comes with its own placeholder mask (models/attention.py)
        kwargs["attention_mask"] = _attention_mask(model, batch)
    if _is_wrapped(model):
        # Through the wrapper's forward: no logits at all (empty logits_to_keep), only the last hidden state.
        empty = torch.zeros(0, dtype=torch.long, device=batch["input_ids"].device)
        out = model(**kwargs, logits_to_keep=empty, output_hidden_states=[-1])
        return out.hidden_states[-1]
    return _unwrap(model).get_decoder()(**kwargs).last_hidden_state


def _score(model: Any, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """log p(target) for each row of hidden [N, H], through the one LM-head function (logit_scale, softcap)."""
    return lm_head_logprobs(_unwrap(model), hidden, targets, chunk_size)


def sequence_logps(model: Any, batch: dict, *, chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs [2B] (float32) and the per-token log-probs [N] of a pair batch."""
    hidden = final_hidden(model, batch)
    flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch["pred_index"])
    tok = _score(model, flat, batch["target_ids"], chunk_size)
    n_seq = batch["token_counts"].shape[0]
    sums = torch.zeros(n_seq, dtype=tok.dtype, device=tok.device).index_add(0, batch["seq_index"], tok)
    return sums, tok


# --------------------------------------------------------------------------- references


class NoReference:
    """Reference-free losses (SimPO, ORPO, SFT): nothing runs."""

    kind = "none"

    def logps(self, policy: Any, batch: dict) -> None:
        return None


class ModelReference:
    """A separate frozen model (its own path; it may differ from the policy's start)."""

    kind = "model"

    def __init__(self, model: Any, chunk_size: int = 1024, autocast_dtype: torch.dtype | None = None,
                 lower: bool = True):
        self.model = model.eval().requires_grad_(False)
        self.chunk_size = chunk_size
        self.autocast_dtype = autocast_dtype
        if autocast_dtype is not None and lower:
            from alignlab.train.reference import lower_linear_weights

            lower_linear_weights(self.model, autocast_dtype)

    def logps(self, policy: Any, batch: dict) -> torch.Tensor:
        device = batch["input_ids"].device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        amp = torch.autocast(device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        with torch.no_grad(), amp:
            return sequence_logps(self.model, batch, chunk_size=self.chunk_size)[0]


class AdapterReference:
    """The policy's own base weights with the LoRA adapter switched off: no second copy in memory."""

    kind = "adapter"

    def __init__(self, chunk_size: int = 1024):
        self.chunk_size = chunk_size

    def logps(self, policy: Any, batch: dict) -> torch.Tensor:
        try:
            from alignlab.models.lora import adapter_disabled
        except ImportError:  # the models layer not there yet: peft's own context manager does the same

            def adapter_disabled(m: Any) -> Any:
                return m.disable_adapter()

        peft_model = policy
        while hasattr(peft_model, "module") and not hasattr(peft_model, "disable_adapter"):
            peft_model = peft_model.module
        was_training = peft_model.training
        peft_model.eval()  # no dropout in the reference, as for a frozen model
        try:
            with torch.no_grad(), adapter_disabled(peft_model):
                return sequence_logps(peft_model, batch, chunk_size=self.chunk_size)[0]
        finally:
            peft_model.train(was_training)


class CachedReference:
    """Reference log-probs precomputed once (train/refcache.py) and carried by every batch."""

    kind = "cache"

    def logps(self, policy: Any, batch: dict) -> torch.Tensor:
        if "ref_chosen_logps" not in batch:
            raise AlignlabError("reference: cache, but the batch carries no ref_chosen_logps (was the cache built?)")
        return torch.cat([batch["ref_chosen_logps"], batch["ref_rejected_logps"]]).to(torch.float32)


# --------------------------------------------------------------------------- the step function


def _split(x: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    return x[:b], x[b : 2 * b]


def gather_ranks(x: torch.Tensor) -> torch.Tensor:
    """`x` [n] (detached) concatenated over every rank, rank order; `x` itself in a single process.

    Batch statistics a loss keeps across steps (BCO's reward mean, KTO's reference point z0) are computed
    over the GLOBAL micro-batch this way, as TRL gathers them, so every rank holds the same value and two
    ranks with half the batch each compute what one rank with the whole batch does. Ranks may hold different
    numbers (online DPO splits a step's pairs as they come: 3 and 2): each is padded to the largest for
    all_gather, which needs equal sizes, and cut back (a mismatch failed in gloo and can hang NCCL).
    """
    import torch.distributed as dist

    x = x.detach()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    n = [int(s) for s in sizes]
    padded = torch.zeros((max(n), *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:k] for p, k in zip(parts, n)])


class PreferenceStep:
    """`step_fn(model, batch) -> (loss, metrics)` for paired preference losses.

    `mix` is an `alignlab.losses.LossMix`; summed and/or per-token averaged log-probs are computed
    as its specs ask (averages divide policy AND reference sums by the completion length, as TRL
    does for IPO). Metrics use TRL's names.
    """

    def __init__(self, mix: Any, reference: Any, *, beta: float, chunk_size: int = 1024):
        if not mix.paired:
            raise AlignlabError(f"loss {list(mix.names)} is unpaired; PreferenceStep handles paired losses")
        self.mix, self.reference, self.beta, self.chunk_size = mix, reference, beta, chunk_size
        self.reward_mean = None  # BCO's running mean, kept across steps (and in checkpoints: state_dict)

    def state_dict(self) -> dict[str, Any]:
        """Loss state that changes the numbers of later steps (JSON-safe; saved in trainer_state.json)."""
        rm = self.reward_mean
        return {} if rm is None else {"bco_reward_mean": {"mean": rm.mean, "count": rm.count}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from alignlab.losses.registry import RunningMean

        rm = state.get("bco_reward_mean")
        self.reward_mean = None if rm is None else RunningMean(float(rm["mean"]), float(rm["count"]))

    def logps(self, model: Any, batch: dict) -> tuple[Any, Any, torch.Tensor, torch.Tensor, Any]:
        """(summed PairLogps | None, averaged PairLogps | None, chosen token-mean NLL, policy sums [2B])."""
        from alignlab.losses import PairLogps

        b = int(batch["num_pairs"])
        pol, tok = sequence_logps(model, batch, chunk_size=self.chunk_size)
        ref = self.reference.logps(model, batch)
        counts = batch["token_counts"].to(pol.dtype)
        chosen_tok = batch["seq_index"] < b
        totals = batch.get("step_totals")
        if totals is not None:
            # the token mean over the whole optimizer step's chosen tokens (all micro-batches and ranks): the loop
            # weighs this micro-batch by its pairs (b / units, with DDP's average over ranks), so its share of the
            # step's sum is scaled back by units / b; the gradient then does not depend on grad_accum or ranks
            nll = -(tok * chosen_tok).sum() / max(totals["chosen_tokens"], 1.0) * totals["units"] / b
        else:  # evaluation: the token mean over this micro-batch's chosen tokens on every rank
            per_rank = gather_ranks(counts[:b].sum().reshape(1))
            nll = -(tok * chosen_tok).sum() * per_rank.numel() / per_rank.sum().clamp(min=1.0)

        def pack(p: torch.Tensor, r: torch.Tensor | None) -> Any:
            return PairLogps(*_split(p, b), *(_split(r, b) if r is not None else (None, None)))

        summed = pack(pol, ref) if self.mix.needs_summed else None
        averaged = None
        if self.mix.needs_averaged:
            denom = counts.clamp(min=1.0)
            averaged = pack(pol / denom, ref / denom if ref is not None else None)
        return summed, averaged, nll, pol, ref

    def __call__(self, model: Any, batch: dict) -> tuple[torch.Tensor, dict[str, Any]]:
        b = int(batch["num_pairs"])
        summed, averaged, nll, pol, ref = self.logps(model, batch)
        batch_mean, real = None, True
        if self.mix.needs_reward_mean and summed is not None and summed.ref_chosen is not None:
            from alignlab.losses.preference import batch_reward_mean

            # online DPO's filler micro-batches (a rank or a slot without pairs: weight 0) hold no rows of the
            # batch: their rewards moved BCO's running mean toward the copied pair, and counted as a batch
            filler = bool(batch.get("filler"))
            parts = [gather_ranks(t[:0] if filler else t) for t in (summed.policy_chosen, summed.policy_rejected,
                                                                       summed.ref_chosen, summed.ref_rejected)]
            real = parts[0].numel() > 0
            batch_mean = batch_reward_mean(*parts, beta=self.beta) if real else None
        out = self.mix.compute(summed, averaged, beta=self.beta, nll=nll if self.mix.uses_nll else None,
                               reward_mean=self.reward_mean, batch_reward_mean=batch_mean)
        if out.reward_mean is not None and torch.is_grad_enabled() and real:
            self.reward_mean = out.reward_mean
        c, r = out.chosen_rewards.detach(), out.rejected_rewards.detach()
        if ref is not None:  # TRL's rewards whatever the loss: beta * the summed log-ratio (Rafailov et al. Eq. 5)
            c, r = _split(self.beta * (pol - ref).detach(), b)  # (ipo's and sigmoid_norm's own are per-token means)
        pc, pr = _split(pol.detach(), b)
        metrics = {
            "rewards/chosen": c.mean(),
            "rewards/rejected": r.mean(),
            "rewards/accuracies": (c > r).float().mean(),
            "rewards/margins": (c - r).mean(),
            "logps/chosen": pc.mean(),
            "logps/rejected": pr.mean(),
        }
        if len(out.terms) > 1:
            metrics.update({f"loss/{name}": v for name, v in out.terms.items()})
        return out.loss, metrics


class UnpairedStep:
    """`step_fn` for unpaired losses (KTO) on batches of `data.pairs.unpaired_as_pairs` examples.

    The "chosen" slot holds each example's own completion, the "rejected" slot the mismatched
    completion whose log-ratio estimates KTO's reference point z0 (no gradient flows from it:
    the loss detaches z0). Metrics follow TRL's KTOTrainer names.
    """

    def __init__(self, mix: Any, reference: Any, *, beta: float, chunk_size: int = 1024):
        if mix.paired:
            raise AlignlabError(f"loss {list(mix.names)} is paired; UnpairedStep handles unpaired losses")
        self.mix, self.reference, self.beta, self.chunk_size = mix, reference, beta, chunk_size

    def __call__(self, model: Any, batch: dict) -> tuple[torch.Tensor, dict[str, Any]]:
        b = int(batch["num_pairs"])
        pol, _ = sequence_logps(model, batch, chunk_size=self.chunk_size)
        ref = self.reference.logps(model, batch)
        if ref is None:
            raise AlignlabError(f"loss {list(self.mix.names)} needs a reference; got reference: none")
        if self.mix.needs_averaged:
            denom = batch["token_counts"].to(pol.dtype).clamp(min=1.0)
            pol, ref = pol / denom, ref / denom
        labels = batch["desirable"]
        # z0 from the mismatched pairs of every rank (gather_ranks), so all ranks share one reference point.
        out = self.mix.compute_unpaired(pol[:b], ref[:b], labels, gather_ranks(pol[b:]), gather_ranks(ref[b:]),
                                        beta=self.beta)
        return out.loss, self._metrics(out, pol[:b].detach(), labels)

    @staticmethod
    def _metrics(out: Any, logps: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """TRL's KTO metrics over every rank's examples: a rank's micro-batch may hold no desirable (or no
        undesirable) completion, and the loop all-reduces each metric name, so all ranks must report the
        same names; computed on the gathered examples. Each is weighed by its count of examples (Weighted), so a
        step's (and an evaluation's) value is the mean over its desirable (undesirable) examples whatever the
        micro-batches: weighed as pairs, 1 desirable example in one micro-batch and 2 in another logged 0.0055
        against the step's -0.0416. The margin is not a per-micro-batch value: weighed as pairs over the micro-batches
        holding both labels, it moved with the batch size (and its sign flipped)."""
        from alignlab.train.step import Weighted

        rewards = torch.zeros_like(logps)
        rewards[labels], rewards[~labels] = out.chosen_rewards.to(rewards.dtype), out.rejected_rewards.to(rewards.dtype)
        labels = gather_ranks(labels.to(logps.dtype)).bool()
        rewards, logps = gather_ranks(rewards), gather_ranks(logps)
        metrics: dict[str, Any] = {"kl": out.terms["kl"]}
        n_chosen, n_rejected = int(labels.sum()), int((~labels).sum())
        if n_chosen:
            metrics["rewards/chosen"] = Weighted(rewards[labels].mean(), n_chosen)
            metrics["logps/chosen"] = Weighted(logps[labels].mean(), n_chosen)
        if n_rejected:
            metrics["rewards/rejected"] = Weighted(rewards[~labels].mean(), n_rejected)
            metrics["logps/rejected"] = Weighted(logps[~labels].mean(), n_rejected)
        return metrics  # rewards/margins: the loop's, from the reduced means (train/step.py add_margins)
