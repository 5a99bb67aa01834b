"""The log-posterior of the lensing potential and its gradient.

With the unlensed E profiled out (set to its Wiener filter :math:`E_{\\rm WF}(\\phi)` at each
potential), the objective is

.. math:: \\mathcal{J}(\\phi) = -\\tfrac12 (d - A_\\phi E_{\\rm WF})^\\dagger N^{-1} (d - A_\\phi E_{\\rm WF})
          - \\tfrac12 E_{\\rm WF}^\\dagger C_E^{-1} E_{\\rm WF}
          - \\tfrac12 \\int \\frac{d^2 L}{(2\\pi)^2} \\frac{|\\phi_\\mathbf{L}|^2}{C^{\\phi\\phi}_L}
        = -\\tfrac12 d^\\dagger {\\rm Cov}_\\phi^{-1} d - \\tfrac12 \\phi^\\dagger C_\\phi^{-1} \\phi,

the joint posterior maximised over E, equal to the marginal log-posterior of Carron & Lewis (2017) without
its log-determinant term. Its gradient (the functional derivative, metric :math:`\\int d^2x`) is exact
by the envelope theorem:

.. math:: \\frac{\\delta \\mathcal{J}}{\\delta\\phi(\\mathbf{x})} = -\\nabla\\cdot \\mathbf{V}(\\mathbf{x})
          / \\Delta^2 - (C_\\phi^{-1}\\phi)(\\mathbf{x}), \\qquad
          V_i = {\\rm Re}\\big[\\overline{(\\mathcal{B}^\\dagger N^{-1}(d - A_\\phi E_{\\rm WF}))}(\\mathbf{x})\\;
          (\\partial_i P_{\\rm WF})(\\mathbf{x} + \\nabla\\phi(\\mathbf{x}))\\big],

the product of the residual leg and the gradient of the Wiener-filtered ``Q + iU`` (:math:`P_{\\rm WF} =
\\mathcal{S} E_{\\rm WF}`) evaluated at the deflected positions, with :math:`\\Delta^2` the pixel area.

**Mean field.** The marginal log-posterior adds :math:`-\\tfrac12 \\ln\\det {\\rm Cov}_\\phi`, whose
gradient is minus the mean field :math:`g^{\\rm MF}(\\phi) = \\langle \\delta\\mathcal{J}_d /
\\delta\\phi\\rangle_{d | \\phi}`, the average of the data part of the gradient above (the term in
:math:`\\mathbf{V}`) over data simulated at :math:`\\phi` (Carron & Lewis 2017). It vanishes on a
periodic patch with white noise; a mask or a noise map makes it large. With a mean field given
(:func:`deepcmb.iterative.meanfield.gradient_mean_field`, simulated at :math:`\\phi = 0` and held fixed,
its dependence on :math:`\\phi` neglected) the objective is
:math:`\\mathcal{J}(\\phi) - \\int d^2x\\, g^{\\rm MF}\\phi` and its gradient the one above minus
:math:`g^{\\rm MF}`: the log-determinant to first order in :math:`\\phi`. Without one it is the joint MAP
of Millea, Anderes & Wandelt (2019).

References
----------
Hirata & Seljak (2003), PRD 68, 083002; Carron & Lewis (2017), PRD 96, 063510, Eqs. (4)-(9);
Millea, Anderes & Wandelt (2019), PRD 100, 023509.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import FlatSkyGeometry
from .operators import PolarizationModel, pixel_inner
from .wiener import wiener_filter_e


@dataclass(frozen=True)
class PosteriorPoint:
    """The objective, its gradient and the Wiener-filtered E at one potential.

    Attributes
    ----------
    value : float
        :math:`\\mathcal{J}(\\phi)` (dimensionless, up to a constant).
    gradient : ndarray, complex, shape ``geom.fourier_shape()``
        Its gradient's Fourier modes (convention of :mod:`deepcmb.geometry`), zero outside the phi band.
    e_wf : ndarray, shape ``geom.shape``
        Wiener-filtered unlensed E map, µK.
    residual : ndarray, complex, shape ``geom.shape``
        Data minus model, ``d - A E_WF`` (``Q + iU``, µK).
    cg_iterations : int
        Conjugate-gradient iterations of the Wiener filter.
    """

    value: float
    gradient: np.ndarray
    e_wf: np.ndarray
    residual: np.ndarray
    cg_iterations: int


class LensingPosterior:
    """:math:`\\mathcal{J}(\\phi)` and its gradient for one polarization data set.

    Parameters
    ----------
    model : PolarizationModel
        Data model (prior of E, beam, noise, data band, NUFFT accuracy).
    pol : ndarray, complex, shape ``geom.shape``
        Observed ``Q + iU``, µK.
    clpp_grid : ndarray, shape ``geom.fourier_shape()``
        :math:`C^{\\phi\\phi}` on the rfft grid (sr); modes where it is zero are not estimated.
    cg_tol : float
        Relative residual of the Wiener filter.
    cg_max_iterations : int
        Conjugate-gradient iterations at most (:class:`~deepcmb.errors.ConvergenceError` beyond).
    mean_field : ndarray, complex, shape ``geom.fourier_shape()``, optional
        The mean field :math:`g^{\\rm MF}` of the gradient (module docstring; rfft modes of
        :math:`\\delta\\mathcal{J}/\\delta\\phi`, sr⁻¹ rad⁻²); default none.
    """

    def __init__(self, model: PolarizationModel, pol: np.ndarray, clpp_grid: np.ndarray, cg_tol: float,
                 cg_max_iterations: int = 1000, mean_field: np.ndarray | None = None):
        self.model, self.pol, self.cg_tol = model, np.asarray(pol, dtype=complex), cg_tol
        self.cg_max_iterations = cg_max_iterations
        geom = model.geom
        self.band = clpp_grid > 0
        self.mean_field = np.zeros(geom.fourier_shape(), dtype=complex) if mean_field is None else \
            np.where(self.band, mean_field, 0.0)
        self.inv_clpp = np.divide(1.0, clpp_grid, out=np.zeros_like(clpp_grid), where=self.band)
        lx, ly = geom.lxly(real=False)
        self._ik = np.stack([1j * ly, 1j * lx])  # d/dy, d/dx on the fft2 grid
        lxr, lyr = geom.lxly()
        self._ik_real = np.stack([1j * lyr, 1j * lxr])
        self._e_start: np.ndarray | None = None

    @property
    def geom(self) -> FlatSkyGeometry:
        return self.model.geom

    def inner(self, a: np.ndarray, b: np.ndarray) -> float:
        """The metric :math:`\\int d^2x\\, a(\\mathbf{x}) b(\\mathbf{x})` of two real fields given by rfft modes."""
        g = self.geom
        return float(np.sum(g.fourier2map(a) * g.fourier2map(b)) * g.pixel_rad**2)

    def prior_value(self, phi_fourier: np.ndarray) -> float:
        """:math:`-\\frac12 \\phi^\\dagger C_\\phi^{-1} \\phi`."""
        return -0.5 * self.inner(phi_fourier, phi_fourier * self.inv_clpp)

    def evaluate(self, phi_fourier: np.ndarray, gradient: bool = True) -> PosteriorPoint:
        """Wiener-filter E at ``phi_fourier`` (rfft modes, rad²) and return the objective and its gradient.

        The last converged call's E starts the conjugate gradients.

        Raises
        ------
        ConvergenceError
            If the Wiener filter does not converge (a deflection field far from the data's).
        """
        m, geom = self.model, self.geom
        phi_fourier = np.where(self.band, phi_fourier, 0.0)
        m.set_phi(phi_fourier)
        cg = wiener_filter_e(m, self.pol, x0=self._e_start, tol=self.cg_tol, maxiter=self.cg_max_iterations)
        self._e_start = cg.x
        grid = m.pol_grid(cg.x)
        resid = self.pol - m.beam(m.lensing.forward(grid))
        value = (-0.5 * pixel_inner(resid, m.inverse_noise(resid))
                 - 0.5 * m.inner(cg.x, m.inverse_prior(cg.x)) + self.prior_value(phi_fourier)
                 - self.inner(self.mean_field, phi_fourier))
        grad = np.zeros(geom.fourier_shape(), dtype=complex)
        if gradient:
            leg = m.residual_leg(resid)
            grad_p = m.lensing.forward(self._ik * grid)  # (2, ny, nx): d_y P, d_x P at x + grad phi
            v = np.real(np.conj(leg) * grad_p)
            div = np.sum(self._ik_real * geom.map2fourier(v), axis=0)
            grad = np.where(self.band, -div / geom.pixel_rad**2 - phi_fourier * self.inv_clpp - self.mean_field, 0.0)
        return PosteriorPoint(value, grad, m.e_map(cg.x), resid, cg.iterations)
