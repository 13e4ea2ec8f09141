"""Win rate of model A over baseline B from per-prompt judge outcomes, with a bootstrap interval.

An outcome is A's score on one prompt: 1 for a win, 0.5 for a tie, 0 for a loss, or any probability
in [0, 1] that A's answer is better (a soft judge, e.g. a reward-model Bradley-Terry probability or
the average of an LLM judge asked in both orders). The win rate is the mean outcome, so a tie counts
as half a win for each side (AlpacaEval convention). The interval is the percentile bootstrap over
prompts (Efron & Tibshirani 1993, Ch. 13), seeded so reports are reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from alignlab.errors import AlignlabError

__all__ = ["WinRate", "bootstrap_mean_interval", "win_rate"]


@dataclass(frozen=True)
class WinRate:
    """Win rate of A over B with a bootstrap confidence interval."""

    rate: float
    """Mean outcome: (wins + 0.5 * ties) / n for hard outcomes."""
    low: float
    """Lower end of the percentile bootstrap interval."""
    high: float
    """Upper end of the percentile bootstrap interval."""
    n: int
    """Number of prompts (outcomes)."""
    wins: int
    """Outcomes above 0.5."""
    ties: int
    """Outcomes exactly 0.5."""
    losses: int
    """Outcomes below 0.5."""
    confidence: float = 0.95
    """Nominal coverage of [low, high]."""

    def to_dict(self) -> dict:
        """Plain dict for eval.json."""
        return asdict(self)


def _check_outcomes(outcomes: Sequence[float] | np.ndarray) -> np.ndarray:
    """Outcomes as a float64 array, with a clear error for empty, non-finite or out-of-range values."""
    x = np.asarray(outcomes, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise AlignlabError("win_rate: no outcomes")
    bad = np.flatnonzero(~np.isfinite(x) | (x < 0.0) | (x > 1.0))
    if bad.size:
        i = int(bad[0])
        raise AlignlabError(
            f"win_rate: outcome {i} is {x[i]!r}; expected a number in [0, 1] (1 win, 0.5 tie, 0 loss)"
        )
    return x


def bootstrap_mean_interval(
    x: np.ndarray, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``x`` (resampling its elements with replacement)."""
    if not 0.0 < confidence < 1.0:
        raise AlignlabError(f"bootstrap: confidence must be in (0, 1) (got {confidence})")
    if n_boot < 1:
        raise AlignlabError(f"bootstrap: n_boot must be >= 1 (got {n_boot})")
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    means = np.empty(n_boot)
    # Chunk the resamples so memory stays ~8 MB whatever n and n_boot are.
    step = max(1, 1_000_000 // n)
    for start in range(0, n_boot, step):
        stop = min(n_boot, start + step)
        means[start:stop] = x[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def win_rate(
    outcomes: Sequence[float] | np.ndarray, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> WinRate:
    """Win rate of A over B from per-prompt outcomes in [0, 1], with a percentile bootstrap interval.

    >>> r = win_rate([1, 1, 0.5, 0])
    >>> (r.rate, r.wins, r.ties, r.losses)
    (0.625, 2, 1, 1)
    """
    x = _check_outcomes(outcomes)
    low, high = bootstrap_mean_interval(x, n_boot=n_boot, confidence=confidence, seed=seed)
    return WinRate(
        rate=float(x.mean()),
        low=low,
        high=high,
        n=int(x.size),
        wins=int((x > 0.5).sum()),
        ties=int((x == 0.5).sum()),
        losses=int((x < 0.5).sum()),
        confidence=confidence,
    )
