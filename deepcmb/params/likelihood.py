"""Gaussian band-power likelihood of the reconstructed lensing spectrum.

Model of the mean auto band power of a method over ``n_test`` maps of one cosmology:

.. math:: \\hat C_b(\\theta) = T_b(\\theta)^2\\, C_b^{\\kappa\\kappa}(\\theta) + N_b(\\theta) ,

with :math:`T_b(\\theta), N_b(\\theta)` from :mod:`deepcmb.params.calibration` (constant, or linear in the
parameters) and :math:`C^{\\kappa\\kappa}_b(\\theta)` from :class:`~deepcmb.params.emulator.KappaEmulator`.
The covariance of the data vector is the per-map band-power covariance of the reference calibration
maps, rescaled to the best-fit power of the test maps and divided by ``n_test``, plus the covariance of
the calibrated model at the best fit (the calibration maps' own noise); its inverse is scaled by the
Hartlap et al. (2007) factor :math:`(n - p - 2)/(n - 1)` for ``n`` reference maps and ``p`` bins,
which removes the bias of the inverse of an estimated covariance. Priors are flat within
``[lower, upper]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import minimize

from ..errors import InputError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from .calibration import Calibration
    from .emulator import KappaEmulator

DERIVED = "Alens_eff"
"""Name of the derived lensing amplitude :func:`derived_amplitude`."""


def hartlap_factor(n_sims: int, n_bins: int) -> float:
    """Debiasing factor of an inverse covariance estimated from ``n_sims`` simulations of ``n_bins`` bins.

    Raises
    ------
    InputError
        If ``n_sims <= n_bins + 2`` (the inverse is then undefined or unbounded).
    """
    if n_sims <= n_bins + 2:
        raise InputError(f"covariance: {n_sims} calibration maps are too few for {n_bins} bins "
                         f"(need more than {n_bins + 2}; narrow params.Lmin/Lmax or simulate more maps)")
    return (n_sims - n_bins - 2) / (n_sims - 1)


def data_covariance(calibration: Calibration, n_test: int, theta: np.ndarray, clkk: np.ndarray) -> np.ndarray:
    """Covariance of the mean auto band powers of ``n_test`` maps, including the calibration error.

    Parameters
    ----------
    calibration : Calibration
    n_test : int
        Number of maps averaged in the data vector.
    theta : ndarray, shape (ndim,)
        Parameters of the test cosmology (e.g. the best fit).
    clkk : ndarray, shape (nb,)
        :math:`C_b^{\\kappa\\kappa}(\\theta)` (sr).

    Returns
    -------
    ndarray, shape (nb, nb)
        In sr². The per-map covariance of the reference calibration maps is rescaled to the expected
        band powers :math:`m = T(\\theta)^2 C + N(\\theta)`, :math:`\\Sigma_{bb'} \\to \\Sigma_{bb'} r_b r_{b'}`
        with :math:`r = m / \\bar C^{\\rm ref}`, as for Gaussian band powers whose covariance goes as
        :math:`\\hat C_b \\hat C_{b'}`; to it is added
        :meth:`~deepcmb.params.calibration.Calibration.model_covariance` at ``theta``.
    """
    theta = np.asarray(theta, dtype=float)
    clkk = np.asarray(clkk, dtype=float)
    r = (calibration.transfer_at(theta) ** 2 * clkk + calibration.noise_at(theta)) / calibration.auto_mean
    return calibration.auto_covariance * np.outer(r, r) / n_test + calibration.model_covariance(theta, clkk)


def posterior_peak(log_prob: Callable[[np.ndarray], float], lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Maximise a log-posterior inside a box, starting from the box centre (Nelder-Mead).

    Parameters
    ----------
    log_prob : callable
        ``(ndim,) -> float``.
    lower, upper : ndarray, shape (ndim,)

    Returns
    -------
    ndarray, shape (ndim,)
    """
    lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    width = upper - lower

    def cost(u: np.ndarray) -> float:
        value = float(log_prob(lower + width * np.clip(u, 0.0, 1.0)))
        return -value if np.isfinite(value) else 1e300

    res = minimize(cost, np.full(lower.size, 0.5), method="Nelder-Mead",
                   options={"xatol": 1e-6, "fatol": 1e-6, "maxiter": 2000 * lower.size})
    return lower + width * np.clip(res.x, 0.0, 1.0)


