"""Response and noise of a reconstruction, calibrated on simulations of known cosmologies.

The mean auto-spectrum of a reconstruction :math:`\\hat\\kappa = T\\kappa + n` (with :math:`n`
uncorrelated with :math:`\\kappa`) is

.. math:: \\langle \\hat C_b \\rangle = T_b^2\\, C_b^{\\kappa\\kappa} + N_b .

On the maps of one cosmology whose true :math:`\\kappa` is known, :math:`T_b = \\overline{C^{\\hat\\kappa
\\kappa}_b} / \\overline{C^{\\kappa\\kappa}_b}` and :math:`N_b = \\overline{\\hat C_b} - T_b^2
\\overline{C^{\\kappa\\kappa}_b}`, averages over the maps. Subtracting the maps' own truth power (rather
than the theory) cancels their sample variance, so :math:`N_b` is only as uncertain as the noise itself.

Neither is a constant: a quadratic estimator normalised with fiducial spectra has a response
:math:`T \\propto A_s` (the CMB amplitude) and an :math:`N^{(1)} \\propto A_{\\rm lens}`; a network's
transfer and noise depend on the cosmology of its input too. With the maps of ``k`` calibration
cosmologies :math:`\\theta_c` (the first one the reference :math:`\\theta_{\\rm ref}`) both are modelled
as linear in the sampled parameters,

.. math:: T_b(\\theta) = T_b + \\nabla T_b \\cdot (\\theta - \\theta_{\\rm ref}), \\qquad
          N_b(\\theta) = N_b + \\nabla N_b \\cdot (\\theta - \\theta_{\\rm ref}),

fitted per band by weighted least squares to the per-cosmology estimates, weighted by their variance
(per-map scatter over the number of maps). With one calibration cosmology the gradients are zero (a
constant response).

The per-band gradients are then smoothed across bands (:func:`smoothing_projection`): the logarithmic
responses :math:`\\partial_i T_b / T_b` and :math:`\\partial_i N_b / N_b` are replaced by their weighted
least-squares fit with a polynomial of degree :data:`GRADIENT_DEGREE` in the band index. The responses
of the methods are smooth in :math:`L`, while the per-band estimates from a few tens of maps a cosmology
are noisy; and what separates the nearly degenerate parameters (e.g. ``Alens`` from ``As``) is the
difference of the parameters' responses across bands, a quantity quadratic in the gradients whose
estimate the noise of every band biases high (:math:`E|\\hat g|^2 = |g|^2 + {\\rm tr}\\,\\Sigma_g`), so
that posteriors from noisy per-band gradients are too narrow along the degeneracy. Fewer free numbers
per gradient shrink that bias; :math:`\\chi^2` of the smoothing fits is kept to show where the smooth
model fails.

Every fitted quantity is a linear combination of the per-cosmology estimates, and each of those a
mean over maps, so the calibration's statistical error at any :math:`\\theta` follows from per-map
influence functions (:meth:`Calibration.model_covariance`); it includes the correlations between
bands and between :math:`T_b` and :math:`N_b`, and reduces to the covariance of the per-map
:math:`\\hat C_b - T_b^2 C_b^{\\kappa\\kappa}` over the number of maps at the reference.

A normalised quadratic estimator is calibrated the same way (its fitted :math:`T_b` tests the
normalisation; :math:`N_b` is the analytic :math:`N^{(0)}` plus the Monte-Carlo residual, mostly
:math:`N^{(1)}`); :func:`calibrate_n0` gives the textbook alternative :math:`T_b = 1`,
:math:`N_b = N^{(0)}_b`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

GRADIENT_DEGREE = 2
"""Degree of the polynomial in band index fitted to each logarithmic response across bands
(:func:`smoothing_projection`); with at most ``GRADIENT_DEGREE + 1`` bands the gradients are per band."""


@dataclass(frozen=True)
class Calibration:
    """Transfer and noise of one method as linear functions of the sampled parameters.

    Attributes
    ----------
    theta_ref : ndarray, shape (ndim,)
        Sampled parameters of the reference cosmology.
    thetas : ndarray, shape (k, ndim)
        Sampled parameters of the ``k`` calibration cosmologies (``thetas[0] = theta_ref``).
    transfer, noise : ndarray, shape (nb,)
        :math:`T_b` (dimensionless) and :math:`N_b` (sr) at ``theta_ref``.
    transfer_gradient, noise_gradient : ndarray, shape (ndim, nb)
        :math:`\\partial T_b / \\partial \\theta_i` and :math:`\\partial N_b / \\partial\\theta_i`
        (per unit of each parameter); zero with one calibration cosmology or an analytic noise.
    transfer_smoother, noise_smoother : ndarray, shape (nb, 1 + ndim, k)
        Per band, the weighted least-squares operator mapping the ``k`` per-cosmology estimates to the
        intercept and the per-band (unsmoothed) gradients.
    transfer_projection, noise_projection : ndarray, shape (ndim, nb, nb)
        Per parameter, the linear map from the per-band gradients to the smoothed ones
        (:func:`smoothing_projection`; the identity when they are not smoothed).
    transfer_influence, noise_influence : tuple of ndarray, shape (n_c, nb)
        Per calibration cosmology, the centred per-map influence of each map on the cosmology's
        :math:`T_b` and :math:`N_b`: the estimates' errors are the means of these.
    fit_chi2_transfer, fit_chi2_noise : ndarray, shape (nb,)
        :math:`\\chi^2` of the linear fits per band, with ``fit_dof`` degrees of freedom each.
    fit_dof : int
        ``k - 1 - ndim`` for a fitted gradient, 0 otherwise.
    smooth_chi2_transfer, smooth_chi2_noise : ndarray, shape (ndim,)
        :math:`\\chi^2` of the per-band gradients about the smoothed ones (their errors from the
        calibration maps, band correlations ignored), ``smooth_dof`` degrees of freedom each.
    smooth_dof : int
        ``nb - degree - 1`` when the gradients are smoothed (``degree`` of :func:`calibrate`), 0 otherwise.
    auto_mean : ndarray, shape (nb,)
        Mean auto band powers of the reference cosmology's maps (sr).
    auto_covariance : ndarray, shape (nb, nb)
        Per-map covariance of those band powers (sr²), unbiased (``n_maps - 1`` normalisation).
    n_maps : int
        Number of maps of the reference cosmology.
    debias : str
        ``'calibrated'`` (measured on simulations) or ``'n0'`` (unit transfer, analytic N0).
    """

    theta_ref: np.ndarray
    thetas: np.ndarray
    transfer: np.ndarray
    noise: np.ndarray
    transfer_gradient: np.ndarray
    noise_gradient: np.ndarray
    transfer_smoother: np.ndarray
    noise_smoother: np.ndarray
    transfer_projection: np.ndarray
    noise_projection: np.ndarray
    transfer_influence: tuple
    noise_influence: tuple
    fit_chi2_transfer: np.ndarray
    fit_chi2_noise: np.ndarray
    fit_dof: int
    smooth_chi2_transfer: np.ndarray
    smooth_chi2_noise: np.ndarray
    smooth_dof: int
    auto_mean: np.ndarray
    auto_covariance: np.ndarray
    n_maps: int
    debias: str

    @property
    def fitted(self) -> bool:
        """Whether the gradients were measured (more than one calibration cosmology)."""
        return self.thetas.shape[0] > 1

    def transfer_at(self, theta: ArrayLike) -> np.ndarray:
        """:math:`T_b(\\theta)`, shape ``(..., nb)`` for ``theta`` of shape ``(..., ndim)``."""
        return self.transfer + (np.asarray(theta, dtype=float) - self.theta_ref) @ self.transfer_gradient

    def noise_at(self, theta: ArrayLike) -> np.ndarray:
        """:math:`N_b(\\theta)` (sr), shape ``(..., nb)`` for ``theta`` of shape ``(..., ndim)``."""
        return self.noise + (np.asarray(theta, dtype=float) - self.theta_ref) @ self.noise_gradient

    def operator(self, kind: str, x: ArrayLike) -> np.ndarray:
        """Weights of the per-cosmology estimates in :math:`T_b` or :math:`N_b` at an offset from the reference.

        Parameters
        ----------
        kind : {'transfer', 'noise'}
        x : array_like, shape (1 + ndim,)
            Weights of the intercept and of each gradient: ``(1, theta - theta_ref)`` for the value at
            ``theta``, a unit vector for one coefficient.

        Returns
        -------
        ndarray, shape (nb, nb, k)
            ``a[b, b', c]``, the weight of cosmology ``c``'s estimate in band ``b'`` (the gradients mix
            bands through the smoothing).
        """
        smoother = getattr(self, f"{kind}_smoother")
        projection = getattr(self, f"{kind}_projection")
        x = np.asarray(x, dtype=float)
        nb = smoother.shape[0]
        out = np.zeros((nb, nb, smoother.shape[2]))
        out[np.arange(nb), np.arange(nb)] = x[0] * smoother[:, 0]
        for i in range(projection.shape[0]):
            out += x[1 + i] * projection[i][:, :, None] * smoother[None, :, 1 + i]
        return out

    def _combination_covariance(self, transfer_weights, noise_weights):
        """Covariance of a linear combination of the per-cosmology estimates.

        Parameters
        ----------
        transfer_weights, noise_weights : ndarray, shape (nq, nb, k)
            Weights :math:`a_{qbc}, a'_{qbc}` of the quantities
            :math:`q_q = \\sum_{b,c} a_{qbc} T_{c,b} + a'_{qbc} N_{c,b}` (e.g. :meth:`operator`).

        Returns
        -------
        ndarray, shape (nq, nq)
            Their covariance over the noise of the calibration maps (cosmologies independent).
        """
        nq = transfer_weights.shape[0]
        cov = np.zeros((nq, nq))
        for c, (u, v) in enumerate(zip(self.transfer_influence, self.noise_influence)):
            psi = u @ transfer_weights[:, :, c].T + v @ noise_weights[:, :, c].T
            n = psi.shape[0]
            cov += psi.T @ psi / (n * (n - 1))
        return cov

    def model_covariance(self, theta: np.ndarray, clkk: np.ndarray) -> np.ndarray:
        """Covariance of the calibrated model :math:`T_b(\\theta)^2 C_b + N_b(\\theta)` at one point.

        Parameters
        ----------
        theta : ndarray, shape (ndim,)
        clkk : ndarray, shape (nb,)
            :math:`C_b^{\\kappa\\kappa}(\\theta)` (sr).

        Returns
        -------
        ndarray, shape (nb, nb)
            In sr²; zero for an analytic calibration.
        """
        x = np.concatenate([[1.0], np.asarray(theta, dtype=float) - self.theta_ref])
        a_t = (2 * self.transfer_at(theta) * np.asarray(clkk, dtype=float))[:, None, None] * self.operator("transfer", x)
        return self._combination_covariance(a_t, self.operator("noise", x))

    def gradient_errors(self) -> tuple[np.ndarray, np.ndarray]:
        """Standard errors of ``transfer_gradient`` and ``noise_gradient``, each shape ``(ndim, nb)``."""
        ndim, nb = self.transfer_gradient.shape
        zero = np.zeros((nb, nb, self.thetas.shape[0]))
        out = np.zeros((2, ndim, nb))
        for i in range(ndim):
            x = np.eye(1 + ndim)[1 + i]
            out[0, i] = np.diag(self._combination_covariance(self.operator("transfer", x), zero))
            out[1, i] = np.diag(self._combination_covariance(zero, self.operator("noise", x)))
        return np.sqrt(out[0]), np.sqrt(out[1])

    def log_response(self, i: int) -> dict[str, float]:
        """Band-averaged logarithmic response to parameter ``i`` with its standard error.

        Returns
        -------
        dict
            ``transfer``, ``transfer_err``: mean over bands of
            :math:`\\theta_{{\\rm ref},i}\\, \\partial_i T_b / T_b` (:math:`d\\ln T/d\\ln\\theta_i`);
            ``noise``, ``noise_err``: the same for :math:`N_b`. NaN when :math:`\\theta_{{\\rm ref},i} = 0`.
            The errors are those of the gradients (the much smaller error of the denominators is left out).
        """
        nb = self.transfer.size
        zero = np.zeros((nb, nb, self.thetas.shape[0]))
        x = np.eye(1 + self.theta_ref.size)[1 + i]
        t_weight = self.theta_ref[i] / (nb * self.transfer)
        n_weight = self.theta_ref[i] / (nb * self.noise)
        t_cov = self._combination_covariance(t_weight[:, None, None] * self.operator("transfer", x), zero)
        n_cov = self._combination_covariance(zero, n_weight[:, None, None] * self.operator("noise", x))
        out = {"transfer": float(np.sum(t_weight * self.transfer_gradient[i])),
               "transfer_err": float(np.sqrt(t_cov.sum())),
               "noise": float(np.sum(n_weight * self.noise_gradient[i])),
               "noise_err": float(np.sqrt(n_cov.sum()))}
        return {k: (v if self.theta_ref[i] != 0 else float("nan")) for k, v in out.items()}


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


def calibration_design(thetas: ArrayLike, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Design matrix of the linear calibration, its columns scaled to order one.

    Parameters
    ----------
    thetas : array_like, shape (k, ndim)
        Sampled parameters of the calibration cosmologies, the reference first.
    names : sequence of str
        Names of the ``ndim`` parameters (for messages).

    Returns
    -------
    design : ndarray, shape (k, 1 + ndim) or (1, 1)
        Rows :math:`(1, (\\theta_c - \\theta_{\\rm ref}) / s)`; just ``[[1]]`` for one cosmology.
    scale : ndarray, shape (ndim,) or (0,)
        :math:`s`, the largest :math:`|\\theta_c - \\theta_{\\rm ref}|` of each parameter.

    Raises
    ------
    ValueError
        If a parameter takes one value in every calibration cosmology (its gradient is then unknown),
        if there are fewer than ``1 + ndim`` cosmologies, or if their parameter values are collinear.
    """
    thetas = np.atleast_2d(np.asarray(thetas, dtype=float))
    k, ndim = thetas.shape
    if k == 1:
        return np.ones((1, 1)), np.zeros(0)
    offset = thetas - thetas[0]
    scale = np.max(np.abs(offset), axis=0)
    fixed = [f"{n} = {thetas[0, i]:.6g}" for i, n in enumerate(names) if scale[i] == 0]
    if fixed:
        raise ValueError(f"the sampled parameters {', '.join(fixed)} take the same value in every calibration "
                         "cosmology, so the dependence of T_b and N_b on them is unknown: add calibration "
                         "cosmologies that vary them, or stop sampling them")
    if k < 1 + ndim:
        raise ValueError(f"{k} calibration cosmologies cannot fix T_b, N_b and their gradients in the {ndim} "
                         f"sampled parameters ({', '.join(names)}): give at least {1 + ndim}")
    design = np.column_stack([np.ones(k), offset / scale])
    if np.linalg.matrix_rank(design) < 1 + ndim:
        raise ValueError(f"the calibration cosmologies' values of {', '.join(names)} are collinear, so the "
                         "gradients are not separately determined: vary the parameters independently")
    return design, scale


