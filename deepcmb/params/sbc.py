"""Simulation-based calibration of posterior samples: ranks of the truth, interval coverage.

If the truths are drawn from the prior and each posterior is sampled correctly, the rank of the truth
among its posterior samples is uniform on [0, 1] (Talts et al. 2018, arXiv:1804.06788), and the truth
lies inside the central interval of probability ``q`` in a fraction ``q`` of the draws. A posterior
that is too narrow piles the ranks up at 0 and 1 and under-covers; one that is biased tilts the
histogram. The functions here take the posterior samples of ``deepcmb params`` (``chains.h5``) or any
other and are used by ``benchmarks/sbc_params.py``.
"""

from __future__ import annotations

import numpy as np

LEVELS = (0.68, 0.95)
"""Probabilities of the central intervals whose coverage is measured by default."""


def normalized_rank(samples: np.ndarray, truth: np.ndarray | float) -> np.ndarray | float:
    """Rank of the truth among posterior samples, as a fraction in [0, 1].

    Parameters
    ----------
    samples : ndarray, shape (n,) or (n, ndim)
        Posterior samples (e.g. a chain with its walkers flattened).
    truth : float or ndarray, shape (ndim,)
        The true value of each parameter.

    Returns
    -------
    float or ndarray, shape (ndim,)
        ``(#{s < truth} + #{s == truth} / 2) / n`` for each parameter: the posterior CDF at the truth,
        uniform on [0, 1] over truths drawn from the prior when the posterior is right.
    """
    samples = np.asarray(samples, dtype=float)
    scalar = samples.ndim == 1
    s = samples[:, None] if scalar else samples
    t = np.broadcast_to(np.asarray(truth, dtype=float), s.shape[1:])
    if s.shape[0] == 0:
        raise ValueError("normalized_rank: no samples")
    rank = (np.sum(s < t, axis=0) + 0.5 * np.sum(s == t, axis=0)) / s.shape[0]
    return float(rank[0]) if scalar else rank


def in_central_interval(rank: np.ndarray | float, level: float) -> np.ndarray | bool:
    """Whether the truth lies inside the central posterior interval of probability ``level``.

    Parameters
    ----------
    rank : float or ndarray
        Normalised ranks of the truth (:func:`normalized_rank`).
    level : float
        Probability of the interval, in (0, 1): the interval runs from the ``(1 - level) / 2`` to the
        ``(1 + level) / 2`` quantile of the samples.

    Returns
    -------
    bool or ndarray of bool
    """
    if not 0 < level < 1:
        raise ValueError(f"in_central_interval: level must lie in (0, 1), got {level}")
    tail = (1.0 - level) / 2.0
    rank = np.asarray(rank, dtype=float)
    inside = (rank >= tail) & (rank <= 1.0 - tail)
    return bool(inside) if inside.ndim == 0 else inside


def coverage(ranks: np.ndarray, levels: tuple[float, ...] = LEVELS) -> dict[float, dict[str, float]]:
    """Coverage of central intervals over a set of independent draws, with its binomial errors.

    Parameters
    ----------
    ranks : ndarray, shape (k,)
        Normalised ranks of the truth of ``k`` independent draws (one parameter).
    levels : tuple of float
        Interval probabilities.

    Returns
    -------
    dict
        ``level -> {"k", "inside", "rate", "error", "error_rate", "pull"}``: the number of draws, how many
        intervals hold the truth, their fraction, ``error = sqrt(level (1 - level) / k)`` (the scatter of
        the rate of a calibrated posterior: the yardstick of a test), ``error_rate`` the same at the
        measured rate, and ``pull = (rate - level) / error``.
    """
    ranks = np.asarray(ranks, dtype=float).ravel()
    k = ranks.size
    if k == 0:
        raise ValueError("coverage: no draws")
    out = {}
    for q in levels:
        inside = int(np.sum(in_central_interval(ranks, q)))
        rate = inside / k
        error = float(np.sqrt(q * (1 - q) / k))
        out[q] = {"k": k, "inside": inside, "rate": rate, "error": error,
                  "error_rate": float(np.sqrt(rate * (1 - rate) / k)), "pull": (rate - q) / error}
    return out


def draws_needed(level: float, tolerance: float, n_sigma: float = 1.0) -> int:
    """Independent draws for the binomial error of a coverage to reach ``tolerance / n_sigma``.

    Parameters
    ----------
    level : float
        Interval probability (e.g. 0.68).
    tolerance : float
        Deviation of the coverage from ``level`` to be resolved (e.g. 0.05).
    n_sigma : float
        How many binomial errors ``tolerance`` must span (1: the error equals the tolerance; 2: a
        miscoverage of ``tolerance`` is detected at about 2 sigma).

    Returns
    -------
    int
        The smallest ``k`` with ``n_sigma * sqrt(level (1 - level) / k) <= tolerance``.
    """
    if tolerance <= 0 or n_sigma <= 0:
        raise ValueError("draws_needed: tolerance and n_sigma must be positive")
    return int(np.ceil(level * (1 - level) * (n_sigma / tolerance) ** 2 - 1e-9))


def rank_uniformity(ranks: np.ndarray, bins: int = 10) -> dict[str, float]:
    """Chi-square test of the uniformity of normalised ranks.

    Parameters
    ----------
    ranks : ndarray, shape (k,)
        Normalised ranks in [0, 1].
    bins : int
        Equal-width bins of the histogram.

    Returns
    -------
    dict
        ``counts`` (list, per bin), ``chi2`` (against ``k / bins`` per bin), ``dof`` (``bins - 1``) and
        ``p_value`` (chi-square survival function; approximate when the expected count per bin is below
        about 5).
    """
    from scipy.stats import chi2 as chi2_dist

    ranks = np.asarray(ranks, dtype=float).ravel()
    counts, _ = np.histogram(np.clip(ranks, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    expected = ranks.size / bins
    stat = float(np.sum((counts - expected) ** 2 / expected))
    return {"counts": counts.tolist(), "chi2": stat, "dof": bins - 1,
            "p_value": float(chi2_dist.sf(stat, bins - 1))}
