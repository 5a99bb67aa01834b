"""Custom Keras layers of the deepcmb networks, registered so that models load in Keras safe mode.

All are written with :mod:`keras.ops` only and run on the tensorflow, jax and torch backends.

- :class:`ApplyMask` multiplies the observed channels (and the noise map) by the mask channel, so that
  whatever a file holds where there are no data never reaches the convolutions.
- :class:`StokesToEB` splits the observed Stokes ``Q``, ``U`` into the E and B maps inside the network,
  so that a network file takes Q and U in µK whatever channels its convolutions read.
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

from ..fields import EB_INPUTS, multiplied_by_mask
from ..geometry import FlatSkyGeometry

PACKAGE = "deepcmb"


def _rotation_grids(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``cos 2 phi_l`` and ``sin 2 phi_l`` on the full ``(ny, nx)`` FFT grid, float32, equal to the values
    :meth:`~deepcmb.geometry.FlatSkyGeometry.qu2eb` uses on the half (rfft) grid, extended by
    ``f(-l) = f(l)``; on the Nyquist row and column this gives exactly the real maps the numpy split returns.
    The angle of a mode does not depend on the (square) pixel size."""
    ny, nx = shape
    c2r, s2r = FlatSkyGeometry(shape, 1.0).cos2phi_sin2phi()
    full = []
    for half in (c2r, s2r):
        f = np.empty((ny, nx))
        f[:, : nx // 2 + 1] = half
        ky = (-np.arange(ny)) % ny
        for kx in range(nx // 2 + 1, nx):
            f[:, kx] = half[ky, nx - kx]
        full.append(f.astype(np.float32))
    return full[0], full[1]


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
class ApplyMask(keras.layers.Layer):
    """Multiply every channel but the mask (and the Wiener-filtered maps, already weighted by it) by the mask
    channel: ``(b, ny, nx, C) -> (b, ny, nx, C)``.

    For observed maps :math:`d` this is the masked data :math:`M d` (nothing of a hole's content, a bright
    source or a zero, reaches the network), for the noise map the weight :math:`M\\,\\mathrm{ivar}_P` the
    inverse-variance filter of the quadratic estimator uses (:mod:`deepcmb.qe.cinv`); the mask itself passes
    unchanged. With the mask's edge taper reaching 0 on the patch border, the masked maps are continuous
    across it, so the periodic E/B split (:class:`StokesToEB`) and periodic padding that follow see no edge:
    the split of the masked Q, U is the pseudo-E/B of the apodised data. The Wiener-filtered ``E_wf`` and
    ``B_wf`` (:mod:`deepcmb.nn.wiener`) pass unchanged: they are the data's prediction over the whole patch.

    Parameters
    ----------
    names : list of str
        Channels of the input, in order; must hold ``mask``.
    """

    def __init__(self, names, **kwargs):
        super().__init__(**kwargs)
        self.names = [str(n) for n in names]
        if "mask" not in self.names:
            raise ValueError(f"ApplyMask: channels {self.names} hold no mask")

    def call(self, x: Any) -> Any:
        m = self.names.index("mask")
        weights = [x[..., m] if multiplied_by_mask(n) else ops.ones_like(x[..., m]) for n in self.names]
        return x * ops.stack(weights, axis=-1)

    def compute_output_shape(self, shape: tuple) -> tuple:
        return shape

    def get_config(self) -> dict:
        return {**super().get_config(), "names": self.names}


@keras.saving.register_keras_serializable(package=PACKAGE)
class StokesToEB(keras.layers.Layer):
    """The flat-sky E/B split of Stokes ``Q``, ``U`` channels, as a layer: ``(b, ny, nx, len(names_in))``
    -> ``(b, ny, nx, len(names_out))``.

    For every output channel ``E`` or ``B``,

    .. math::

        E(\\mathbf{l}) = Q(\\mathbf{l}) \\cos 2\\phi_l + U(\\mathbf{l}) \\sin 2\\phi_l, \\qquad
        B(\\mathbf{l}) = -Q(\\mathbf{l}) \\sin 2\\phi_l + U(\\mathbf{l}) \\cos 2\\phi_l,

    and the map is the inverse FFT, in the units of ``Q`` and ``U`` (µK): the same linear map as
    :meth:`deepcmb.geometry.FlatSkyGeometry.qu2eb_maps` (exact on periodic maps), computed in float32 with
    :func:`keras.ops.fft2`. Any other output channel is the input channel of the same name, passed through.

    Parameters
    ----------
    names_in : list of str
        Channels of the input, in order; must hold ``Q`` and ``U`` (e.g. ``['Q', 'U', 'kappa_qe']``).
    names_out : list of str
        Channels of the output, in order: ``E``, ``B`` or names of ``names_in``.
    """

    def __init__(self, names_in, names_out, **kwargs):
        super().__init__(**kwargs)
        self.names_in, self.names_out = [str(n) for n in names_in], [str(n) for n in names_out]
        if not {"Q", "U"} <= set(self.names_in) or \
                any(n not in EB_INPUTS and n not in self.names_in for n in self.names_out):
            raise ValueError(f"StokesToEB: inputs {self.names_in} must hold Q and U, outputs {self.names_out} "
                             "must be E, B or inputs")
        self._grids = {}

    def call(self, x: Any) -> Any:
        # the angles of the grid the layer is called on (not the one it was built or saved for: a network
        # rebuilt for larger maps, deepcmb.nn.reconstruct.at_shape, keeps this layer's config)
        shape = (int(x.shape[1]), int(x.shape[2]))
        if shape not in self._grids:
            self._grids[shape] = _rotation_grids(shape)
        c2, s2 = (ops.convert_to_tensor(g, x.dtype) for g in self._grids[shape])
        q, u = x[..., self.names_in.index("Q")], x[..., self.names_in.index("U")]
        zero = ops.zeros_like(q)
        qr, qi = ops.fft2((q, zero))
        ur, ui = ops.fft2((u, zero))
        rotations = {"E": (c2, s2), "B": (-s2, c2)}
        out = []
        for name in self.names_out:
            if name in rotations:
                a, b = rotations[name]
                out.append(ops.ifft2((a * qr + b * ur, a * qi + b * ui))[0])
            else:
                out.append(x[..., self.names_in.index(name)])
        return ops.stack(out, axis=-1)

    def compute_output_shape(self, shape: tuple) -> tuple:
        return (*shape[:3], len(self.names_out))

    def get_config(self) -> dict:
        return {**super().get_config(), "names_in": self.names_in, "names_out": self.names_out}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Standardize(keras.layers.Layer):
    """``(x - mean) / std`` per channel, with the channels' names and the training maps' pixel size, beam and
    noise levels recorded.

    Parameters
    ----------
    names : list of str
        Input channel names, in order (e.g. ``['Q', 'U']``).
    mean, std : list of float
        Per-channel statistics of the training split, in physical units.
    pixel_arcmin : float, optional
        Pixel size of the training maps, arcmin.
    beam_fwhm_arcmin : float, optional
        Beam of the training maps, arcmin.
    noise_p_uk_arcmin : list of float, optional
        Polarization noise levels of the training maps, µK-arcmin.

    Notes
    -----
    The last three are metadata, checked when the model is applied to data
    (:func:`deepcmb.nn.reconstruct.check_compatible`).
    """

    def __init__(self, names, mean, std, pixel_arcmin=None, beam_fwhm_arcmin=None, noise_p_uk_arcmin=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.names = [str(n) for n in names]
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.pixel_arcmin = None if pixel_arcmin is None else float(pixel_arcmin)
        self.beam_fwhm_arcmin = None if beam_fwhm_arcmin is None else float(beam_fwhm_arcmin)
        self.noise_p_uk_arcmin = None if noise_p_uk_arcmin is None else [float(v) for v in noise_p_uk_arcmin]
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
                "pixel_arcmin": self.pixel_arcmin, "beam_fwhm_arcmin": self.beam_fwhm_arcmin,
                "noise_p_uk_arcmin": self.noise_p_uk_arcmin}


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