def build_likelihood(data: np.ndarray, calibration: Calibration, n_test: int, emulator: KappaEmulator,
                     lower: np.ndarray, upper: np.ndarray) -> BandPowerLikelihood:
    """The band-power likelihood of ``n_test`` maps, its covariance evaluated at the posterior peak.

    A first pass with the covariance at the reference cosmology finds the posterior peak; the
    covariance is then re-evaluated there (:func:`data_covariance`), so that a test cosmology with more
    or less lensing power than the reference gets error bars of the right size.

    Parameters
    ----------
    data : ndarray, shape (nb,)
        Mean auto band powers of the test maps (sr).
    calibration : Calibration
    n_test : int
    emulator : KappaEmulator
        Over the same parameters as ``calibration``.
    lower, upper : ndarray, shape (ndim,)
        Flat prior bounds.

    Returns
    -------
    BandPowerLikelihood
    """
    hartlap = hartlap_factor(calibration.n_maps, np.size(data))
    args = (hartlap, emulator, calibration, lower, upper)
    ref = calibration.theta_ref
    first = BandPowerLikelihood(data, data_covariance(calibration, n_test, ref, emulator(ref)), *args)
    peak = posterior_peak(lambda t: first(t), lower, upper)
    return BandPowerLikelihood(data, data_covariance(calibration, n_test, peak, emulator(peak)), *args)


class BandPowerLikelihood:
    """Log-posterior of the sampled parameters given one data vector.

    Parameters
    ----------
    data : ndarray, shape (nb,)
        Mean auto band powers of the test maps (sr).
    covariance : ndarray, shape (nb, nb)
        Their covariance (sr²), see :func:`data_covariance`.
    hartlap : float
        Factor multiplying the inverse covariance (:func:`hartlap_factor`).
    emulator : KappaEmulator
        :math:`C_b^{\\kappa\\kappa}(\\theta)`.
    calibration : Calibration
        :math:`T_b(\\theta)` and :math:`N_b(\\theta)` of the method, over the parameters of ``emulator``.
    lower, upper : ndarray, shape (ndim,)
        Flat prior bounds, in the order of ``emulator.names``.
    """

    def __init__(self, data, covariance, hartlap, emulator, calibration, lower, upper):
        self.data = np.asarray(data, dtype=float)
        self.covariance = np.asarray(covariance, dtype=float)
        self.emulator = emulator
        self.calibration = calibration
        self.lower = np.asarray(lower, dtype=float)
        self.upper = np.asarray(upper, dtype=float)
        try:
            chol = np.linalg.cholesky(self.covariance)
        except np.linalg.LinAlgError:
            raise InputError("covariance: the calibration band powers give a singular covariance "
                             "(too few maps, or a bin without power)") from None
        inv_chol = np.linalg.inv(chol)
        self.precision = hartlap * inv_chol.T @ inv_chol

    def model(self, theta: ArrayLike) -> np.ndarray:
        """Model band powers :math:`T_b(\\theta)^2 C_b^{\\kappa\\kappa}(\\theta) + N_b(\\theta)`, shape ``(..., nb)``.

        ``theta`` has shape ``(..., ndim)``.
        """
        return self.calibration.transfer_at(theta) ** 2 * self.emulator(theta) + self.calibration.noise_at(theta)

    def chi2(self, theta: ArrayLike) -> np.ndarray:
        """:math:`(d - m)^T \\Psi (d - m)` with :math:`\\Psi` the Hartlap-scaled precision, shape ``(...)``."""
        r = self.data - self.model(theta)
        return np.einsum("...i,ij,...j->...", r, self.precision, r)

    def __call__(self, theta):
        """Log-posterior (up to a constant): ``-chi2/2`` inside the prior box, ``-inf`` outside.

        Parameters
        ----------
        theta : array_like, shape (..., ndim)

        Returns
        -------
        ndarray, shape (...)
        """
        theta = np.asarray(theta, dtype=float)
        inside = np.all((theta >= self.lower) & (theta <= self.upper), axis=-1)
        out = np.full(theta.shape[:-1], -np.inf)
        if np.any(inside):
            out[inside] = -0.5 * self.chi2(theta[inside])
        return out

    def model_gradient(self, theta: np.ndarray) -> np.ndarray:
        """:math:`\\partial m_b / \\partial \\ln\\theta_i` at one point, shape ``(ndim, nb)``.

        The response of the theory, :math:`T^2 C\\, \\partial\\ln C/\\partial\\ln\\theta_i`, plus that of
        the calibration, :math:`\\theta_i (2 T C\\, \\partial_i T + \\partial_i N)`.
        """
        theta = np.asarray(theta, dtype=float)
        cal = self.calibration
        t, clkk = cal.transfer_at(theta), self.emulator(theta)
        theory = t**2 * clkk * self.emulator.log_derivatives(theta)
        return theory + theta[:, None] * (2 * t * clkk * cal.transfer_gradient + cal.noise_gradient)

    def fisher_std(self, theta: np.ndarray) -> np.ndarray:
        """Fisher-matrix forecast of the marginal standard deviations at ``theta`` (prior ignored).

        Returns
        -------
        ndarray, shape (ndim,)
            In the parameters' units; ``inf`` along exactly degenerate directions.
        """
        theta = np.asarray(theta, dtype=float)
        grad = self.model_gradient(theta) / theta[:, None]
        fisher = grad @ self.precision @ grad.T
        try:
            cov = np.linalg.inv(fisher)
        except np.linalg.LinAlgError:
            return np.full(theta.size, np.inf)
        return np.sqrt(np.where(np.diag(cov) > 0, np.diag(cov), np.inf))


