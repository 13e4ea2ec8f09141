"""Loss registry: name -> LossSpec, and weighted mixes of losses (RPO, MPO).

A spec says what a loss needs so the training loop never compares loss names: whether to run a
reference, whether to hand it summed or per-token averaged sequence log-probs, whether it takes
pairs or labelled single completions, and which optional inputs (batch NLL, running reward mean)
it reads. A new variant is one function, one line in `LOSSES`, one hand-computed test.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from alignlab.errors import AlignlabError
from alignlab.losses import preference as P
from alignlab.losses import unpaired as U

Tensor = torch.Tensor


@dataclass(frozen=True)
class LossSpec:
    """What one loss function needs from the caller."""

    name: str
    """Registry key, the value of the config's `loss`."""
    fn: Callable[..., tuple]
    """The pure loss function (see alignlab.losses.preference / unpaired for the signatures)."""
    needs_reference: bool
    """True: the caller must supply reference log-probs; False: refs may be None (no reference model)."""
    average_logps: bool
    """True: sequence log-probs are per-token averages; False: sums over completion tokens."""
    paired: bool
    """True: (chosen, rejected) pairs; False: single completions with a desirable/undesirable label."""
    default_params: Mapping[str, Any] = field(default_factory=dict)
    """Keyword parameters besides beta, with their defaults (overridable per run)."""
    default_beta: float = 0.1
    """A sensible beta when the config does not set one (scale differs for averaged log-probs)."""
    uses_nll: bool = False
    """Accepts `nll=`, the token-mean NLL of the chosen answers (TRL's `nll_loss`) for exact TRL parity."""
    needs_reward_mean: bool = False
    """Reads `reward_mean=`, a running mean of implicit rewards the caller keeps (see RunningMean)."""
    summary: str = ""
    """One line for `--help` and docs."""
    limits: Mapping[str, tuple[float, float, bool]] = field(default_factory=dict)
    """Allowed range of a parameter: (low, high, high_included); checked when the config is built."""

    @property
    def logp_kind(self) -> str:
        """ "averaged" or "summed": which sequence log-probs to compute (ops.sequence_logprobs(average=...))."""
        return "averaged" if self.average_logps else "summed"

    @property
    def param_names(self) -> frozenset[str]:
        """Keyword parameters the function accepts (besides beta and the caller-supplied inputs)."""
        sig = inspect.signature(self.fn)
        kw = {n for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        return frozenset(kw - {"beta", "nll", "reward_mean"})


def _spec(name, fn, *, ref, avg, paired=True, params=None, beta=0.1, limits=None, **kw) -> LossSpec:
    return LossSpec(name, fn, ref, avg, paired, MappingProxyType(dict(params or {})), beta,
                    limits=MappingProxyType(dict(limits or {})), **kw)


# Label smoothing is a flip probability: above 0.5 the labels are reversed, below 0 the loss is unbounded below;
# robust DPO's unbiased loss divides by 1 - 2 eps (Chowdhury et al. 2024, Eq. 9), so 0.5 itself is out.
_SMOOTHING = {"label_smoothing": (0.0, 0.5, True)}
_INF = float("inf")


LOSSES: dict[str, LossSpec] = {
    s.name: s
    for s in (
        _spec("dpo", P.dpo, ref=True, avg=False, summary="DPO sigmoid loss (Rafailov et al. 2023)"),
        _spec(
            "cdpo", P.cdpo, ref=True, avg=False, params={"label_smoothing": 0.1}, limits=_SMOOTHING,
            summary="conservative DPO",
        ),
        _spec("robust", P.robust, ref=True, avg=False, params={"label_smoothing": 0.1},
              limits={"label_smoothing": (0.0, 0.5, False)}, summary="robust DPO"),
        _spec("ipo", P.ipo, ref=True, avg=True, summary="IPO squared loss on averaged log-ratios"),
        _spec("hinge", P.hinge, ref=True, avg=False, summary="SLiC/RSO hinge loss"),
        _spec("sigmoid_norm", P.sigmoid_norm, ref=True, avg=True, beta=5.0, summary="length-normalised DPO"),
        _spec(
            "simpo",
            P.simpo,
            ref=False,
            avg=True,
            params={"gamma": 0.5, "label_smoothing": 0.0},
            limits=_SMOOTHING,
            beta=2.0,
            summary="SimPO, reference-free with target margin",
        ),
        _spec("orpo", P.orpo, ref=False, avg=True, uses_nll=True, summary="ORPO: NLL + odds-ratio term"),
        _spec("apo_zero", P.apo_zero, ref=True, avg=False, summary="anchored PO, chosen better than model"),
        _spec("apo_down", P.apo_down, ref=True, avg=False, summary="anchored PO, chosen worse than model"),
        _spec(
            "bco_pair",
            P.bco_pair,
            ref=True,
            avg=False,
            needs_reward_mean=True,
            summary="paired BCO with running reward shift",
        ),
        _spec(
            "sft", P.sft, ref=False, avg=True, uses_nll=True, summary="NLL on chosen (mix with dpo for RPO)"
        ),
        _spec(
            "kto",
            U.kto,
            ref=True,
            avg=False,
            paired=False,
            params={"desirable_weight": 1.0, "undesirable_weight": 1.0},
            limits={"desirable_weight": (0.0, _INF, False), "undesirable_weight": (0.0, _INF, False)},
            summary="KTO, unpaired labels",
        ),
    )
}


def get_loss_spec(name: str) -> LossSpec:
    """The spec registered under `name`; an AlignlabError listing the valid names otherwise."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise AlignlabError(f"unknown loss {name!r}; valid losses: {', '.join(sorted(LOSSES))}") from None


@dataclass(frozen=True)
class RunningMean:
    """Running mean of per-batch mean rewards, BCO's delta (TRL's RunningMoments.update, one value per batch).

    Immutable: `update` returns the new state, so the caller owns it (and can checkpoint it).
    count starts at 1e-24 as in TRL, so the first update gives that batch's value.
    """

    mean: float = 0.0
    count: float = 1e-24

    def update(self, value: float) -> RunningMean:
        total = self.count + 1.0
        return RunningMean(self.mean + (value - self.mean) / total, total)


@dataclass(frozen=True)
class PairLogps:
    """Sequence log-probs of one batch of pairs, all [B] (refs None when no reference runs)."""

    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None


@dataclass
class LossOutput:
    """Result of a LossMix: per-example losses, detached rewards, per-term means for logging."""

    losses: Tensor
    """[B] weighted sum of the mixed losses; the training loss is losses.mean()."""
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    terms: dict[str, Tensor]
    """name -> detached mean of that (unweighted) loss; for kto also "kl"."""
    reward_mean: RunningMean | None = None
    """The updated running mean when a loss needs it; store it for the next step."""

    @property
    def loss(self) -> Tensor:
        return self.losses.mean()


@dataclass(frozen=True)
class LossMix:
    """A weighted list of losses, e.g. RPO/MPO: `loss: [dpo, sft]`, `loss_weights: [1.0, 0.2]`.

    Read the capability properties to decide what to compute, then call `compute` (paired) or
    `compute_unpaired` (kto). The loss is the weighted sum, as TRL combines `loss_type` lists; the rewards are the
    first loss's own (sft's only when it is alone), unweighted, as TRL computes them once whatever the weights.
    """

    specs: tuple[LossSpec, ...]
    weights: tuple[float, ...]
    params: tuple[Mapping[str, Any], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    @property
    def needs_reference(self) -> bool:
        return any(s.needs_reference for s in self.specs)

    @property
    def needs_summed(self) -> bool:
        return any(not s.average_logps for s in self.specs)

    @property
    def needs_averaged(self) -> bool:
        return any(s.average_logps for s in self.specs)

    @property
    def logp_kinds(self) -> frozenset[str]:
        """Subset of {"summed", "averaged"}: the sequence log-probs `compute` needs."""
        return frozenset(s.logp_kind for s in self.specs)

    @property
    def paired(self) -> bool:
        return self.specs[0].paired

    @property
    def uses_nll(self) -> bool:
        return any(s.uses_nll for s in self.specs)

    @property
    def needs_reward_mean(self) -> bool:
        return any(s.needs_reward_mean for s in self.specs)

    @property
    def default_beta(self) -> float:
        """The first preference loss's (sft reads no beta: [sft, simpo] took its 0.1 for simpo's 2.0)."""
        return next((s for s in self.specs if s.name != "sft"), self.specs[0]).default_beta

    def compute(
        self,
        summed: PairLogps | None,
        averaged: PairLogps | None,
        *,
        beta: float,
        nll: Tensor | float | None = None,
        reward_mean: RunningMean | None = None,
        batch_reward_mean: float | None = None,
    ) -> LossOutput:
        """Weighted losses for a batch of pairs. Give `summed` if needs_summed, `averaged` if needs_averaged.

        nll: the chosen answers' token-mean NLL (alignlab.losses.sft.nll), used where uses_nll.
        reward_mean: current RunningMean where needs_reward_mean (None starts a fresh one); it is
        updated with this batch before use, as TRL does, and returned in LossOutput.reward_mean.
        batch_reward_mean: this batch's mean implicit reward over every rank (the caller's reduction, so all
        ranks keep one running mean); None computes it from `summed` alone.
        """
        if not self.paired:
            raise AlignlabError(f"loss {self.names} is unpaired; call compute_unpaired")
        if self.needs_reward_mean:
            reward_mean = reward_mean or RunningMean()
            lp = _pick(summed, "summed", "bco_pair")
            batch = batch_reward_mean if batch_reward_mean is not None else P.batch_reward_mean(
                lp.policy_chosen, lp.policy_rejected, lp.ref_chosen, lp.ref_rejected, beta=beta
            )
            reward_mean = reward_mean.update(batch)
        total = chosen = rejected = 0.0
        terms: dict[str, Tensor] = {}
        rewarding = next((s.name for s in self.specs if s.name != "sft"), self.specs[0].name)
        for spec, weight, params in zip(self.specs, self.weights, self.params):
            lp = _pick(averaged if spec.average_logps else summed, spec.logp_kind, spec.name)
            kwargs = dict(params)
            if spec.uses_nll and nll is not None:
                kwargs["nll"] = nll
            if spec.needs_reward_mean:
                kwargs["reward_mean"] = reward_mean.mean
            losses, c, r = spec.fn(
                lp.policy_chosen, lp.policy_rejected, lp.ref_chosen, lp.ref_rejected, beta=beta, **kwargs
            )
            terms[spec.name] = losses.detach().mean()
            total = total + weight * losses
            if spec.name == rewarding:
                chosen, rejected = c, r
        return LossOutput(total, chosen, rejected, terms, reward_mean if self.needs_reward_mean else None)

    def compute_unpaired(
        self,
        policy_logps: Tensor,
        ref_logps: Tensor,
        labels: Tensor,
        policy_kl_logps: Tensor,
        ref_kl_logps: Tensor,
        *,
        beta: float,
    ) -> LossOutput:
        """Weighted loss for labelled single completions (kto); log-probs of the spec's kind, all [B] / [M]."""
        if self.paired:
            raise AlignlabError(f"loss {self.names} is paired; call compute")
        (spec,), (weight,), (params,) = self.specs, self.weights, self.params
        losses, c, r, kl = spec.fn(
            policy_logps, ref_logps, labels, policy_kl_logps, ref_kl_logps, beta=beta, **params
        )
        return LossOutput(weight * losses, c, r, {spec.name: losses.detach().mean(), "kl": kl})


