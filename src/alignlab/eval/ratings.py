"""Bradley-Terry ratings on the Elo scale from pairwise battles, with bootstrap intervals
(the Chatbot Arena method: Chiang et al. 2024, "Chatbot Arena", Sec. 5).

Model: P(a beats b) = sigmoid(theta_a - theta_b) (Bradley & Terry 1952). A battle is
``(model_a, model_b, outcome)`` (or a Chatbot Arena record ``{"model_a", "model_b", "winner"}``) with ``outcome`` A's score: 1 (or "a"/"model_a") for a win, 0 (or
"b"/"model_b") for a loss, 0.5 (or "tie", "tie (bothbad)") for a tie, or any probability in [0, 1].
A tie counts as half a win for each side, i.e. the likelihood is the fractional-outcome logistic one,
``s log sigmoid(d) + (1 - s) log sigmoid(-d)``. The maximum-likelihood theta is found by Newton's
method on this concave log-likelihood (a small ridge keeps it finite when a model never loses and
fixes the free offset). Ratings are ``base + scale / ln(10) * (theta - theta_anchor)``, so with
``scale = 400`` a 400-point gap means 10:1 odds, as in Elo. The interval is the percentile bootstrap
over battles.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from alignlab.errors import AlignlabError

__all__ = [
    "Rating",
    "Ratings",
    "battle_score",
    "bradley_terry_ratings",
    "expected_score",
    "fit_bradley_terry",
]

Battle = tuple[str, str, "float | str"]
_WORDS = {"a": 1.0, "model_a": 1.0, "b": 0.0, "model_b": 0.0, "tie": 0.5, "tie (bothbad)": 0.5}


def battle_score(outcome: float | str, index: int = 0) -> float:
    """A's score in one battle from a number in [0, 1] or a Chatbot Arena winner word."""
    if isinstance(outcome, str):
        key = outcome.strip().lower()
        if key not in _WORDS:
            raise AlignlabError(
                f"ratings: battle {index}: outcome {outcome!r} is not one of {sorted(_WORDS)}"
            )
        return _WORDS[key]
    score = float(outcome)
    if not 0.0 <= score <= 1.0:
        raise AlignlabError(f"ratings: battle {index}: outcome {outcome!r} is not in [0, 1]")
    return score


def expected_score(rating_a: float, rating_b: float, scale: float = 400.0) -> float:
    """Expected score of A against B under the fitted model: ``1 / (1 + 10^((R_b - R_a) / scale))``."""
    return 1.0 / (1.0 + 10.0 ** ((rating_b - rating_a) / scale))


@dataclass(frozen=True)
class Rating:
    """One model's rating."""

    model: str
    """Model name as it appears in the battles."""
    rating: float
    """Point estimate on the Elo scale."""
    low: float
    """Lower end of the bootstrap interval (equal to ``rating`` when no bootstrap was run)."""
    high: float
    """Upper end of the bootstrap interval."""
    battles: int
    """Battles this model took part in."""
    score: float
    """Its mean score over those battles (wins + ties / 2) / battles."""


@dataclass(frozen=True)
class Ratings:
    """A rating table, best model first."""

    ratings: tuple[Rating, ...]
    """One entry per model, sorted by rating, highest first."""
    scale: float = 400.0
    """Points per factor of 10 in the odds."""
    confidence: float = 0.95
    """Nominal coverage of each [low, high]."""

    def __getitem__(self, model: str) -> Rating:
        for r in self.ratings:
            if r.model == model:
                return r
        raise KeyError(model)

    @property
    def order(self) -> list[str]:
        """Model names, best first."""
        return [r.model for r in self.ratings]

    def expected_score(self, model_a: str, model_b: str) -> float:
        """Predicted score of ``model_a`` against ``model_b``."""
        return expected_score(self[model_a].rating, self[model_b].rating, self.scale)

    def to_dict(self) -> dict:
        """Plain dict for eval.json."""
        return {
            "scale": self.scale,
            "confidence": self.confidence,
            "ratings": [asdict(r) for r in self.ratings],
        }