def smoothing_projection(scale: ArrayLike, error: ArrayLike, degree: int = GRADIENT_DEGREE) -> np.ndarray:
    """Linear map from per-band gradients to their fit with a smooth logarithmic response.

    The relative gradient :math:`r_b = g_b / s_b` (:math:`s_b` the fitted :math:`T_b` or :math:`N_b`) is
    fitted by weighted least squares with a polynomial of degree ``degree`` in the band position
    :math:`x_b \\in [-1, 1]` (equally spaced by band index), weights :math:`(s_b / \\sigma_b)^2`; the fit
    is :math:`\\tilde g = {\\rm diag}(s)\\, X (X^T W X)^{-1} X^T W\\, {\\rm diag}(s)^{-1} g`. The scales
    are held fixed (their errors, much smaller than the gradients', are left out).

    Parameters
    ----------
    scale : array_like, shape (nb,)
        :math:`s_b`, nonzero.
    error : array_like, shape (nb,)
        Standard errors :math:`\\sigma_b` of the per-band gradients, positive.
    degree : int
        Polynomial degree; with ``nb <= degree + 1`` bands the identity is returned (nothing to smooth).

    Returns
    -------
    ndarray, shape (nb, nb)
        ``P`` with ``smoothed = P @ gradient``.
    """
    scale = np.asarray(scale, dtype=float)
    error = np.asarray(error, dtype=float)
    nb = scale.size
    if nb <= degree + 1:
        return np.eye(nb)
    x = np.vander(np.linspace(-1.0, 1.0, nb), degree + 1)
    w = (scale / error) ** 2
    hat = x @ np.linalg.solve(x.T @ (w[:, None] * x), x.T * w)
    return scale[:, None] * hat / scale[None, :]


