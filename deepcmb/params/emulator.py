"""Binned lensing convergence power as a function of cosmological parameters.

The model of the params stage needs :math:`C^{\\kappa\\kappa}_b(\\theta)`, the convergence power averaged
over exactly the Fourier modes of each band of the evaluation report (:func:`deepcmb.binning.bin_theory`).
``Alens`` multiplies :math:`C_L^{\\phi\\phi}` and so :math:`C_b^{\\kappa\\kappa}` exactly; every other
parameter enters through CAMB, evaluated once on a tensor grid over its prior range (disk-cached by
:func:`deepcmb.cosmology.compute_spectra`) and interpolated with not-a-knot cubic splines of
:math:`\\ln C_b^{\\kappa\\kappa}` along each axis. Parameters not sampled stay at a base cosmology.
"""

from __future__ import annotations

import logging
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy.interpolate import RegularGridInterpolator

from ..cosmology import compute_spectra
from ..binning import bin_theory
from ..progress import track

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from ..geometry import FlatSkyGeometry

log = logging.getLogger(__name__)

MIN_POINTS = 4
"""Grid points per parameter needed by a cubic spline."""


def binned_clkk(geom: FlatSkyGeometry, edges: np.ndarray, params: dict, lmax: int = 5000,
                lens_potential_accuracy: int = 1) -> np.ndarray:
    """CAMB convergence power of one cosmology, binned over the modes of ``geom``.

    Parameters
    ----------
    geom : FlatSkyGeometry
        Geometry of the maps the band powers were measured on.
    edges : ndarray, shape (nb + 1,)
        Band edges in multipole.
    params : dict
        Cosmological parameters (any subset of :data:`deepcmb.cosmology.PARAM_NAMES`).
    lmax, lens_potential_accuracy : int
        CAMB settings (see :func:`deepcmb.cosmology.compute_spectra`); match those of the simulations
        so that cached spectra are reused and the theory is the one the maps were drawn from.

    Returns
    -------
    ndarray, shape (nb,)
        :math:`C_b^{\\kappa\\kappa}` (dimensionless, per steradian).
    """
    spectra = compute_spectra(params, lmax=lmax, lens_potential_accuracy=lens_potential_accuracy)
    return bin_theory(geom, spectra.clkk, edges)