@dataclass(frozen=True)
class _Encoded:
    models: list[str]
    a: np.ndarray  # [M] index of model_a per battle
    b: np.ndarray  # [M] index of model_b per battle
    s: np.ndarray  # [M] A's score per battle


def _encode(battles: Iterable[Battle | Mapping]) -> _Encoded:
    index: dict[str, int] = {}
    a, b, s = [], [], []
    for k, battle in enumerate(battles):
        if isinstance(battle, Mapping):  # a Chatbot Arena record: model_a, model_b, winner
            missing = [f for f in ("model_a", "model_b", "winner") if f not in battle]
            if missing:
                raise AlignlabError(f"ratings: battle {k} lacks field(s) {missing}")
            battle = (battle["model_a"], battle["model_b"], battle["winner"])
        if len(battle) != 3:
            raise AlignlabError(f"ratings: battle {k} must be (model_a, model_b, outcome), got {battle!r}")
        ma, mb, outcome = str(battle[0]), str(battle[1]), battle[2]
        if ma == mb:
            raise AlignlabError(f"ratings: battle {k} pits {ma!r} against itself")
        a.append(index.setdefault(ma, len(index)))
        b.append(index.setdefault(mb, len(index)))
        s.append(battle_score(outcome, k))
    if len(index) < 2:
        raise AlignlabError("ratings: need battles between at least two models")
    return _Encoded(list(index), np.array(a), np.array(b), np.array(s, dtype=np.float64))


def _log_lik(theta: np.ndarray, a, b, wins, counts, reg: float) -> float:
    d = theta[a] - theta[b]
    # log sigmoid(d) = -logaddexp(0, -d), stable for large |d|.
    ll = -(wins * np.logaddexp(0.0, -d) + (counts - wins) * np.logaddexp(0.0, d)).sum()
    return float(ll - reg * (theta**2).sum())


def _newton(
    n: int, a: np.ndarray, b: np.ndarray, wins: np.ndarray, counts: np.ndarray, reg: float
) -> np.ndarray:
    """Maximise the ridge-penalised BT log-likelihood over aggregated pairs (a, b, A's score sum, count)."""
    theta = np.zeros(n)
    f = _log_lik(theta, a, b, wins, counts, reg)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(theta[a] - theta[b])))
        r = wins - counts * p  # d loglik / d (theta_a - theta_b)
        grad = np.bincount(a, r, n) - np.bincount(b, r, n) - 2.0 * reg * theta
        h = counts * p * (1.0 - p)
        neg_hess = np.diag(np.bincount(a, h, n) + np.bincount(b, h, n) + 2.0 * reg)
        np.add.at(neg_hess, (a, b), -h)
        np.add.at(neg_hess, (b, a), -h)
        step = np.linalg.solve(neg_hess, grad)
        t = 1.0
        while t > 1e-8:  # backtracking keeps each step an ascent step
            f_new = _log_lik(theta + t * step, a, b, wins, counts, reg)
            if f_new >= f - 1e-12:
                break
            t *= 0.5
        theta, f = theta + t * step, f_new
        if np.abs(t * step).max() < 1e-10:
            break
    return theta


