"""Response and noise of a reconstruction, calibrated on simulations of a known cosmology.

The mean auto-spectrum of a reconstruction :math:`\\hat\\kappa = T\\kappa + n` (with :math:`n`
uncorrelated with :math:`\\kappa`) is

.. math:: \\langle \\hat C_b \\rangle = T_b^2\\, C_b^{\\kappa\\kappa} + N_b .

For a network (or any method) both :math:`T_b` and :math:`N_b` are measured on calibration maps
whose true :math:`\\kappa` is known: :math:`T_b = \\overline{C^{\\hat\\kappa\\kappa}_b} /
\\overline{C^{\\kappa\\kappa}_b}` and :math:`N_b = \\overline{\\hat C_b} - T_b^2
\\overline{C^{\\kappa\\kappa}_b}`, averages over the calibration maps. Subtracting the maps' own truth
power (rather than the theory) cancels their sample variance, so :math:`N_b` is only as uncertain as
the noise itself: its covariance is that of the per-map :math:`\\hat C_b - T_b^2 C_b^{\\kappa\\kappa}`
divided by the number of maps, and is carried into the likelihood.

A normalised quadratic estimator has :math:`T_b = 1` and :math:`N_b = N^{(0)}_b + N^{(1)}_b + \\dots`:
the analytic :math:`N^{(0)}` plus a Monte-Carlo residual (mostly :math:`N^{(1)}`) measured the same way.
"""

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class Calibration:
    """Transfer, noise and band-power scatter of one method, from the calibration maps.

    Attributes
    ----------
    transfer : ndarray, shape (nb,)
        :math:`T_b` (dimensionless).
    noise : ndarray, shape (nb,)
        :math:`N_b`, the additive noise bias of the auto-spectrum (sr).
    noise_covariance : ndarray, shape (nb, nb)
        Covariance of the estimate of ``noise`` (sr²); zero for an analytic noise.
    auto_mean : ndarray, shape (nb,)
        Mean auto band powers of the calibration maps (sr).
    auto_covariance : ndarray, shape (nb, nb)
        Per-map covariance of the auto band powers (sr²), unbiased (``n_maps - 1`` normalisation).
    n_maps : int
        Number of calibration maps.
    debias : str
        ``'calibrated'`` (noise measured on simulations) or ``'n0'`` (analytic N0 only).
    """

    transfer: np.ndarray
    noise: np.ndarray
    noise_covariance: np.ndarray
    auto_mean: np.ndarray
    auto_covariance: np.ndarray
    n_maps: int
    debias: str


def _check(auto, *others):
    auto = np.asarray(auto, dtype=float)
    if auto.ndim != 2 or auto.shape[0] < 2:
        raise InputError(f"calibration: expected per-map band powers of shape (n >= 2, nb), got {auto.shape}")
    out = [auto]
    for a in others:
        a = np.asarray(a, dtype=float)
        if a.shape != auto.shape:
            raise InputError(f"calibration: band powers of shapes {auto.shape} and {a.shape} differ")
        out.append(a)
    if not all(np.all(np.isfinite(a)) for a in out):
        raise InputError("calibration: non-finite band powers")
    return out


def _covariance(x):
    return np.atleast_2d(np.cov(x, rowvar=False))


def calibrate_transfer(auto, cross, truth):
    """Calibrate transfer and noise of a method on maps with known truth.

    Parameters
    ----------
    auto, cross, truth : ndarray, shape (n, nb)
        Per-map band powers :math:`\\hat C_b`, :math:`C^{\\hat\\kappa\\kappa}_b` and
        :math:`C^{\\kappa\\kappa}_b` of the ``n`` calibration maps (sr).

    Returns
    -------
    Calibration
        ``debias = 'calibrated'``.
    """
    auto, cross, truth = _check(auto, cross, truth)
    transfer = cross.mean(0) / truth.mean(0)
    residual = auto - transfer**2 * truth
    n = auto.shape[0]
    return Calibration(transfer, residual.mean(0), _covariance(residual) / n, auto.mean(0), _covariance(auto), n,
                       "calibrated")


def calibrate_qe(auto, truth, n0):
    """Calibrate a normalised quadratic estimator (unit transfer).

    Parameters
    ----------
    auto, truth : ndarray, shape (n, nb)
        Per-map auto band powers of the estimate and of the true kappa (sr).
    n0 : ndarray, shape (nb,)
        Analytic :math:`N^{(0)}_b` (sr).

    Returns
    -------
    calibrated : Calibration
        ``noise`` = :math:`N^{(0)}` plus the Monte-Carlo residual
        :math:`\\overline{\\hat C_b - C^{\\kappa\\kappa}_b} - N^{(0)}_b` (:math:`N^{(1)}` and any
        normalisation error), i.e. the mean of :math:`\\hat C_b - C^{\\kappa\\kappa}_b`.
    n0_only : Calibration
        ``noise`` = :math:`N^{(0)}` alone, exact (zero ``noise_covariance``); it misses
        :math:`N^{(1)} > 0`, so an amplitude fitted with it is biased high.
    """
    auto, truth = _check(auto, truth)
    n0 = np.asarray(n0, dtype=float)
    if n0.shape != auto.shape[1:]:
        raise InputError(f"calibration: N0 of shape {n0.shape} does not match {auto.shape[1]} bins")
    ones = np.ones_like(n0)
    residual = auto - truth
    n = auto.shape[0]
    mean, cov = auto.mean(0), _covariance(auto)
    calibrated = Calibration(ones, residual.mean(0), _covariance(residual) / n, mean, cov, n, "calibrated")
    n0_only = Calibration(ones, n0, np.zeros_like(cov), mean, cov, n, "n0")
    return calibrated, n0_only
