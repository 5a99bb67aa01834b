"""Ranks and interval coverage of simulation-based calibration (deepcmb.params.sbc)."""

import numpy as np
import pytest

from deepcmb.params.sbc import coverage, draws_needed, in_central_interval, normalized_rank, rank_uniformity


def _gaussian_draws(k, n_samples, width_factor, seed=0):
    """Truth ~ prior N(0, 1), datum ~ N(truth, 1): the posterior is N(d/2, 1/2); sample it scaled."""
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal(k)
    data = truth + rng.standard_normal(k)
    samples = data / 2 + width_factor * np.sqrt(0.5) * rng.standard_normal((n_samples, k))
    return np.array([normalized_rank(samples[:, i], truth[i]) for i in range(k)])


def test_ranks_of_the_true_posterior_are_uniform_and_cover_at_their_rate():
    ranks = _gaussian_draws(4000, 400, 1.0)
    assert rank_uniformity(ranks, bins=10)["p_value"] > 1e-3
    cov = coverage(ranks)
    for q in (0.68, 0.95):
        assert abs(cov[q]["rate"] - q) < 4 * cov[q]["error"]
        assert cov[q]["k"] == 4000


def test_too_narrow_posteriors_undercover_and_fail_uniformity():
    ranks = _gaussian_draws(4000, 400, 0.5)
    cov = coverage(ranks)
    # a posterior of half the true width: its 68 % interval covers P(|z| < 0.994 / 2) ~ 0.38
    assert cov[0.68]["rate"] < 0.45
    assert cov[0.68]["pull"] < -10
    assert rank_uniformity(ranks)["p_value"] < 1e-6


def test_normalized_rank_counts_and_ties():
    samples = np.array([[0.0, 5.0], [1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    np.testing.assert_allclose(normalized_rank(samples, [1.5, 5.0]), [0.5, 0.5])
    assert normalized_rank(np.arange(10.0), -1.0) == 0.0
    assert normalized_rank(np.arange(10.0), 100.0) == 1.0
    with pytest.raises(ValueError):
        normalized_rank(np.zeros(0), 0.0)


def test_central_interval_matches_quantiles():
    rng = np.random.default_rng(1)
    samples = rng.standard_normal(20001)
    lo, hi = np.quantile(samples, [0.16, 0.84])
    for truth in (lo + 0.01, hi - 0.01, lo - 0.01, hi + 0.01):
        assert in_central_interval(normalized_rank(samples, truth), 0.68) == (lo < truth < hi)
    with pytest.raises(ValueError):
        in_central_interval(0.5, 1.0)


def test_draws_needed():
    # 68 %: sqrt(0.2176 / k) <= 0.05 -> k >= 87.04
    assert draws_needed(0.68, 0.05) == 88
    assert draws_needed(0.68, 0.05, n_sigma=2) == 349
    assert draws_needed(0.95, 0.05) == 19
    k = draws_needed(0.68, 0.085)
    assert np.sqrt(0.68 * 0.32 / k) <= 0.085 < np.sqrt(0.68 * 0.32 / (k - 1))
