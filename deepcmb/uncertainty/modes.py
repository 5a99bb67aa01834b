"""A Gaussian posterior per Fourier mode for the low-passed convergence, calibrated on simulations.

Any reconstruction :math:`\\hat\\kappa` (network, quadratic estimator, MAP) is treated as a linear
measurement of the true convergence, mode by mode on the map's Fourier grid. On calibration maps whose
truth is known (never trained on, never tested on) two numbers are measured per ring ``b`` of
:math:`|L|` and per noise level:

.. math:: a_b = \\frac{\\sum \\mathrm{Re}\\, \\hat\\kappa_L \\kappa_L^*}{\\sum |\\hat\\kappa_L|^2}, \\qquad
          R_b = \\frac{1}{n} \\sum |\\kappa_L - a_b \\hat\\kappa_L|^2 ,

sums over the maps and the modes of the ring (``n`` of them). :math:`a_b` is the least-squares regression of
the truth on the estimate: for :math:`\\hat\\kappa = T\\kappa + n` it is the Wiener filter
:math:`T C / (T^2 C + N)`, so :math:`a\\hat\\kappa` is the Wiener-filtered estimate whatever the
method's normalisation, and :math:`R_b = C_b (1 - \\rho_b^2)` the posterior variance of a mode given
the estimate (the residual is uncorrelated with :math:`\\hat\\kappa` by construction). The posterior
of the convergence low-passed to :math:`|L| \\le L_{\\rm uq}` (a sharp cut on the Fourier grid) is
then Gaussian with mean :math:`\\bar\\kappa_L = a_b \\hat\\kappa_L` and, modes being independent on a
periodic map with homogeneous noise, a per-pixel variance equal in every pixel,

.. math:: \\sigma^2 = \\frac{1}{(N_{\\rm pix} \\Delta^2)^2} \\sum_{|L| \\le L_{\\rm uq}} R_{b(L)} ,

with Fourier modes in the convention of :meth:`deepcmb.geometry.FlatSkyGeometry.map2fourier`
(:math:`\\kappa_L = \\Delta^2 \\sum_x \\kappa(x) e^{-iL\\cdot x}`, :math:`\\Delta` the pixel side in
rad) and the sum over the full grid (:math:`L` and :math:`-L`). The real and imaginary parts of a
mode that is not its own conjugate each have variance :math:`R_b / 2`.

Rings are one fundamental multipole wide, centred on its multiples (the first holds ``L = 0`` alone), so
the calibration follows the transfer function and the noise at the resolution of the grid. The method
assumes the residual is Gaussian and its variance the same on every map (:mod:`deepcmb.uncertainty`
measures whether that holds: coverage).

Masked and non-periodic maps are not isotropic: the true convergence of a patch with edges leaks, in its
Fourier transform, onto the modes along the axes (``lx = 0`` or ``ly = 0``), which no reconstruction
predicts, and scan stripes favour one direction. Measured on the masked calibration maps with the survey
network, the residual of the lowest axis modes is 1.1-1.26 x the ring's mean and that of the diagonal ones
0.8-0.9 x. Their calibration (``per_cell``) measures :math:`a` and :math:`R` on every cell of the rfft grid
with :math:`|L| \\le L_{\\rm uq}` instead of per ring: the same sums over the maps, for each cell alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..binning import mode_weights
from ..geometry import FlatSkyGeometry


def ring_edges(geom: FlatSkyGeometry, lmax: float) -> np.ndarray:
    """Ring edges in :math:`|L|`: ``[0, 0.5, 1.5, 2.5, ...] * ell_fundamental``, up to the first edge above
    ``lmax`` (rad^-1), so every mode with ``|L| <= lmax`` lies in a ring and ``L = 0`` is alone in the
    first."""
    f = geom.ell_fundamental
    n = int(np.floor(lmax / f + 0.5)) + 1
    return np.concatenate([[0.0], (np.arange(n) + 0.5) * f])


def ring_index(geom: FlatSkyGeometry, edges: np.ndarray) -> np.ndarray:
    """Ring of each mode of the rfft grid, ``(ny, nx // 2 + 1)`` int; -1 outside the rings."""
    idx = np.digitize(geom.ell(), edges) - 1
    idx[(idx < 0) | (idx >= len(edges) - 1)] = -1
    return idx


def lowpass_mask(geom: FlatSkyGeometry, lmax: float) -> np.ndarray:
    """The sharp low-pass ``|L| <= lmax`` on the rfft grid, ``(ny, nx // 2 + 1)`` bool."""
    return geom.ell() <= lmax


@dataclass(frozen=True)
class ModeCalibration:
    """The measured transfer and residual of a reconstruction, per ring and noise level.

    Attributes
    ----------
    edges : ndarray, shape (nring + 1,)
        Ring edges in ``|L|`` (:func:`ring_edges`).
    transfer : ndarray, shape (n_levels, nring) or (n_levels, ny, nx // 2 + 1)
        Regression coefficient :math:`a_b` (dimensionless), per ring or, calibrated per cell, on the rfft
        grid (0 above :math:`L_{\\rm uq}`).
    residual : ndarray, the shape of ``transfer``
        Posterior variance :math:`R_b` of a Fourier mode, sr² (mode convention of
        :meth:`~deepcmb.geometry.FlatSkyGeometry.map2fourier`; :math:`C_L = R / A` for a patch of area
        :math:`A`).
    noise_p : ndarray, shape (n_levels,)
        Polarization noise of each level, µK-arcmin.
    n_maps : ndarray of int, shape (n_levels,)
        Calibration maps per level.
    lmax : float
        :math:`L_{\\rm uq}`: the low-pass of the posterior.
    shape : tuple of int
        ``(ny, nx)`` of the calibration maps.
    pixel_arcmin : float
    """

    edges: np.ndarray
    transfer: np.ndarray
    residual: np.ndarray
    noise_p: np.ndarray
    n_maps: np.ndarray
    lmax: float
    shape: tuple
    pixel_arcmin: float

    def level_of(self, noise_p: float) -> int:
        """The calibrated level nearest (in log noise) to ``noise_p`` µK-arcmin."""
        return int(np.argmin(np.abs(np.log(self.noise_p) - np.log(noise_p))))

    @property
    def per_cell(self) -> bool:
        """Whether ``transfer`` and ``residual`` are given per cell of the rfft grid rather than per ring."""
        return self.transfer.ndim == 3

    def _per_mode(self, geom: FlatSkyGeometry, values: np.ndarray) -> np.ndarray:
        if values.ndim == 2:  # per cell
            return np.where(lowpass_mask(geom, self.lmax), values, 0.0)
        idx = ring_index(geom, self.edges)
        out = np.where(idx >= 0, values[np.maximum(idx, 0)], 0.0)
        return np.where(lowpass_mask(geom, self.lmax), out, 0.0)

    def check_geometry(self, geom: FlatSkyGeometry) -> None:
        """Refuse maps of another shape or pixel size than the calibration maps (ValueError)."""
        if tuple(geom.shape) != tuple(self.shape) or not np.isclose(geom.pixel_arcmin, self.pixel_arcmin):
            raise ValueError(f"maps of {tuple(geom.shape)} pixels of {geom.pixel_arcmin:g} arcmin; the calibration "
                             f"was measured on {tuple(self.shape)} pixels of {self.pixel_arcmin:g} arcmin")

    def posterior_mean(self, geom: FlatSkyGeometry, kappa_hat: np.ndarray, level: int) -> np.ndarray:
        """The posterior mean of the low-passed convergence, :math:`a_b \\hat\\kappa_L` for
        :math:`|L| \\le L_{\\rm uq}`, as maps ``(..., ny, nx)``."""
        self.check_geometry(geom)
        return geom.fourier2map(self._per_mode(geom, self.transfer[level]) * geom.map2fourier(kappa_hat))

    def mode_variance(self, geom: FlatSkyGeometry, level: int) -> np.ndarray:
        """Posterior variance :math:`R_{b(L)}` of each rfft mode (sr²; 0 above :math:`L_{\\rm uq}`)."""
        self.check_geometry(geom)
        return self._per_mode(geom, self.residual[level])

    def pixel_sigma(self, geom: FlatSkyGeometry, level: int) -> float:
        """Posterior standard deviation of the low-passed convergence in one pixel (dimensionless)."""
        total = np.sum(mode_weights(geom).reshape(geom.fourier_shape()) * self.mode_variance(geom, level))
        return float(np.sqrt(total) / (geom.shape[0] * geom.shape[1] * geom.pixel_rad**2))

    def sample(self, geom: FlatSkyGeometry, mean: np.ndarray, level: int, n: int,
               rng: np.random.Generator) -> np.ndarray:
        """Draws from the Gaussian posterior of the low-passed convergence around ``mean`` (one map,
        ``(ny, nx)``): ``(n, ny, nx)`` maps, each ``mean`` plus a stationary Gaussian field of mode
        variance :math:`R_{b(L)}`."""
        ny, nx = geom.shape
        white = rng.standard_normal((n, ny, nx))
        # the transform of unit white noise has E|w_L|^2 = N_pix * Delta^4: rescale to variance R_b per mode
        scale = np.sqrt(self.mode_variance(geom, level) / (ny * nx)) / geom.pixel_rad**2
        return mean[None] + geom.fourier2map(scale * geom.map2fourier(white))


def _on_grid(geom: FlatSkyGeometry, keep: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` of the cells ``keep`` (flat rfft grid, bool) on the rfft grid ``(ny, nx // 2 + 1)``, 0 elsewhere."""
    out = np.zeros(keep.size)
    out[keep] = values
    return out.reshape(geom.fourier_shape())


def measure(geom: FlatSkyGeometry, kappa_hat: np.ndarray, kappa_true: np.ndarray, levels: np.ndarray,
            noise_p: np.ndarray, lmax: float, per_cell: bool = False) -> ModeCalibration:
    """Measure :math:`a_b` and :math:`R_b` on calibration maps, per ring or per cell (see the module
    docstring).

    Parameters
    ----------
    geom : FlatSkyGeometry
    kappa_hat, kappa_true : ndarray, shape (n, ny, nx)
        Reconstructions and the true convergence of the same maps.
    levels : ndarray of int, shape (n,)
        Noise level of each map (index into ``noise_p``).
    noise_p : ndarray, shape (n_levels,)
        Polarization noise of each level, µK-arcmin; levels without maps are dropped.
    lmax : float
        :math:`L_{\\rm uq}`.
    per_cell : bool
        Calibrate every cell of the rfft grid with :math:`|L| \\le L_{\\rm uq}` on its own (for maps that
        are not isotropic), instead of every ring.

    Returns
    -------
    ModeCalibration
    """
    edges = ring_edges(geom, lmax)
    idx = ring_index(geom, edges).ravel()
    keep = idx >= 0
    w = mode_weights(geom)[keep]
    nring = len(edges) - 1
    if per_cell:  # every cell its own "ring", of weight one
        idx = np.where(keep, np.cumsum(keep) - 1, -1)
        w = np.ones(keep.sum())
        nring = int(keep.sum())
    present = [lev for lev in range(len(noise_p)) if np.any(levels == lev)]
    transfer, residual, counts = [], [], []
    for lev in present:
        sel = np.flatnonzero(levels == lev)
        cross = np.zeros(nring)
        auto = np.zeros(nring)
        truth = np.zeros(nring)
        modes = np.zeros(nring)
        for start in range(0, sel.size, 256):
            rows = sel[start:start + 256]
            fh = geom.map2fourier(kappa_hat[rows]).reshape(len(rows), -1)[:, keep]
            ft = geom.map2fourier(kappa_true[rows]).reshape(len(rows), -1)[:, keep]
            cross += np.bincount(idx[keep], (w * (fh * ft.conj()).real).sum(0), nring)
            auto += np.bincount(idx[keep], (w * np.abs(fh) ** 2).sum(0), nring)
            truth += np.bincount(idx[keep], (w * np.abs(ft) ** 2).sum(0), nring)
            modes += np.bincount(idx[keep], w, nring) * len(rows)
        with np.errstate(invalid="ignore", divide="ignore"):
            a = np.where(auto > 0, cross / auto, 0.0)
        # sum |k - a k_hat|^2 = truth - 2 a cross + a^2 auto = truth - a cross at the regression optimum
        r = np.maximum(truth - a * cross, 0.0) / modes
        if per_cell:  # back onto the rfft grid, 0 above lmax
            a, r = _on_grid(geom, keep, a), _on_grid(geom, keep, r)
        transfer.append(a)
        residual.append(r)
        counts.append(sel.size)
    return ModeCalibration(edges=edges, transfer=np.array(transfer), residual=np.array(residual),
                           noise_p=np.asarray(noise_p, float)[present], n_maps=np.array(counts),
                           lmax=float(lmax), shape=tuple(geom.shape), pixel_arcmin=float(geom.pixel_arcmin))