def _fit_theta(enc: _Encoded, weights: np.ndarray, reg: float) -> np.ndarray:
    """Aggregate (weighted) battles into unique ordered pairs, then fit theta."""
    n = len(enc.models)
    key = enc.a * n + enc.b
    counts = np.bincount(key, weights, n * n)
    wins = np.bincount(key, weights * enc.s, n * n)
    used = np.flatnonzero(counts > 0)
    return _newton(n, used // n, used % n, wins[used], counts[used], reg)


def _to_elo(theta: np.ndarray, anchor: int | None, base: float, scale: float) -> np.ndarray:
    """NaN entries (models absent from a bootstrap replicate) stay NaN and are left out of the mean."""
    offset = np.nanmean(theta) if anchor is None else theta[anchor]
    return base + scale / math.log(10.0) * (theta - offset)


def _anchor_index(enc: _Encoded, anchor: str | None) -> int | None:
    if anchor is None:
        return None
    if anchor not in enc.models:
        raise AlignlabError(f"ratings: anchor model {anchor!r} is in no battle (models: {enc.models})")
    return enc.models.index(anchor)


def fit_bradley_terry(
    battles: Sequence[Battle | Mapping],
    *,
    anchor: str | None = None,
    base: float = 1000.0,
    scale: float = 400.0,
    reg: float = 1e-6,
) -> dict[str, float]:
    """Maximum-likelihood Bradley-Terry ratings on the Elo scale, ``{model: rating}``.

    ``anchor``: that model gets exactly ``base``; None puts the mean rating at ``base``.
    ``reg``: ridge strength on theta (natural units); tiny, so it only matters for unbeaten models.
    """
    enc = _encode(battles)
    theta = _fit_theta(enc, np.ones(enc.s.shape[0]), reg)
    elo = _to_elo(theta, _anchor_index(enc, anchor), base, scale)
    return dict(zip(enc.models, (float(x) for x in elo)))


def bradley_terry_ratings(
    battles: Sequence[Battle | Mapping],
    *,
    n_boot: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    anchor: str | None = None,
    base: float = 1000.0,
    scale: float = 400.0,
    reg: float = 1e-6,
) -> Ratings:
    """Bradley-Terry ratings with percentile bootstrap intervals over battles (``n_boot`` refits on
    battles resampled with replacement; ``n_boot=0`` skips it). See :func:`fit_bradley_terry`."""
    if not 0.0 < confidence < 1.0:
        raise AlignlabError(f"ratings: confidence must be in (0, 1) (got {confidence})")
    enc = _encode(battles)
    m, n = enc.s.shape[0], len(enc.models)
    anchor_i = _anchor_index(enc, anchor)
    point = _to_elo(_fit_theta(enc, np.ones(m), reg), anchor_i, base, scale)
    low, high = point.copy(), point.copy()
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        boots = np.empty((n_boot, n))
        for k in range(n_boot):
            weights = rng.multinomial(m, np.full(m, 1.0 / m)).astype(np.float64)
            drawn = weights > 0
            present = np.zeros(n, dtype=bool)
            present[enc.a[drawn]] = present[enc.b[drawn]] = True
            # A model in no drawn battle has no rating in this replicate (the ridge would pin it at theta 0, a
            # made-up value that also moved the centring of all the others): it is left out, as Chatbot Arena's
            # bootstrap leaves it out; so is a replicate without the anchor. Without an anchor, the models
            # present are centred where their point ratings are (not at `base`, which is the mean of all).
            theta = np.where(present, _fit_theta(enc, weights, reg), np.nan)
            if anchor_i is None:
                boots[k] = _to_elo(theta, None, base, scale) + (point[present].mean() - base)
            else:
                boots[k] = _to_elo(theta, anchor_i, base, scale) if present[anchor_i] else np.nan
        alpha = (1.0 - confidence) / 2.0
        seen = ~np.isnan(boots).all(axis=0)  # a model absent from every replicate keeps its point as both bounds
        low[seen] = np.nanquantile(boots[:, seen], alpha, axis=0)
        high[seen] = np.nanquantile(boots[:, seen], 1.0 - alpha, axis=0)
    games = np.bincount(enc.a, minlength=n) + np.bincount(enc.b, minlength=n)
    scored = np.bincount(enc.a, enc.s, n) + np.bincount(enc.b, 1.0 - enc.s, n)
    table = [
        Rating(
            enc.models[i],
            float(point[i]),
            float(low[i]),
            float(high[i]),
            int(games[i]),
            float(scored[i] / games[i]),
        )
        for i in range(n)
    ]
    table.sort(key=lambda r: -r.rating)
    return Ratings(tuple(table), scale=scale, confidence=confidence)
