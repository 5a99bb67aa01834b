"""Losses of the network beyond Keras' own: a mean squared error weighted per Fourier mode.

A pixel MSE on kappa is dominated by the large-scale modes, which carry most of the power but few of
the modes; the small scales, where the QE is noisiest and most of the lensing S/N of a 1 uK-arcmin
survey lies, hardly count. :class:`FourierWeightedMSE` weights each mode of the residual by
``w(L) = 1 / (C_L^kk + N_L)``, the inverse variance of the QE's estimate of that mode (``N_L``: the
analytic N0 of the QE the network is compared with), so every mode counts by its information.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
from keras import ops

from .layers import PACKAGE

if TYPE_CHECKING:
    from ..geometry import FlatSkyGeometry


@keras.saving.register_keras_serializable(package=PACKAGE)
class FourierWeightedMSE(keras.losses.Loss):
    """Mean squared error of ``(batch, ny, nx, 1)`` maps with weights on the Fourier modes.

    ``loss = sum_l w_l |R_l|^2 / (ny nx)^2`` per map, with ``R = FFT(y_pred - y_true)`` and
    weights normalised to a mean of one over the full ``(ny, nx)`` grid, so that uniform weights
    give the pixel MSE (Parseval).

    Parameters
    ----------
    weights : array_like, shape (ny, nx // 2 + 1)
        Non-negative weights on the rfft grid of the maps (``deepcmb.geometry`` layout).
    """

    def __init__(self, weights, name="fourier_weighted_mse", **kwargs):
        super().__init__(name=name, **kwargs)
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 2 or not np.all(np.isfinite(w)) or np.any(w < 0) or not w.any():
            raise ValueError("FourierWeightedMSE: weights must be a finite, non-negative, non-zero 2-d array")
        self.ny = w.shape[0]
        self.nx = 2 * (w.shape[1] - 1)
        mult = np.full(w.shape[1], 2.0)  # rfft columns 1 .. nx/2 - 1 stand for two modes each
        mult[0] = mult[-1] = 1.0
        total = (w * mult).sum()
        self._weights = w
        # (nx//2 + 1, ny) layout of the transformed residual, folded with the multiplicity and the norm
        self._kernel = (w * mult * (self.ny * self.nx) / total).T / (self.ny * self.nx) ** 2

    def call(self, y_true: Any, y_pred: Any) -> Any:
        r = ops.cast(y_pred, "float32")[..., 0] - ops.cast(y_true, "float32")[..., 0]
        re, im = ops.rfft(r)  # along x: (b, ny, nx//2 + 1)
        re, im = ops.fft((ops.swapaxes(re, 1, 2), ops.swapaxes(im, 1, 2)))  # along y: (b, nx//2 + 1, ny)
        kernel = ops.convert_to_tensor(self._kernel, dtype="float32")
        return ops.sum((ops.square(re) + ops.square(im)) * kernel, axis=(1, 2))

    def get_config(self) -> dict:
        return {**super().get_config(), "weights": self._weights.tolist()}


def inverse_variance_weights(geom: FlatSkyGeometry, clkk: np.ndarray, n0_levels: Sequence[np.ndarray]) -> np.ndarray:
    """Mode weights ``1 / (C_L^kk + N_L)`` on the rfft grid, averaged over noise levels.

    Parameters
    ----------
    geom : FlatSkyGeometry
    clkk : ndarray, shape (ny, nx // 2 + 1)
        Convergence power on the grid (sr).
    n0_levels : sequence of ndarray, shape (ny, nx // 2 + 1)
        The QE's N0 of kappa on the grid at each noise level (inf outside its band).

    Returns
    -------
    ndarray, shape (ny, nx // 2 + 1)
        ``mean_j 1 / (C + N_j)``; modes outside the QE band (and L = 0) get the smallest in-band
        weight, so the network is still asked to keep them small.
    """
    w = np.mean([1.0 / (clkk + n0) for n0 in n0_levels], axis=0)
    inband = np.isfinite(w) & (w > 0) & (geom.ell() > 0)
    if not inband.any():
        raise ValueError("inverse_variance_weights: no Fourier mode with finite N0")
    return np.where(inband, w, w[inband].min())