def amplitude_exponents(likelihood: BandPowerLikelihood, theta0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exponents of the best-constrained amplitude and each parameter's degeneracy with it.

    Near ``theta0`` a change :math:`\\delta\\ln\\theta_i` of a parameter moves the model along
    :math:`g_i = \\partial m / \\partial\\ln\\theta_i` (:meth:`BandPowerLikelihood.model_gradient`: the
    theory's response and, for a calibration over cosmology, the method's own); its projection on the
    amplitude direction :math:`s = \\partial m / \\partial\\ln A_{\\rm lens}` (:math:`T^2 C^{\\kappa\\kappa}`
    when ``Alens`` is not sampled), weighted by the precision :math:`\\Psi`, is
    :math:`p_i = s^T\\Psi g_i / s^T\\Psi s`. The data then constrain
    :math:`A_{\\rm eff} = A_{\\rm lens}\\prod_i (\\theta_i/\\theta_{0,i})^{p_i}`, e.g.
    :math:`A_{\\rm lens} (A_s/A_{s,0})^{p}` with :math:`p \\approx 1` for a response independent of
    cosmology (more where non-linear growth boosts the small-scale power), and :math:`p \\approx 3` for a
    quadratic estimator normalised with fiducial spectra, whose response grows as :math:`A_s`.

    Parameters
    ----------
    likelihood : BandPowerLikelihood
    theta0 : ndarray, shape (ndim,)
        Reference point (the base cosmology).

    Returns
    -------
    exponents : ndarray, shape (ndim,)
        :math:`p_i` (exactly 1 for ``Alens``).
    correlation : ndarray, shape (ndim,)
        :math:`s^T\\Psi g_i / \\sqrt{s^T\\Psi s\\, g_i^T\\Psi g_i}`: 1 when the parameter only
        rescales the amplitude (fully degenerate with ``Alens``), smaller when it also changes the shape.
    """
    theta0 = np.asarray(theta0, dtype=float)
    names = likelihood.emulator.names
    grad = likelihood.model_gradient(theta0)
    if "Alens" in names:
        s = grad[names.index("Alens")]
    else:
        s = likelihood.calibration.transfer_at(theta0) ** 2 * likelihood.emulator(theta0)
    psi = likelihood.precision
    ss = s @ psi @ s
    sg = grad @ psi @ s
    gg = np.einsum("ib,bc,ic->i", grad, psi, grad)
    return sg / ss, sg / np.sqrt(ss * gg)


def derived_amplitude(theta: ArrayLike, names: Sequence[str], theta0: ArrayLike, exponents: ArrayLike,
                      alens_fixed: float = 1.0) -> np.ndarray:
    """:math:`A_{\\rm eff} = A_{\\rm lens}\\prod_{i \\ne A_{\\rm lens}} (\\theta_i/\\theta_{0,i})^{p_i}`.

    Parameters
    ----------
    theta : array_like, shape (..., ndim)
    names : sequence of str
        Parameter names of the components of ``theta``.
    theta0 : array_like, shape (ndim,)
        Reference values.
    exponents : array_like, shape (ndim,)
        From :func:`amplitude_exponents`.
    alens_fixed : float
        ``Alens`` used when it is not among ``names``.

    Returns
    -------
    ndarray, shape (...)
    """
    theta = np.asarray(theta, dtype=float)
    out = np.full(theta.shape[:-1], float(alens_fixed))
    for i, name in enumerate(names):
        if name == "Alens":
            out = out * theta[..., i]
        else:
            out = out * (theta[..., i] / theta0[i]) ** exponents[i]
    return out
