"""Custom Keras layers of the deepcmb networks, registered so that models load in Keras safe mode.

All three are written with :mod:`keras.ops` only and run on the tensorflow, jax and torch backends.

- :class:`PeriodicPad2D` wraps a channels-last map around its edges (flat-sky simulations are
  periodic, so a convolution after periodic padding treats every pixel alike).
- :class:`Standardize` maps physical input channels to zero mean, unit variance with statistics of the
  training split; it also records the channel names and pixel size the model expects.
- :class:`Destandardize` maps a normalised output back to physical units (µK, or dimensionless kappa).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

PACKAGE = "deepcmb"


@keras.saving.register_keras_serializable(package=PACKAGE)
class PeriodicPad2D(keras.layers.Layer):
    """Pad ``(batch, ny, nx, channels)`` maps periodically by ``pad`` pixels on every side.

    Parameters
    ----------
    pad : int
        Pixels added before and after each spatial axis (``kernel_size // 2`` for an odd kernel).
    """

    def __init__(self, pad, **kwargs):
        super().__init__(**kwargs)
        self.pad = int(pad)

    def call(self, x: Any) -> Any:
        p = self.pad
        if p == 0:
            return x
        x = ops.concatenate([x[:, -p:], x, x[:, :p]], axis=1)
        return ops.concatenate([x[:, :, -p:], x, x[:, :, :p]], axis=2)

    def compute_output_shape(self, shape: tuple) -> tuple:
        grow = lambda n: None if n is None else n + 2 * self.pad  # noqa: E731
        return (shape[0], grow(shape[1]), grow(shape[2]), shape[3])

    def get_config(self) -> dict:
        return {**super().get_config(), "pad": self.pad}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Standardize(keras.layers.Layer):
    """``(x - mean) / std`` per channel, with the channels' names and the maps' pixel size recorded.

    Parameters
    ----------
    names : list of str
        Input channel names, in order (e.g. ``['Q', 'U']``).
    mean, std : list of float
        Per-channel statistics of the training split, in physical units.
    pixel_arcmin : float, optional
        Pixel size of the training maps (metadata checked when the model is applied to data).
    """

    def __init__(self, names, mean, std, pixel_arcmin=None, **kwargs):
        super().__init__(**kwargs)
        self.names = [str(n) for n in names]
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.pixel_arcmin = None if pixel_arcmin is None else float(pixel_arcmin)
        if not (len(self.names) == len(self.mean) == len(self.std)) or min(self.std) <= 0:
            raise ValueError("Standardize: names, mean and std need one entry per channel, std > 0")
        self._shift = np.asarray(self.mean, "float32")
        self._scale = np.asarray(1.0 / np.asarray(self.std, "float64"), "float32")

    def call(self, x: Any) -> Any:
        return (x - ops.convert_to_tensor(self._shift, x.dtype)) * ops.convert_to_tensor(self._scale, x.dtype)

    def compute_output_shape(self, shape: tuple) -> tuple:
        return shape

    def get_config(self) -> dict:
        return {**super().get_config(), "names": self.names, "mean": self.mean, "std": self.std,
                "pixel_arcmin": self.pixel_arcmin}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Destandardize(keras.layers.Layer):
    """``y * std + mean``: a normalised one-channel output back in physical units.

    Parameters
    ----------
    mean, std : float
        Statistics of the target on the training split, in physical units.
    """

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean, self.std = float(mean), float(std)
        if not self.std > 0:
            raise ValueError("Destandardize: std must be positive")

    def call(self, y: Any) -> Any:
        return y * ops.cast(self.std, y.dtype) + ops.cast(self.mean, y.dtype)

    def compute_output_shape(self, shape: tuple) -> tuple:
        return shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mean": self.mean, "std": self.std}
