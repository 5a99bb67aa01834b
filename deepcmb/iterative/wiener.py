"""Preconditioned conjugate gradients, and the Wiener filter of the unlensed E modes at a fixed lensing potential.

The Wiener-filtered unlensed E solves

.. math:: (C_E^{-1} + A^\\dagger N^{-1} A)\\, E_{\\rm WF} = A^\\dagger N^{-1} d,

with :math:`A` the lensing, spin-2 and beam operator of :class:`~deepcmb.iterative.operators.PolarizationModel`.
:math:`E_{\\rm WF}` is the posterior mean (and mode) of the unlensed E given the data at that potential.
The preconditioner is the operator without lensing, diagonal in Fourier space:
:math:`(C_{E,l}^{-1} + B_l^2 / \\sigma^2)^{-1}`.

References
----------
Shewchuk (1994), "An introduction to the conjugate gradient method without the agonizing pain", Sec. 12;
Carron & Lewis (2017), arXiv:1704.08230, Sec. 2.2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import ConvergenceError
from .operators import PolarizationModel, pixel_inner


@dataclass(frozen=True)
class CGResult:
    """Outcome of :func:`conjugate_gradient`.

    Attributes
    ----------
    x : ndarray
        The solution.
    iterations : int
        Iterations run.
    residual : float
        Final relative residual :math:`\\|b - M x\\| / \\|b\\|`.
    """

    x: np.ndarray
    iterations: int
    residual: float


def conjugate_gradient(apply: Callable[[np.ndarray], np.ndarray], precondition: Callable[[np.ndarray], np.ndarray],
                       b: np.ndarray, x0: np.ndarray | None = None, tol: float = 1e-5,
                       maxiter: int = 1000,
                       inner: Callable[[np.ndarray, np.ndarray], float] | None = None) -> CGResult:
    """Solve ``M x = b`` for a symmetric positive-definite ``M`` by preconditioned conjugate gradients.

    Parameters
    ----------
    apply : callable
        ``x -> M x`` on arrays of the shape of ``b``, self-adjoint in the inner product ``inner``.
    precondition : callable
        ``r -> P r`` with ``P`` symmetric positive definite, approximating ``M^-1``.
    b : ndarray
        Right-hand side.
    x0 : ndarray, optional
        Starting point (default zero).
    tol : float
        Stop when the relative residual ``||b - M x|| / ||b||`` (recomputed from ``x``, not the
        recursion) is below ``tol``.
    maxiter : int
        Iterations at most.
    inner : callable, optional
        ``(a, b) -> Re <a, b>``, the inner product (default :func:`pixel_inner`).

    Returns
    -------
    CGResult

    Raises
    ------
    ConvergenceError
        If the residual is not below ``tol`` after ``maxiter`` iterations.
    """
    inner = pixel_inner if inner is None else inner
    norm_b = float(np.sqrt(inner(b, b)))
    if norm_b == 0.0:
        return CGResult(np.zeros_like(b), 0, 0.0)
    x = np.zeros_like(b) if x0 is None else np.array(x0, dtype=b.dtype)
    it = 0
    while True:  # a restart from the true residual if the recursion drifted below tol without it
        r = b - apply(x)
        residual = float(np.sqrt(inner(r, r))) / norm_b
        if residual < tol:
            return CGResult(x, it, residual)
        if it >= maxiter:
            raise ConvergenceError(f"conjugate gradients: relative residual {residual:.2e} after {it} "
                                   f"iterations (wanted < {tol:g})")
        z = precondition(r)
        p = z
        rz = inner(r, z)
        while it < maxiter and np.sqrt(inner(r, r)) / norm_b >= tol:
            mp = apply(p)
            alpha = rz / inner(p, mp)
            x = x + alpha * p
            r = r - alpha * mp
            z = precondition(r)
            rz_new = inner(r, z)
            p = z + (rz_new / rz) * p
            rz = rz_new
            it += 1


def wiener_filter_e(model: PolarizationModel, pol: np.ndarray, x0: np.ndarray | None = None, tol: float = 1e-5,
                    maxiter: int = 1000) -> CGResult:
    """Wiener-filtered unlensed E map of complex ``Q + iU`` data at the model's current lensing potential.

    Parameters
    ----------
    model : PolarizationModel
        Operators, with :meth:`~PolarizationModel.set_phi` called.
    pol : ndarray, complex, shape (ny, nx)
        Observed ``Q + iU``, µK.
    x0 : ndarray, shape (ny, nx), optional
        Starting E coefficients (e.g. the solution at a nearby potential).
    tol, maxiter
        As in :func:`conjugate_gradient`.

    Returns
    -------
    CGResult
        ``x`` the E field's Fourier-series coefficients (see :class:`PolarizationModel`).
    """
    b = model.adjoint(model.residual_leg(pol), beam=False)
    return conjugate_gradient(model.normal, model.precondition, b, x0=x0, tol=tol, maxiter=maxiter)
