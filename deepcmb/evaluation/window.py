"""The window of an evaluation: a cosine taper on the patch border and, on masked maps, each map's mask.

Spectra of a windowed map are pseudo-spectra: for a field :math:`f` of power :math:`C_L` on a patch
and a window :math:`W` that varies slowly against the modes measured,
:math:`\\langle |\\widetilde{W f}(\\mathbf{L})|^2 \\rangle \\simeq \\langle W^2 \\rangle\\, C_L`, so each
pseudo-spectrum is divided by the pixel mean of the power of the window it carries
(Hivon et al. 2002, the :math:`w_2` of a flat patch). Kappa maps are brought to :math:`W^2 \\kappa`
(the footing of a quadratic estimator run on windowed maps) and their spectra divided by
:math:`w_4 = \\langle W^4 \\rangle`; E maps carry :math:`W` and :math:`w_2 = \\langle W^2 \\rangle`.

The window is

.. math:: W_i(\\mathbf{x}) = T(\\mathbf{x})\\, M_i(\\mathbf{x}),

with :math:`T` the separable cosine taper of ``evaluate.apodize_arcmin``
(:func:`deepcmb.qe.cosine_window`; 1 when the taper is 0) and :math:`M_i` the mask of map ``i``
(``/mask`` of a simulation or observation file; 1 without one). On masked maps the mask is the
window and the taper defaults to 0: the survey's mask (:mod:`deepcmb.survey`) already goes to 0
smoothly on the border of a non-periodic patch (``survey.mask.edge_arcmin``); set ``apodize_arcmin``
for a mask that does not. The moments :math:`w_2, w_4` are then per map, so every figure of merit
measures the reconstruction over the observed region only: what lies in the holes and beyond the
edge does not count.

References
----------
Hivon et al. (2002), ApJ 567, 2 (pseudo-spectra of masked maps).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError
from ..qe import cosine_window, default_taper

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from ..geometry import FlatSkyGeometry
    from ..io.maps import Maps


class Window:
    """The window :math:`W_i = T M_i` of an evaluation (module docstring).

    Parameters
    ----------
    geom : FlatSkyGeometry
    maps : Maps
        The open simulation or observation file (its ``/mask``, if it has one that is not all ones).
    apodize_arcmin : float or None
        Width of the cosine taper, arcmin; None: 0 on masked or periodic maps, else
        :data:`deepcmb.qe.apodization.TAPER_ARCMIN`.

    Attributes
    ----------
    taper_arcmin : float
    masked : bool
        Whether the maps' masks are part of the window.
    """

    def __init__(self, geom: FlatSkyGeometry, maps: Maps, apodize_arcmin: float | None):
        lo_hi = maps.weight_range.get("mask")
        self.masked = lo_hi is not None and lo_hi != (1.0, 1.0)
        self._maps = maps
        if apodize_arcmin is not None:
            self.taper_arcmin = float(apodize_arcmin)
        else:
            self.taper_arcmin = 0.0 if self.masked else default_taper(maps.periodic)
        self._taper = None
        if self.taper_arcmin > 0:
            try:
                self._taper = cosine_window(geom, self.taper_arcmin)
            except ConfigError as exc:
                raise ConfigError(f"evaluate.apodize_arcmin: {exc}") from None
        # the moments of the taper alone: those of every map when there is no mask
        self._w2, self._w4 = ((1.0, 1.0) if self._taper is None
                              else (float(np.mean(self._taper**2)), float(np.mean(self._taper**4))))

    @property
    def applies(self) -> bool:
        """Whether the window is anything but 1."""
        return self.masked or self._taper is not None

    def at(self, rows: ArrayLike) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """The window of the maps at ``rows`` of the file and its moments.

        Parameters
        ----------
        rows : array_like of int, shape (b,)

        Returns
        -------
        window : ndarray, shape (b, ny, nx) or (ny, nx), or None
            None when it is 1.
        w2, w4 : ndarray, shape (b,)
            :math:`\\langle W^2 \\rangle`, :math:`\\langle W^4 \\rangle` of each map (pixel means).
        """
        rows = np.asarray(rows, np.int64)
        if not self.masked:
            return self._taper, np.full(rows.size, self._w2), np.full(rows.size, self._w4)
        window = self._maps.read("mask", rows).astype(np.float64)
        if self._taper is not None:
            window = window * self._taper
        w2, w4 = (np.mean(window**p, axis=(1, 2)) for p in (2, 4))
        if np.any(w2 == 0):
            raise ConfigError(f"{self._maps.path}: the window of map {rows[np.flatnonzero(w2 == 0)[0]]} is zero "
                              "everywhere (its mask observes nothing)")
        return window, w2, w4

    def summary(self, rows: ArrayLike) -> dict[str, float | bool]:
        """``apodize_arcmin``, ``masked`` and the mean ``window_w2``, ``window_w4`` over ``rows``: the
        report's window attributes."""
        rows = np.asarray(rows, np.int64)
        w2, w4 = self._w2, self._w4
        if self.masked and rows.size:  # each map's mask: read again, in blocks
            moments = np.concatenate([np.stack(self.at(rows[i:i + 512])[1:], axis=1)
                                      for i in range(0, rows.size, 512)])
            w2, w4 = (float(m) for m in moments.mean(axis=0))
        return {"apodize_arcmin": self.taper_arcmin, "masked": self.masked, "window_w2": w2, "window_w4": w4}