class KappaEmulator:
    """:math:`C_b^{\\kappa\\kappa}(\\theta)` for a vector of sampled parameters.

    Parameters
    ----------
    names : sequence of str
        Sampled parameters, in the order of the components of ``theta``; ``'Alens'`` may be one of them.
    base : dict
        The full parameter set at which CAMB was run for parameters not on the grid (``Alens = 1`` when
        ``Alens`` is sampled).
    grids : sequence of ndarray
        For each non-``Alens`` sampled parameter (in the order of ``names``), the increasing values at
        which CAMB was run (at least :data:`MIN_POINTS`).
    log_clkk : ndarray, shape ``(*[len(g) for g in grids], nb)``
        :math:`\\ln C_b^{\\kappa\\kappa}` on the grid (shape ``(nb,)`` when no parameter but ``Alens``
        is sampled).
    """

    def __init__(self, names, base, grids, log_clkk):
        self.names = tuple(names)
        self.base = dict(base)
        self.grid_names = tuple(n for n in self.names if n != "Alens")
        self.grids = tuple(np.asarray(g, dtype=float) for g in grids)
        self.log_clkk = np.asarray(log_clkk, dtype=float)
        if len(self.grids) != len(self.grid_names):
            raise ValueError(f"expected {len(self.grid_names)} grids, got {len(self.grids)}")
        if self.log_clkk.shape[:-1] != tuple(g.size for g in self.grids):
            raise ValueError(f"table shape {self.log_clkk.shape} does not match the grids")
        self._alens = self.names.index("Alens") if "Alens" in self.names else None
        self._axes = [self.names.index(n) for n in self.grid_names]
        self._interp = (RegularGridInterpolator(self.grids, self.log_clkk, method="cubic", bounds_error=True)
                        if self.grids else None)

    @property
    def n_bins(self) -> int:
        return self.log_clkk.shape[-1]

    def base_theta(self) -> np.ndarray:
        """The base cosmology as a parameter vector, shape ``(ndim,)``."""
        return np.array([self.base[n] for n in self.names], dtype=float)

    def __call__(self, theta):
        """:math:`C_b^{\\kappa\\kappa}` at ``theta``.

        Parameters
        ----------
        theta : array_like, shape (..., ndim)
            Parameter vectors inside the grid's range.

        Returns
        -------
        ndarray, shape (..., nb)
        """
        theta = np.asarray(theta, dtype=float)
        lead = theta.shape[:-1]
        flat = theta.reshape(-1, theta.shape[-1])
        if self._interp is None:
            log_c = np.broadcast_to(self.log_clkk, (flat.shape[0], self.n_bins))
        else:
            log_c = self._interp(flat[:, self._axes])
        c = np.exp(log_c)
        if self._alens is not None:
            c = c * flat[:, self._alens, None]
        return c.reshape(lead + (self.n_bins,))

    def log_derivatives(self, theta: ArrayLike, rel_step: float = 1e-3) -> np.ndarray:
        """Logarithmic response :math:`\\partial \\ln C_b / \\partial \\ln \\theta_i` at one point.

        Parameters
        ----------
        theta : array_like, shape (ndim,)
            Point of evaluation (inside the grid; a grid parameter's central difference must fit in it).
        rel_step : float
            Step of the central difference, as a fraction of each grid's range (``Alens`` is exact).

        Returns
        -------
        ndarray, shape (ndim, nb)
            One row per sampled parameter; the ``Alens`` row is exactly 1.
        """
        theta = np.asarray(theta, dtype=float)
        out = np.empty((theta.size, self.n_bins))
        for i, name in enumerate(self.names):
            if name == "Alens":
                out[i] = 1.0
                continue
            grid = self.grids[self.grid_names.index(name)]
            h = rel_step * (grid[-1] - grid[0])
            lo, hi = max(theta[i] - h, grid[0]), min(theta[i] + h, grid[-1])
            up, down = theta.copy(), theta.copy()
            up[i], down[i] = hi, lo
            out[i] = (np.log(self(up)) - np.log(self(down))) / (np.log(hi) - np.log(lo))
        return out


def build_emulator(geom: FlatSkyGeometry, edges: np.ndarray, names: Sequence[str], base: dict, ranges: dict,
                   n_points: int, lmax: int = 5000, lens_potential_accuracy: int = 1,
                   progress: bool = True) -> KappaEmulator:
    """Run CAMB on a grid and return the :class:`KappaEmulator`.

    Parameters
    ----------
    geom : FlatSkyGeometry
    edges : ndarray, shape (nb + 1,)
        Band edges.
    names : sequence of str
        Sampled parameters (``Alens`` and/or CAMB parameters).
    base : dict
        Full parameter set for everything not sampled. Its ``Alens`` is replaced by 1 when ``Alens``
        is sampled.
    ranges : dict
        ``name -> (low, high)`` for each sampled CAMB parameter.
    n_points : int
        CAMB evaluations along each CAMB parameter; the grid has ``n_points ** d`` nodes for ``d``
        such parameters (each a CAMB call of a few seconds, cached on disk).
    lmax, lens_potential_accuracy : int
        CAMB settings (see :func:`binned_clkk`).
    progress : bool
        Show a progress bar over the CAMB calls.

    Returns
    -------
    KappaEmulator
    """
    base = dict(base)
    if "Alens" in names:
        base["Alens"] = 1.0
    grid_names = [n for n in names if n != "Alens"]
    if grid_names and n_points < MIN_POINTS:
        raise ValueError(f"a cubic emulator needs at least {MIN_POINTS} points per parameter, got {n_points}")
    grids = [np.linspace(ranges[n][0], ranges[n][1], n_points) for n in grid_names]
    shape = tuple(g.size for g in grids)
    nodes = list(itertools.product(*[range(s) for s in shape]))
    table = np.empty(shape + (len(edges) - 1,))
    for node in track(nodes, "CAMB grid", "cosmology", enabled=progress and bool(grid_names), log=log):
        params = dict(base, **{n: float(grids[k][i]) for k, (n, i) in enumerate(zip(grid_names, node))})
        table[node] = np.log(binned_clkk(geom, edges, params, lmax, lens_potential_accuracy))
    return KappaEmulator(names, base, grids, table)
