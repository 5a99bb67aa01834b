"""Inverse-variance (:math:`C^{-1}`) filtering of masked polarization maps with inhomogeneous noise.

The diagonal filters of :mod:`deepcmb.qe.filtering` assume a periodic map with white noise. With a mask
and a noise map the optimal input of a quadratic estimator is the inverse-variance filtered sky
:math:`\\bar X = C^{-1} x_{\\rm WF}`, with :math:`x = (E, B)` the Wiener-filtered (lensed) sky solving

.. math:: \\left(C^{-1} + \\mathcal{R}^\\dagger \\mathcal{B}\\, N^{-1} \\mathcal{B}\\, \\mathcal{R}\\right) x
          = \\mathcal{R}^\\dagger \\mathcal{B}\\, N^{-1} d,

where :math:`d = (Q, U)` are the observed maps (µK), :math:`\\mathcal{R}` the spin-2 rotation
:math:`Q + iU = (E + iB)\\, e^{2i\\varphi_\\mathbf{l}}`, :math:`\\mathcal{B}` the beam, :math:`C` the lensed
EE and BB spectra (the prior of :math:`x`, modes :math:`0 < l \\le l_{\\max}`) and
:math:`N^{-1}(\\mathbf{x}) = M(\\mathbf{x})\\, \\mathrm{ivar}_P(\\mathbf{x})` the pixel-diagonal inverse noise
(1/µK²: the mask times the inverse noise variance of each of Q and U, zero where unobserved). All
operators act on real pixel maps with the pixel-sum inner product, in which :math:`C^{-1}` is the Fourier
kernel :math:`\\Delta^2 / C_l` (:math:`\\Delta` the pixel side in radians), so the system is symmetric
positive definite and is solved by preconditioned conjugate gradients
(:func:`deepcmb.iterative.wiener.conjugate_gradient`) with the isotropic preconditioner

.. math:: \\left(\\Delta^2 / C_l + B_l^2\\, \\bar n^{-1}\\right)^{-1}, \\qquad
          \\bar n^{-1} = \\text{mean of } N^{-1} \\text{ over the observed pixels}.

The filtered fields in the Fourier convention of :mod:`deepcmb.geometry` are
:math:`\\bar X(\\mathbf{l}) = x(\\mathbf{l}) / C^{XX}_l` for :math:`l_{\\min} \\le l \\le l_{\\max}`. For a
mask of ones and a constant inverse variance :math:`1/\\sigma^2` the system is diagonal and
:math:`\\bar X = X_{\\rm obs} / (B_l\\, C^{XX}_{\\rm tot})`: the diagonal filter of
:mod:`deepcmb.qe.filtering`, with :math:`N_l = \\sigma^2 \\Delta^2`.

Non-periodic patches are embedded in a larger periodic grid whose extra pixels are unobserved
(:math:`N^{-1} = 0`), so the Fourier transforms do not wrap structures across the patch edges.

References
----------
Smith, Zahn & Doré (2007), PRD 76, 043510 (C^-1 filtering by conjugate gradients); Planck 2015 XV
(A&A 594, A15) and Planck 2018 VIII (A&A 641, A8), Sec. 2 (the filter of plancklens); Carron & Lewis
(2017), PRD 96, 063510 (flat-sky filters with masks and inhomogeneous noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ..flatsky import gaussian_beam
from ..geometry import interp_spectrum
from ..iterative.operators import pixel_inner
from ..iterative.wiener import conjugate_gradient
from .engine import to_fourier, to_map

if TYPE_CHECKING:
    from ..geometry import FlatSkyGeometry


@dataclass(frozen=True)
class FilteredPol:
    """Outcome of :meth:`CinvFilter.filter` for one map.

    Attributes
    ----------
    E, B : ndarray, complex, shape ``geom.fourier_shape()``
        Inverse-variance filtered :math:`\\bar E, \\bar B` (µK⁻¹ sr⁻¹ times the geometry's Fourier
        convention), zero outside ``lmin <= l <= lmax``.
    sky : ndarray, shape (2, ny, nx)
        The solution :math:`x`: Wiener-filtered E and B maps (µK) on ``0 < l <= lmax``.
    iterations : int
        Conjugate-gradient iterations.
    residual : float
        Final relative residual of the system.
    """

    E: np.ndarray
    B: np.ndarray
    sky: np.ndarray
    iterations: int
    residual: float


class CinvFilter:
    """The :math:`C^{-1}` filter of Q/U maps on one periodic grid (module docstring for the equations).

    Parameters
    ----------
    geom : FlatSkyGeometry
        The periodic grid the system is solved on (a non-periodic patch embedded in a larger grid).
    lensed_cls : ndarray, shape (4, lmax_cl + 1)
        Lensed ``TT, EE, BB, TE`` (µK²): EE and BB are the prior of the sky.
    beam_fwhm_arcmin : float
        Gaussian beam FWHM of the maps, arcmin.
    lmin, lmax : float
        The filtered fields keep ``lmin <= l <= lmax``; the sky is solved for on ``0 < l <= lmax``.
    tol : float
        Relative residual at which the conjugate gradients stop.
    maxiter : int
        Iterations at most (a :class:`~deepcmb.errors.ConvergenceError` beyond).
    nthreads : int
        Threads for the FFTs.
    """

    def __init__(self, geom: FlatSkyGeometry, lensed_cls: np.ndarray, beam_fwhm_arcmin: float, lmin: float,
                 lmax: float, tol: float, maxiter: int, nthreads: int = 1):
        self.geom, self.tol, self.maxiter, self.nthreads = geom, float(tol), int(maxiter), int(nthreads)
        ell = geom.ell()
        cls = {name: interp_spectrum(np.asarray(lensed_cls, dtype=float)[k], ell) for k, name in ((1, "E"), (2, "B"))}
        self.band = (ell > 0) & (ell <= lmax) & (cls["E"] > 0) & (cls["B"] > 0)
        keep = self.band & (ell >= lmin)
        self._inv_prior = np.stack([np.where(self.band, geom.pixel_rad**2 / np.where(self.band, cls[k], 1.0), 0.0)
                                    for k in "EB"])
        self._inv_cl = np.stack([np.where(keep, 1.0 / np.where(keep, cls[k], 1.0), 0.0) for k in "EB"])
        self._beam = gaussian_beam(beam_fwhm_arcmin, ell) * self.band
        self._c2, self._s2 = geom.cos2phi_sin2phi()
        self.weight: np.ndarray | None = None
        self._precond: np.ndarray | None = None

    def set_weight(self, weight: np.ndarray) -> None:
        """Set the inverse noise :math:`N^{-1} = M\\, \\mathrm{ivar}_P` (1/µK², shape ``geom.shape``, zero where
        unobserved) and the preconditioner's mean :math:`\\bar n^{-1}` over the observed pixels."""
        w = np.asarray(weight, dtype=float)
        if w.shape != self.geom.shape or not np.all(np.isfinite(w)) or w.min() < 0 or w.max() == 0:
            raise InputError(f"inverse noise: expected a finite map >= 0, not all zero, of shape {self.geom.shape}")
        self.weight = w
        mean = float(w[w > 0].mean())
        total = self._inv_prior + self._beam**2 * mean
        self._precond = np.divide(1.0, total, out=np.zeros_like(total), where=self.band)

    # -- spin-2 rotation on the rfft grid: (E, B) <-> (Q, U) --------------------------------------------
    def _to_qu(self, eb):
        c, s = self._c2, self._s2
        return np.stack([c * eb[0] - s * eb[1], s * eb[0] + c * eb[1]])

    def _to_eb(self, qu):
        c, s = self._c2, self._s2
        return np.stack([c * qu[0] + s * qu[1], -s * qu[0] + c * qu[1]])

    def _fourier(self, m):
        return to_fourier(self.geom, m, self.nthreads)

    def _map(self, f):
        return to_map(self.geom, f, self.nthreads)

    def noise_leg(self, qu: np.ndarray) -> np.ndarray:
        """:math:`\\mathcal{R}^\\dagger \\mathcal{B} N^{-1}` of Q/U maps ``(2, ny, nx)`` (µK), as E/B maps
        restricted to the solved band."""
        return self._map(self._beam * self._to_eb(self._fourier(self.weight * qu)))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The system operator :math:`(C^{-1} + \\mathcal{R}^\\dagger \\mathcal{B} N^{-1} \\mathcal{B}
        \\mathcal{R})\\, x` on E/B maps ``(2, ny, nx)`` (µK) of the solved band."""
        f = self._fourier(x)
        qu = self._map(self._beam * self._to_qu(f))
        back = self._beam * self._to_eb(self._fourier(self.weight * qu))
        return self._map(self._inv_prior * f + back)

    def precondition(self, r: np.ndarray) -> np.ndarray:
        """The isotropic approximate inverse of :meth:`apply` (module docstring)."""
        return self._map(self._precond * self._fourier(r))

    def rhs(self, qu: np.ndarray) -> np.ndarray:
        """Right-hand side :math:`\\mathcal{R}^\\dagger \\mathcal{B} N^{-1} d` of observed Q/U ``(2, ny, nx)``."""
        return self.noise_leg(qu)

    def filter(self, qu: np.ndarray, weight: np.ndarray | None = None) -> FilteredPol:
        """Inverse-variance filtered E and B of one map.

        Parameters
        ----------
        qu : ndarray, shape (2, ny, nx)
            Observed Q and U on the grid, µK (any value where the inverse noise is zero).
        weight : ndarray, shape (ny, nx), optional
            Inverse noise (:meth:`set_weight`); default: the one set last.

        Returns
        -------
        FilteredPol
        """
        if weight is not None:
            self.set_weight(weight)
        if self.weight is None:
            raise InputError("cinv filter: no inverse-noise map set")
        result = conjugate_gradient(self.apply, self.precondition, self.rhs(np.asarray(qu, dtype=float)),
                                    tol=self.tol, maxiter=self.maxiter, inner=pixel_inner)
        bar = self._inv_cl * self._fourier(result.x)
        return FilteredPol(bar[0], bar[1], result.x, result.iterations, result.residual)