def _wls(design, scale, values, variance, ndim):
    """Per-band weighted least squares of ``values`` (k, nb): smoother (nb, 1 + ndim, k) and chi2 (nb,)."""
    w = 1.0 / variance
    xtwx = np.einsum("cb,ci,cj->bij", w, design, design)
    smoother = np.linalg.solve(xtwx, np.einsum("ci,cb->bic", design, w))
    coef = np.einsum("bjc,cb->bj", smoother, values)
    chi2 = np.sum(w * (values - design @ coef.T) ** 2, axis=0)
    full = np.zeros((values.shape[1], 1 + ndim, values.shape[0]))
    full[:, 0] = smoother[:, 0]
    full[:, 1:smoother.shape[1]] = smoother[:, 1:] / scale[:, None]
    return full, chi2


def calibrate(thetas: ArrayLike, names: Sequence[str], auto: Sequence[np.ndarray], cross: Sequence[np.ndarray],
              truth: Sequence[np.ndarray], degree: int | None = GRADIENT_DEGREE) -> Calibration:
    """Calibrate transfer and noise of a method, and their linear dependence on the sampled parameters.

    Parameters
    ----------
    thetas : array_like, shape (k, ndim)
        Sampled parameters of the ``k`` calibration cosmologies; the first is the reference, whose maps
        also give the band-power covariance (``auto_mean``, ``auto_covariance``).
    names : sequence of str
        Names of the ``ndim`` parameters (for messages).
    auto, cross, truth : sequence of ``k`` ndarray, shape (n_c, nb)
        Per-map band powers :math:`\\hat C_b`, :math:`C^{\\hat\\kappa\\kappa}_b` and
        :math:`C^{\\kappa\\kappa}_b` of the maps of each calibration cosmology (sr).
    degree : int or None
        Degree of the polynomial in band index fitted to each gradient's logarithmic response
        (:func:`smoothing_projection`); None keeps the per-band gradients (for comparison: their noise
        makes the posteriors too narrow along a degeneracy, see the module notes).

    Returns
    -------
    Calibration
        ``debias = 'calibrated'``; with ``k = 1`` the gradients are zero.

    Raises
    ------
    ValueError
        If the cosmologies cannot determine the gradients (see :func:`calibration_design`).
    InputError
        For band powers of wrong shapes or non-finite values.
    """
    thetas = np.atleast_2d(np.asarray(thetas, dtype=float))
    k, ndim = thetas.shape
    design, scale = calibration_design(thetas, names)
    est = np.empty((2, k, np.shape(auto[0])[1]))
    var = np.empty_like(est)
    influence = ([], [])
    for c in range(k):
        a, x, t = _check(auto[c], cross[c], truth[c])
        if a.shape[1] != est.shape[2]:
            raise InputError(f"calibration: cosmologies with {est.shape[2]} and {a.shape[1]} bins")
        n, t_mean = a.shape[0], t.mean(0)
        transfer = x.mean(0) / t_mean
        noise = a.mean(0) - transfer**2 * t_mean
        u = (x - transfer * t) / t_mean
        v = a - transfer**2 * t - noise - 2 * transfer * t_mean * u
        est[:, c] = transfer, noise
        var[:, c] = (u**2).sum(0) / (n * (n - 1)), (v**2).sum(0) / (n * (n - 1))
        influence[0].append(u)
        influence[1].append(v)
    t_smooth, t_chi2 = _wls(design, scale, est[0], var[0], ndim)
    n_smooth, n_chi2 = _wls(design, scale, est[1], var[1], ndim)
    t_coef = np.einsum("bjc,cb->jb", t_smooth, est[0])
    n_coef = np.einsum("bjc,cb->jb", n_smooth, est[1])
    nb = est.shape[2]
    projection = np.tile(np.eye(nb), (2, ndim, 1, 1))
    smooth_chi2 = np.zeros((2, ndim))
    smoothed = degree is not None and k > 1 and nb > degree + 1
    if smoothed:
        for q, (smooth, coef, infl) in enumerate(((t_smooth, t_coef, influence[0]), (n_smooth, n_coef, influence[1]))):
            for i in range(ndim):
                # per-band errors of the raw gradient (diagonal of the influence covariance)
                err = np.sqrt(sum(np.sum((u * smooth[:, 1 + i, c]) ** 2, axis=0) / (u.shape[0] * (u.shape[0] - 1))
                                  for c, u in enumerate(infl)))
                projection[q, i] = smoothing_projection(coef[0], err, degree)
                smooth_chi2[q, i] = np.sum(((coef[1 + i] - projection[q, i] @ coef[1 + i]) / err) ** 2)
                coef[1 + i] = projection[q, i] @ coef[1 + i]
    ref = np.asarray(auto[0], dtype=float)
    return Calibration(thetas[0], thetas, t_coef[0], n_coef[0], t_coef[1:], n_coef[1:], t_smooth, n_smooth,
                       projection[0], projection[1], tuple(influence[0]), tuple(influence[1]), t_chi2, n_chi2,
                       k - design.shape[1], smooth_chi2[0], smooth_chi2[1],
                       nb - degree - 1 if smoothed else 0,
                       ref.mean(0), np.atleast_2d(np.cov(ref, rowvar=False)), ref.shape[0], "calibrated")


