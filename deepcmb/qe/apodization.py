"""Windows for non-periodic patches and the moments that correct spectra for them.

A quadratic estimate made from maps multiplied by a window :math:`W(\\mathbf{x})` (tapered to zero
at the edges, so the FFT sees a periodic field) responds, for a window varying slowly compared with
the CMB scales, to :math:`W^2(\\mathbf{x})\\,\\kappa(\\mathbf{x})`, and its noise is modulated by
:math:`W^2` as well. Spectra of such estimates are corrected to first order with the window moments
:math:`w_p = \\langle W^p \\rangle` (pixel mean):

* :math:`\\langle \\hat\\kappa\\, \\kappa \\rangle \\approx w_2\\, C^{\\kappa\\kappa}` (cross with the full,
  unwindowed truth on the patch),
* :math:`\\langle \\hat\\kappa \\hat\\kappa \\rangle \\approx w_4\\, (C^{\\kappa\\kappa} + N^{(0)})`.

The window and the CMB's own non-periodicity also produce a mean field :math:`\\langle\\hat\\kappa\\rangle
\\neq 0`, estimated by averaging estimates over simulations processed identically
(:meth:`deepcmb.qe.QuadraticEstimator.mean_field`) and subtracted.

References
----------
Hivon et al. (2002), ApJ 567, 2 (pseudo-C_l window moments); Namikawa, Hanson & Takahashi (2013),
MNRAS 431, 609 (lensing on masked flat patches); Guzman & Meyers (2021), arXiv:2101.01214 (1.5 deg
cosine taper on 5 deg patches).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError, InputError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from ..geometry import FlatSkyGeometry

TAPER_ARCMIN = 60.0
"""Default cosine-taper width (arcmin) of the window of a non-periodic patch."""


def default_taper(periodic: bool) -> float:
    """Taper width (arcmin) used when none is configured: 0 (no window) for periodic flat-sky maps,
    :data:`TAPER_ARCMIN` for non-periodic (curved-sky) patches."""
    return 0.0 if periodic else TAPER_ARCMIN


def cosine_window(geom: FlatSkyGeometry, taper_arcmin: float, flat_arcmin: float = 0.0) -> np.ndarray:
    """Separable cosine-tapered window: 0 on the border, rising as :math:`\\sin^2` to 1.

    Parameters
    ----------
    geom : FlatSkyGeometry
    taper_arcmin : float
        Width of the taper along each edge, arcmin.
    flat_arcmin : float
        Extra zero-valued margin before the taper starts, arcmin.

    Returns
    -------
    ndarray, shape ``geom.shape``
        Window in [0, 1].
    """
    taper, margin = float(taper_arcmin), float(flat_arcmin)
    if taper <= 0 or margin < 0:
        raise ConfigError(f"qe.apodization: taper must be > 0 and margin >= 0 arcmin, got {taper}, {margin}")
    out = np.ones(geom.shape)
    for axis, n in enumerate(geom.shape):
        if 2 * (taper + margin) > n * geom.pixel_arcmin:
            raise ConfigError(
                f"qe.apodization: tapers of {taper:g} + {margin:g} arcmin do not fit a side of "
                f"{n * geom.pixel_arcmin:g} arcmin")
        x = (np.arange(n) + 0.5) * geom.pixel_arcmin  # distance of the pixel centre from the edge
        d = np.minimum(x, n * geom.pixel_arcmin - x) - margin
        w1 = np.where(d <= 0, 0.0, np.where(d >= taper, 1.0, np.sin(0.5 * np.pi * np.clip(d, 0, taper) / taper) ** 2))
        out *= w1[:, None] if axis == 0 else w1[None, :]
    return out


def window_moment(window: np.ndarray, p: float) -> float:
    """Pixel mean :math:`w_p = \\langle W^p \\rangle` of a window."""
    window = np.asarray(window, dtype=float)
    return float(np.mean(window**p))


def check_window(geom: FlatSkyGeometry, window: ArrayLike) -> np.ndarray:
    """Validate a window array (shape ``geom.shape``, finite, not all zero)."""
    w = np.asarray(window, dtype=float)
    if w.shape != geom.shape:
        raise InputError(f"window: shape {w.shape} does not match the geometry {geom.shape}")
    if not np.all(np.isfinite(w)):
        raise InputError("window: contains non-finite values")
    if not np.any(w != 0):
        raise InputError("window: is zero everywhere")
    return w
