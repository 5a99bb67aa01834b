"""Direct (non-FFT) evaluation of declared estimators: a reference for :mod:`deepcmb.qe.engine`.

Evaluates the weight :math:`G_\\alpha(\\mathbf{l}_1, \\mathbf{l}_2)` and response
:math:`f^{XY}(\\mathbf{l}_1, \\mathbf{l}_2)` of the declarations in :mod:`deepcmb.qe.estimators`
point by point and sums over :math:`\\mathbf{l}_1` for every :math:`\\mathbf{L}`, with
:math:`\\mathbf{l}_2 = \\mathbf{L} - \\mathbf{l}_1` wrapped onto the grid as in a circular
convolution. Cost :math:`O(N_{\\rm pix}^2)` per term: small grids only (e.g. 32 x 32). Used by the
tests and by ``benchmarks/bench_qe.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .estimators import ESTIMATORS
from .filtering import pair_name

if TYPE_CHECKING:
    from ..geometry import FlatSkyGeometry
    from .estimators import Leg
    from .filtering import Filters


def half_to_full(geom: FlatSkyGeometry, half: np.ndarray) -> np.ndarray:
    """Extend an even function (``f(-l) = f(l)``) from the rfft grid to the full ``fft2`` grid."""
    ny, nx = geom.shape
    full = np.empty((ny, nx), dtype=np.result_type(half, float))
    full[:, : nx // 2 + 1] = half
    ix = np.arange(nx // 2 + 1, nx)
    iy = (-np.arange(ny)) % ny
    full[:, ix] = half[iy][:, nx - ix]
    return full


class _Grid:
    """Full-grid arrays used to evaluate legs."""

    def __init__(self, geom, filters, weight_cls, response_cls):
        self.geom = geom
        lx, ly = geom.lxly(real=False)
        c2, s2 = geom.cos2phi_sin2phi(real=False)
        self.lvec = (lx, ly)
        self.angle = {"c": c2, "s": s2}
        self.cls = {"w": {k: half_to_full(geom, v) for k, v in weight_cls.items()},
                    "r": {k: half_to_full(geom, v) for k, v in response_cls.items()}}
        self.filt = {k: half_to_full(geom, v) for k, v in filters.inverse.items()}
        self.total = {k: half_to_full(geom, v) for k, v in filters.total.items()}

    def leg(self, leg: Leg, kind: str, filtered: bool) -> np.ndarray:
        """Values of a declared leg on the full grid."""
        out = np.ones(self.geom.shape, dtype=complex)
        if filtered:
            out = out * self.filt[leg.field]
        if leg.cl is not None:
            out = out * self.cls[kind][leg.cl]
        if leg.angle != "1":
            out = out * self.angle[leg.angle]
        if leg.grad is not None:
            out = out * 1j * self.lvec[leg.grad]
        return out

    def spectrum(self, x: str, y: str) -> np.ndarray:
        name = pair_name(x, y)
        return self.total.get(name, np.zeros(self.geom.shape))


def _indices(geom):
    ny, nx = geom.shape
    iy, ix = np.meshgrid(np.arange(ny), np.arange(nx // 2 + 1), indexing="ij")
    iyl, ixl = iy.ravel(), ix.ravel()  # output L on the rfft grid
    jy, jx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    j1y, j1x = jy.ravel(), jx.ravel()  # l1 over the full grid
    i2y = (iyl[:, None] - j1y[None, :]) % ny
    i2x = (ixl[:, None] - j1x[None, :]) % nx
    return (iyl, ixl), (j1y, j1x), (i2y, i2x)


def _pairfunction(grid, name, kind, filtered, swap=False):
    """``func(L, l1, l2)`` arrays of an estimator's weight (or response), shape (nL, nl1)."""
    est = ESTIMATORS[name]
    (iyl, ixl), (j1y, j1x), (i2y, i2x) = grid.idx
    out = 0.0
    for t in est.terms:
        a = grid.leg(t.leg1, kind, filtered)
        b = grid.leg(t.leg2, kind, filtered)
        lfac = -1j * grid.lvec[t.j][iyl, ixl][:, None]
        if not swap:
            out = out + t.coef * a[j1y, j1x][None, :] * b[i2y, i2x] * lfac
        else:  # first argument at l2, second at l1
            out = out + t.coef * a[i2y, i2x] * b[j1y, j1x][None, :] * lfac
    return out * (est.weight_factor if filtered else 1.0)


def direct_response(geom: FlatSkyGeometry, filters: Filters, weight_cls: dict[str, np.ndarray],
                    response_cls: dict[str, np.ndarray], name: str) -> np.ndarray:
    """:math:`R_\\alpha(\\mathbf{L}) = A^{-1} \\sum_{\\mathbf{l}_1} G_\\alpha f^{XY}_r` by direct summation.

    Parameters
    ----------
    geom : FlatSkyGeometry
        A small grid.
    filters : Filters
    weight_cls, response_cls : dict
        Spectra on the rfft grid (as for :class:`~deepcmb.qe.engine.FourierFactors`).
    name : str
        Estimator name.

    Returns
    -------
    ndarray, shape ``geom.fourier_shape()``
    """
    grid = _Grid(geom, filters, weight_cls, response_cls)
    grid.idx = _indices(geom)
    g = _pairfunction(grid, name, "w", True)
    f = _pairfunction(grid, name, "r", False)
    return (g * f).sum(axis=1).real.reshape(geom.fourier_shape()) / geom.area


def direct_noise(geom: FlatSkyGeometry, filters: Filters, weight_cls: dict[str, np.ndarray], name_a: str,
                 name_b: str) -> np.ndarray:
    """Unnormalised Gaussian noise covariance of two estimators by direct summation.

    See :func:`deepcmb.qe.engine.noise_covariance` for the formula.

    Returns
    -------
    ndarray, shape ``geom.fourier_shape()``
    """
    grid = _Grid(geom, filters, weight_cls, weight_cls)
    grid.idx = _indices(geom)
    (iyl, ixl), (j1y, j1x), (i2y, i2x) = grid.idx
    ea, eb = ESTIMATORS[name_a], ESTIMATORS[name_b]
    ga = _pairfunction(grid, name_a, "w", True)
    gb = _pairfunction(grid, name_b, "w", True)
    gb_swap = _pairfunction(grid, name_b, "w", True, swap=True)
    c_xz = grid.spectrum(ea.x, eb.x)[j1y, j1x][None, :] * grid.spectrum(ea.y, eb.y)[i2y, i2x]
    c_xw = grid.spectrum(ea.x, eb.y)[j1y, j1x][None, :] * grid.spectrum(ea.y, eb.x)[i2y, i2x]
    total = ga * (np.conj(gb) * c_xz + np.conj(gb_swap) * c_xw)
    return total.sum(axis=1).real.reshape(geom.fourier_shape()) / geom.area
