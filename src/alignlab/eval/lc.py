"""Length-controlled win rate (Dubois et al. 2024, "Length-Controlled AlpacaEval", Sec. 3).

A judge that prefers longer answers inflates the raw win rate of a verbose model. The paper fits a
generalised linear model of the judge's preference on the length difference and reads the win rate off
the model at zero length difference ("what would the preference be if both answers had the same length?").
We fit AlpacaEval's `length_controlled_minimal` GLM (the paper's Eq. 2 without the instruction-difficulty
term, which needs per-instruction difficulties fitted across many models on the AlpacaEval set):

    logit P(A beats B on prompt i) = theta + phi * tanh(d_i / sd(d)),    d_i = len(a_i) - len(b_i)

with lengths in characters (as AlpacaEval), sd the population standard deviation of d over the prompts, and
soft outcomes y_i in [0, 1] used as Bernoulli targets (the cross-entropy is the log-likelihood for a soft
judge). The fit is Newton's method on the log-likelihood (= IRLS for a logistic GLM, McCullagh & Nelder
1989, Sec. 4.4) with an optional L2 penalty `l2 * (theta^2 + phi^2) / 2`, which keeps the estimates finite
when every outcome is a win (perfect separation). The LC win rate is sigmoid(theta) (the GLM at d = 0); its
interval is the percentile bootstrap over prompts, refitting the GLM on each resample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from alignlab.errors import AlignlabError

__all__ = ["LCWinRate", "fit_length_glm", "lc_for_comparison", "length_controlled_win_rate", "with_lc_rows"]


@dataclass(frozen=True)
class LCWinRate:
    """Length-controlled win rate of A over B with its bootstrap interval and the fitted GLM."""

    rate: float
    """sigmoid(theta): the GLM's win probability at zero length difference."""
    low: float
    """Lower end of the percentile bootstrap interval."""
    high: float
    """Upper end of the percentile bootstrap interval."""
    n: int
    """Number of decided prompts the GLM was fitted on."""
    theta: float
    """Intercept: A's log-odds of winning at equal length."""
    phi: float
    """Length coefficient: how much the judge's log-odds move with tanh(standardised length difference)."""
    length_sd: float
    """Standard deviation of len(a) - len(b) in characters (0 when every pair has the same difference)."""
    mean_length_diff: float
    """Mean of len(a) - len(b) in characters."""
    confidence: float = 0.95
    """Nominal coverage of [low, high]."""

    def to_dict(self) -> dict:
        """Plain dict for eval.json."""
        return asdict(self)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free form of 1 / (1 + exp(-z))


def fit_length_glm(y: np.ndarray, x: np.ndarray, *, l2: float = 0.0, max_iter: int = 100,
                   tol: float = 1e-10) -> tuple[float, float]:
    """(theta, phi) maximising sum_i [y_i log p_i + (1 - y_i) log(1 - p_i)] - l2 (theta^2 + phi^2) / 2 with
    p_i = sigmoid(theta + phi x_i), by Newton steps (the penalised log-likelihood is concave, so Newton from 0
    converges; a step is halved until the objective does not fall, for safety far from the optimum)."""
    X = np.stack([np.ones_like(x), x], axis=1)
    if not np.any(x != 0):  # no length variation: phi is unidentified, fix it at 0 and fit theta alone
        X = X[:, :1]
    w = np.zeros(X.shape[1])

    def objective(w: np.ndarray) -> float:
        z = X @ w
        # log sigmoid(z) = -logaddexp(0, -z); log(1 - sigmoid(z)) = -logaddexp(0, z)
        return float(-(y * np.logaddexp(0.0, -z) + (1 - y) * np.logaddexp(0.0, z)).sum() - 0.5 * l2 * w @ w)

    f = objective(w)
    for _ in range(max_iter):
        p = _sigmoid(X @ w)
        grad = X.T @ (y - p) - l2 * w
        hess = (X * (p * (1 - p))[:, None]).T @ X + l2 * np.eye(X.shape[1])
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        t = 1.0
        while t > 1e-8 and objective(w + t * step) < f - 1e-12:
            t *= 0.5
        w_new = w + t * step
        f_new = objective(w_new)
        done = np.max(np.abs(w_new - w)) < tol
        w, f = w_new, f_new
        if done:
            break
    return float(w[0]), float(w[1]) if w.size > 1 else 0.0


