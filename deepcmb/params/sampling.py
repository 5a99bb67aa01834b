"""Posterior sampling with emcee, reproducible from a seed.

Walkers start in a small ball around the maximum of the posterior (found from the centre of the prior
box); the stretch-move ensemble then spreads along any degeneracy during burn-in. Both the ball and
emcee's own moves draw from streams derived from ``(seed, key)``, so a chain depends only on its seed,
its key and its inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import emcee
import numpy as np

from .likelihood import posterior_peak
from ..progress import track

log = logging.getLogger(__name__)

BALL = 1e-2
"""Initial spread of the walkers, as a fraction of each prior range."""


@dataclass(frozen=True)
class Chain:
    """Post-burn-in samples of one posterior.

    Attributes
    ----------
    samples : ndarray, shape (steps - burn, walkers, ndim)
    log_prob : ndarray, shape (steps - burn, walkers)
    acceptance : float
        Mean acceptance fraction over walkers.
    autocorr : ndarray, shape (ndim,)
        Integrated autocorrelation time of each parameter, in steps (a rough estimate for short chains).
    """

    samples: np.ndarray
    log_prob: np.ndarray
    acceptance: float
    autocorr: np.ndarray

    def flat(self) -> np.ndarray:
        """Samples with walkers and steps merged, shape ``(n, ndim)``."""
        return self.samples.reshape(-1, self.samples.shape[-1])

    def best(self) -> np.ndarray:
        """The sample of highest posterior, shape ``(ndim,)``."""
        i = np.unravel_index(np.argmax(self.log_prob), self.log_prob.shape)
        return self.samples[i]


def _streams(seed, key):
    ss = np.random.SeedSequence(seed, spawn_key=(key,))
    ball, moves = ss.spawn(2)
    return np.random.default_rng(ball), np.random.RandomState(moves.generate_state(1)[0])


def run_emcee(log_prob: Callable[[np.ndarray], np.ndarray], lower: np.ndarray, upper: np.ndarray, walkers: int,
              steps: int, burn: int, seed: int, key: int, progress: bool = True, desc: str = "emcee") -> Chain:
    """Sample a posterior with emcee's affine-invariant ensemble sampler.

    Parameters
    ----------
    log_prob : callable
        Vectorised log-posterior, ``(..., ndim) -> (...)``; ``-inf`` outside the prior.
    lower, upper : ndarray, shape (ndim,)
        Flat prior bounds (walkers start inside them).
    walkers, steps, burn : int
        Number of walkers, of steps, and of initial steps discarded.
    seed : int
        Root seed.
    key : int
        Identifies the chain (e.g. a hash of its label), so different chains get independent streams.
    progress : bool
        Show a progress bar.
    desc : str
        Label of the progress bar.

    Returns
    -------
    Chain
    """
    lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    ball_rng, move_rng = _streams(seed, key)
    peak = posterior_peak(log_prob, lower, upper)
    width = upper - lower
    start = peak + BALL * width * ball_rng.standard_normal((walkers, lower.size))
    start = np.clip(start, lower + 1e-9 * width, upper - 1e-9 * width)
    sampler = emcee.EnsembleSampler(walkers, lower.size, log_prob, vectorize=True)
    sampler.random_state = move_rng.get_state()
    for _ in track(sampler.sample(start, iterations=steps), desc, "step", total=steps, enabled=progress,
                   leave=False, log=log):
        pass
    samples = sampler.get_chain(discard=burn)
    autocorr = emcee.autocorr.integrated_time(samples, tol=0) if samples.shape[0] > 1 else np.full(lower.size, np.nan)
    return Chain(samples, sampler.get_log_prob(discard=burn), float(np.mean(sampler.acceptance_fraction)),
                 np.asarray(autocorr, dtype=float))


def marginal(values: np.ndarray, truth: float) -> dict[str, float]:
    """Mean, standard deviation, truth and pull of one parameter's samples.

    Parameters
    ----------
    values : ndarray, shape (n,)
    truth : float

    Returns
    -------
    dict
        ``mean``, ``std``, ``truth`` and ``pull = (mean - truth) / std``.
    """
    mean, std = float(np.mean(values)), float(np.std(values))
    return {"mean": mean, "std": std, "truth": float(truth), "pull": (mean - truth) / std if std > 0 else float("nan")}