def _pick(lp: PairLogps | None, kind: str, name: str) -> PairLogps:
    if lp is None:
        raise ValueError(f"loss {name!r} needs {kind} sequence log-probs; none were given")
    return lp


def _number(value: Any, key: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AlignlabError(f"{key}: expected a finite number, got {value!r}")
    return float(value)


def combine(
    losses: str | Sequence[str],
    weights: Sequence[float] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> LossMix:
    """Build a LossMix from config values (`loss`, `loss_weights`, per-loss `loss_params`).

    Errors users can cause (unknown loss or parameter, length mismatch, a paired loss mixed with
    an unpaired one, a name repeated) raise AlignlabError naming the config key.
    """
    names = [losses] if isinstance(losses, str) else list(losses)
    if not names:
        raise AlignlabError("loss: at least one loss name is required")
    if len(set(names)) != len(names):
        raise AlignlabError(f"loss: {names} names a loss twice; give it one weight instead")
    specs = tuple(get_loss_spec(n) for n in names)
    weights = [1.0] * len(names) if weights is None else [float(w) for w in weights]
    if len(weights) != len(names):
        raise AlignlabError(f"loss_weights: {len(weights)} weights for {len(names)} losses {names}")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
        # a negative weight turns its loss around (sft at -0.5 lowers the chosen answer's likelihood)
        raise AlignlabError(f"loss_weights: each must be finite and >= 0, and one > 0; got {weights}")
    if len({s.paired for s in specs}) > 1 or (not specs[0].paired and len(specs) > 1):
        raise AlignlabError(f"loss: {names} mixes unpaired and paired losses (or several unpaired ones)")
    params = dict(params or {})
    unknown = set(params) - set(names)
    if unknown:
        raise AlignlabError(f"loss_params: {sorted(unknown)} are not among the chosen losses {names}")
    merged = []
    for spec in specs:
        if not isinstance(params.get(spec.name, {}), Mapping):
            raise AlignlabError(f"loss_params.{spec.name}: expected a mapping of its parameters, got "
                                f"{params[spec.name]!r}")
        # every loss parameter is a number; YAML 1.1 reads 5e-1 as text (the top-level keys are coerced the same way)
        given = {k: _number(v, f"loss_params.{spec.name}.{k}") for k, v in params.get(spec.name, {}).items()}
        bad = set(given) - spec.param_names
        if bad:
            raise AlignlabError(
                f"loss_params.{spec.name}: unknown {sorted(bad)}; valid: {sorted(spec.param_names) or 'none'}"
            )
        values = {**spec.default_params, **given}
        for key, (low, high, high_in) in spec.limits.items():
            v = values[key]
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (low <= v and (v <= high if high_in
                                                                                            else v < high)):
                raise AlignlabError(f"loss_params.{spec.name}.{key}: must be in [{low}, {high}{']' if high_in else ')'}"
                                    f", got {v!r}")
        if spec.name == "kto" and values["desirable_weight"] == values["undesirable_weight"] == 0:
            raise AlignlabError("loss_params.kto: desirable_weight and undesirable_weight are both 0; the loss would "
                                "be 0 and nothing trained")
        merged.append(MappingProxyType(values))
    return LossMix(specs, tuple(weights), tuple(merged))
