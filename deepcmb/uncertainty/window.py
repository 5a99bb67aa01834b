"""Where a map is observed: the posterior variance of masked and non-periodic maps as a function of local depth.

On a periodic map with homogeneous noise the posterior of the low-passed convergence has the same variance in
every pixel (:mod:`~deepcmb.uncertainty.modes`). A mask, a noise map or the border of a non-periodic patch
make it vary: a reconstruction knows less in a point-source hole, near the survey edge or where the noise is
deep. The data tell how much the map is observed around each pixel through its inverse noise
:math:`N^{-1}(x) = M(x)\\,\\mathrm{ivar}_P(x)` (mask times inverse noise variance, the weights the filtered
estimators use). The **local depth** of a pixel is that weight, relative to the white noise of the map's
calibrated level, smoothed by a Gaussian of FWHM ``window_fwhm_arcmin``,

.. math:: d(x) = \\big(G * N^{-1}\\big)(x) \\,/\\, \\mathrm{ivar}_{\\rm ref}, \\qquad
          \\mathrm{ivar}_{\\rm ref} = (\\Delta_{\\rm pix} / \\Delta_P)^2 ,

(:math:`\\Delta_{\\rm pix}` the pixel side in arcmin, :math:`\\Delta_P` the level's noise in µK-arcmin), with
the map taken as unobserved outside a non-periodic patch (zero padding), so :math:`d` falls towards its
border; :math:`d = 1` everywhere on a periodic map with white noise at the level's depth.

Calibration (:func:`measure_window`): the pixels of the calibration maps of a noise level are sorted into
``window_bins`` bins of equal count in :math:`d`; in each, the variance of the residual of the posterior mean,
:math:`e = \\kappa^{\\rm lp} - \\bar\\kappa`, is measured relative to the stationary variance :math:`\\sigma^2`
of :mod:`~deepcmb.uncertainty.modes` (whose mean over all pixels it is, by Parseval):
:math:`v_k = \\langle e^2 \\rangle_k / \\sigma^2`. Applied, the standard deviation of a pixel is
:math:`\\sigma\\sqrt{v(d(x))}`, :math:`v` interpolated linearly in :math:`d` between the bins' mean depths and
held at the end values outside them. The residual is assumed Gaussian with a variance that depends on the
pixel through its depth alone: the coverage per depth bin says whether that holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import FlatSkyGeometry


def local_depth(geom: FlatSkyGeometry, mask: np.ndarray, ivar: np.ndarray, noise_p: float, fwhm_arcmin: float,
                periodic: bool) -> np.ndarray:
    """The local depth :math:`d(x)` of maps (module docstring).

    Parameters
    ----------
    geom : FlatSkyGeometry
    mask, ivar : ndarray, shape (n, ny, nx)
        Masks (in [0, 1]) and polarization inverse noise variances (1/µK² per pixel).
    noise_p : float
        Polarization noise of the reference level, µK-arcmin (> 0).
    fwhm_arcmin : float
        FWHM of the Gaussian smoothing.
    periodic : bool
        Periodic maps are smoothed on their torus; others are taken as unobserved outside the patch.

    Returns
    -------
    ndarray, shape (n, ny, nx)
        Dimensionless; 1 for white noise at ``noise_p`` without a mask.
    """
    if noise_p <= 0:
        raise ValueError("the local depth needs a noise level above zero")
    weight = np.asarray(mask, float) * np.asarray(ivar, float) * (noise_p / geom.pixel_arcmin) ** 2
    ny, nx = geom.shape
    grid = geom if periodic else FlatSkyGeometry((2 * ny, 2 * nx), geom.pixel_arcmin)
    sigma_rad = np.radians(fwhm_arcmin / 60.0) / np.sqrt(8.0 * np.log(2.0))
    beam = np.exp(-0.5 * (grid.ell() * sigma_rad) ** 2)
    if not periodic:
        padded = np.zeros(weight.shape[:-2] + grid.shape)
        padded[..., :ny, :nx] = weight
        weight = padded
    smooth = grid.fourier2map(beam * grid.map2fourier(weight))
    return smooth[..., :ny, :nx]


@dataclass(frozen=True)
class WindowCalibration:
    """The variance of the posterior residual relative to the stationary one, per bin of local depth.

    Attributes
    ----------
    fwhm_arcmin : float
        The smoothing of the local depth (:func:`local_depth`).
    depth : ndarray, shape (n_levels, n_bins)
        Mean local depth of each bin's pixels, increasing (dimensionless).
    ratio : ndarray, shape (n_levels, n_bins)
        :math:`v_k`: the residual variance of the bin over the stationary :math:`\\sigma^2`.
    """

    fwhm_arcmin: float
    depth: np.ndarray
    ratio: np.ndarray

    def std_factor(self, depth: np.ndarray, level: int) -> np.ndarray:
        """:math:`\\sqrt{v(d)}` of each pixel of local depths ``depth`` (any shape) at a calibrated level."""
        return np.sqrt(np.interp(depth, self.depth[level], self.ratio[level]))


def measure_window(residual: np.ndarray, sigma: np.ndarray, depth: np.ndarray, levels: np.ndarray,
                   n_levels: int, n_bins: int, fwhm_arcmin: float) -> WindowCalibration:
    """Measure :math:`v_k` per level and bin of local depth on calibration maps.

    Parameters
    ----------
    residual : ndarray, shape (n, ny, nx)
        :math:`e = \\kappa^{\\rm lp} - \\bar\\kappa` of each calibration map.
    sigma : ndarray, shape (n_levels,)
        Stationary posterior standard deviation of each level (:meth:`ModeCalibration.pixel_sigma`).
    depth : ndarray, shape (n, ny, nx)
        Local depth of each map (:func:`local_depth`, at its level).
    levels : ndarray of int, shape (n,)
        Calibrated level of each map (``0 .. n_levels - 1``, every one present).
    n_levels, n_bins : int
    fwhm_arcmin : float

    Returns
    -------
    WindowCalibration
    """
    depth_out = np.empty((n_levels, n_bins))
    ratio = np.empty((n_levels, n_bins))
    for lev in range(n_levels):
        sel = levels == lev
        d = depth[sel].ravel()
        e2 = residual[sel].ravel() ** 2
        order = np.argsort(d, kind="stable")
        for k, part in enumerate(np.array_split(order, n_bins)):
            depth_out[lev, k] = d[part].mean()
            ratio[lev, k] = e2[part].mean() / sigma[lev] ** 2
    return WindowCalibration(fwhm_arcmin=float(fwhm_arcmin), depth=depth_out, ratio=ratio)