def _features(len_a: np.ndarray, len_b: np.ndarray) -> tuple[np.ndarray, float]:
    d = len_a - len_b
    sd = float(d.std())
    return (np.tanh(d / sd) if sd > 0 else np.zeros_like(d)), sd


def _check(outcomes, len_a, len_b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = np.asarray(outcomes, dtype=np.float64).reshape(-1)
    a = np.asarray(len_a, dtype=np.float64).reshape(-1)
    b = np.asarray(len_b, dtype=np.float64).reshape(-1)
    if not (y.size == a.size == b.size):
        raise AlignlabError(f"lc win rate: {y.size} outcomes but {a.size} / {b.size} answer lengths")
    if y.size == 0:
        raise AlignlabError("lc win rate: no outcomes")
    bad = np.flatnonzero(~np.isfinite(y) | (y < 0) | (y > 1))
    if bad.size:
        raise AlignlabError(f"lc win rate: outcome {int(bad[0])} is {y[bad[0]]!r}; expected a number in [0, 1]")
    for name, lengths in (("len_a", a), ("len_b", b)):  # one NaN made the length SD NaN: no length control at all
        bad = np.flatnonzero(~np.isfinite(lengths))
        if bad.size:
            raise AlignlabError(f"lc win rate: {name}[{int(bad[0])}] is {lengths[bad[0]]!r}; expected a finite length")
    return y, a, b


def length_controlled_win_rate(outcomes: Sequence[float], len_a: Sequence[float], len_b: Sequence[float], *,
                               l2: float = 1e-3, n_boot: int = 1000, confidence: float = 0.95,
                               seed: int = 0) -> LCWinRate:
    """LC win rate of A over B from per-prompt outcomes in [0, 1] and the two answers' lengths (characters).

    >>> r = length_controlled_win_rate([1, 0, 1, 0], [5, 5, 5, 5], [3, 3, 3, 3], l2=0.0, n_boot=10)
    >>> round(r.rate, 6), r.phi
    (0.5, 0.0)
    """
    if not 0.0 < confidence < 1.0 or n_boot < 1 or l2 < 0:
        raise AlignlabError(f"lc win rate: need 0 < confidence < 1, n_boot >= 1, l2 >= 0 "
                            f"(got {confidence}, {n_boot}, {l2})")
    y, a, b = _check(outcomes, len_a, len_b)
    x, sd = _features(a, b)
    theta, phi = fit_length_glm(y, x, l2=l2)
    rng = np.random.default_rng(seed)
    rates = np.empty(n_boot)
    for k in range(n_boot):
        idx = rng.integers(0, y.size, size=y.size)
        xb, _ = _features(a[idx], b[idx])  # the standardisation is part of the estimator: redo it per resample
        rates[k] = _sigmoid(np.array(fit_length_glm(y[idx], xb, l2=l2)[0]))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(rates, [alpha, 1.0 - alpha])
    return LCWinRate(rate=float(_sigmoid(np.array(theta))), low=float(low), high=float(high), n=int(y.size),
                     theta=theta, phi=phi, length_sd=sd, mean_length_diff=float((a - b).mean()),
                     confidence=confidence)


def lc_for_comparison(outcomes: Sequence[float | None], answers_a: Sequence[str], answers_b: Sequence[str], *,
                      n_boot: int = 1000, seed: int = 0) -> LCWinRate | None:
    """LC win rate over the prompts the judge decided (None outcomes left out, as in the raw rate), with
    answer lengths in characters; None when no prompt was decided."""
    keep = [i for i, o in enumerate(outcomes) if o is not None]
    if not keep:
        return None
    return length_controlled_win_rate([outcomes[i] for i in keep], [len(answers_a[i]) for i in keep],
                                      [len(answers_b[i]) for i in keep], n_boot=n_boot, seed=seed)


def with_lc_rows(results: list[dict]) -> list[dict]:
    """Result records for display (console table, HTML table, plot): after every win_rate record whose details
    carry an `lc_win_rate`, a row for it (metric lc_win_rate) beside the raw rate. eval.json keeps one record
    per (evaluation, model), the LC numbers inside its details."""
    out = []
    for r in results:
        out.append(r)
        lc = (r.get("details") or {}).get("lc_win_rate")
        if r.get("metric") == "win_rate" and lc:
            out.append({**r, "metric": "lc_win_rate", "value": lc["rate"], "low": lc["low"], "high": lc["high"],
                        "n": lc["n"], "details": {}})
    return out