def calibrate_n0(auto: np.ndarray, n0: np.ndarray, theta_ref: ArrayLike) -> Calibration:
    """The textbook calibration of a normalised quadratic estimator: unit transfer, analytic N0.

    Parameters
    ----------
    auto : ndarray, shape (n, nb)
        Per-map auto band powers of the reference cosmology's maps (sr), for the band-power covariance.
    n0 : ndarray, shape (nb,)
        Analytic :math:`N^{(0)}_b` (sr).
    theta_ref : array_like, shape (ndim,)
        Sampled parameters of the reference cosmology.

    Returns
    -------
    Calibration
        ``debias = 'n0'``, exact (no calibration error) and independent of the parameters. It misses
        :math:`N^{(1)} > 0` and the response's dependence on the CMB amplitude, so an amplitude fitted
        with it is biased.
    """
    (auto,) = _check(auto)
    n0 = np.asarray(n0, dtype=float)
    if n0.shape != auto.shape[1:]:
        raise InputError(f"calibration: N0 of shape {n0.shape} does not match {auto.shape[1]} bins")
    theta_ref = np.asarray(theta_ref, dtype=float)
    nb, ndim = n0.size, theta_ref.size
    zero = np.zeros((ndim, nb))
    smoother = np.zeros((nb, 1 + ndim, 0))
    identity = np.tile(np.eye(nb), (ndim, 1, 1))
    return Calibration(theta_ref, theta_ref[None], np.ones(nb), n0, zero, zero, smoother, smoother, identity,
                       identity, (), (), np.zeros(nb), np.zeros(nb), 0, np.zeros(ndim), np.zeros(ndim), 0,
                       auto.mean(0), np.atleast_2d(np.cov(auto, rowvar=False)), auto.shape[0], "n0")
