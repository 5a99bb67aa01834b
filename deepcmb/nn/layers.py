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
- :class:`SubtractLensingB` removes from Stokes (or Wiener-filtered E/B) maps the lensing B modes that a
  kappa map predicts: the delensing of an unrolled step (:mod:`deepcmb.nn.model`).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from ..fields import EB_INPUTS, WIENER_INPUTS, multiplied_by_mask
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


@keras.saving.register_keras_serializable(package=PACKAGE)
class SubtractLensingB(keras.layers.Layer):
    """Observed maps minus the lensing B modes that a convergence map predicts from their own E modes:
    ``[(b, ny, nx, C) maps, (b, ny, nx, 1) kappa]`` -> ``(b, ny, nx, C)`` the same channels, delensed.

    The template is that of :func:`deepcmb.delensing.gradient_b_template`, written with :mod:`keras.ops`:
    the Wiener-filtered E of the data, :math:`E^{\\rm WF}_{\\boldsymbol\\ell} = F_\\ell E_{\\boldsymbol\\ell}`,
    lensed to first order by the deflection of :math:`\\hat\\phi_\\mathbf{L} = 2\\hat\\kappa_\\mathbf{L}/L^2`,

    .. math:: (Q + iU)^{\\rm temp} = \\nabla\\hat\\phi \\cdot \\nabla P^{\\rm WF}, \\qquad
              P^{\\rm WF}_{\\boldsymbol\\ell} = E^{\\rm WF}_{\\boldsymbol\\ell} e^{2i\\varphi_{\\boldsymbol\\ell}},

    and only its B modes are subtracted, so the E modes of the output are those of the input. With the
    true kappa this removes the lensing B of a periodic map to the accuracy of the first-order template
    (0.3 % of its power, :mod:`deepcmb.delensing`); with an estimate, what is left is the lensing B of the
    estimate's error plus the noise, from which a further network can correct the estimate (Hirata &
    Seljak 2003; Smith et al. 2012: iterative delensing). The filter is zero at and above the grid's
    Nyquist multipole, and phi and the subtracted B modes on the Nyquist row and column, so the layer
    commutes with the grid's rotations and reflections.

    The data are either Stokes ``Q``, ``U`` (E and B are those of their periodic split; the template's Q and
    U are subtracted) or the Wiener-filtered ``E_wf``, ``B_wf`` of :mod:`deepcmb.nn.wiener` (E is ``E_wf``,
    already filtered; the template's B map is subtracted from ``B_wf``). Other channels (a mask, a noise
    map) pass unchanged.

    Parameters
    ----------
    pixel_arcmin : float
        Pixel side, arcmin (sets the multipoles of the grid).
    e_filter : list of float or None
        :math:`F_\\ell` at ``l = 0, 1, ..`` (:func:`deepcmb.delensing.wiener_e_profile`), interpolated
        linearly at each mode's ``|l|``; zero beyond the table. ``None``: :math:`F_\\ell = 1` below the
        Nyquist multipole (the data's E is Wiener-filtered already).
    names : list of str
        The channels of ``maps``, in order: ``Q`` and ``U``, or ``E_wf`` and ``B_wf``, among others (default
        ``Q``, ``U`` alone: the layer of networks saved before it took other channels).
    """

    def __init__(self, pixel_arcmin, e_filter, names=("Q", "U"), **kwargs):
        super().__init__(**kwargs)
        self.pixel_arcmin = float(pixel_arcmin)
        self.e_filter = None if e_filter is None else [float(v) for v in e_filter]
        self.names = [str(n) for n in names]
        pair = next((p for p in (("Q", "U"), WIENER_INPUTS) if set(p) <= set(self.names)), None)
        if pair is None:
            raise ValueError(f"SubtractLensingB: channels {self.names} hold neither Q, U nor "
                             f"{', '.join(WIENER_INPUTS)}")
        self._stokes = pair == ("Q", "U")
        self._pair = [self.names.index(n) for n in pair]
        self._grids = {}

    def _grid(self, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        if shape not in self._grids:
            geom = FlatSkyGeometry(shape, self.pixel_arcmin)
            lx, ly = geom.lxly(real=False)
            ell = geom.ell(real=False)
            c2, s2 = geom.cos2phi_sin2phi(real=False)
            # off the Nyquist row and column, whose modes have no defined angle
            keep = (np.abs(np.fft.fftfreq(shape[0]))[:, None] < 0.5) & (np.abs(np.fft.fftfreq(shape[1])) < 0.5)
            table = np.ones(int(np.ceil(geom.ell_nyquist)) + 1) if self.e_filter is None else np.asarray(self.e_filter)
            f = np.where(ell < geom.ell_nyquist, np.interp(ell, np.arange(table.size), table, right=0.0), 0.0)
            inv = np.where((ell > 0) & keep, 2.0 / np.where(ell > 0, ell, 1.0) ** 2, 0.0)
            self._grids[shape] = {k: np.asarray(v, np.float32) for k, v in
                                  dict(ly=ly, lx=lx, f=f, inv=inv, c2=c2, s2=s2, keep=keep).items()}
        return self._grids[shape]

    def call(self, inputs: Any) -> Any:
        maps, kappa = inputs
        g = {k: ops.convert_to_tensor(v, maps.dtype) for k, v in
             self._grid((int(maps.shape[1]), int(maps.shape[2]))).items()}
        c2, s2, f = g["c2"], g["s2"], g["f"]

        def modes(m):
            return ops.fft2((m, ops.zeros_like(m)))

        def gradient(re, im, k):  # real map of the field with modes i k (re + i im)
            return ops.ifft2((-k * im, k * re))[0]

        first, second = self._pair
        if self._stokes:
            (qr, qi), (ur, ui) = modes(maps[..., first]), modes(maps[..., second])
            er, ei = f * (c2 * qr + s2 * ur), f * (c2 * qi + s2 * ui)
        else:
            er, ei = modes(maps[..., first])
            er, ei = f * er, f * ei
        kr, ki = modes(kappa[..., 0])
        pr, pi = g["inv"] * kr, g["inv"] * ki
        dy, dx = gradient(pr, pi, g["ly"]), gradient(pr, pi, g["lx"])
        tq = dy * gradient(c2 * er, c2 * ei, g["ly"]) + dx * gradient(c2 * er, c2 * ei, g["lx"])
        tu = dy * gradient(s2 * er, s2 * ei, g["ly"]) + dx * gradient(s2 * er, s2 * ei, g["lx"])
        (tqr, tqi), (tur, tui) = modes(tq), modes(tu)
        br, bi = g["keep"] * (-s2 * tqr + c2 * tur), g["keep"] * (-s2 * tqi + c2 * tui)
        if self._stokes:
            subtract = {first: ops.ifft2((-s2 * br, -s2 * bi))[0], second: ops.ifft2((c2 * br, c2 * bi))[0]}
        else:
            subtract = {second: ops.ifft2((br, bi))[0]}
        return ops.stack([maps[..., c] - subtract[c] if c in subtract else maps[..., c]
                          for c in range(len(self.names))], axis=-1)

    def compute_output_shape(self, shapes: tuple) -> tuple:
        return tuple(shapes[0])

    def get_config(self) -> dict:
        return {**super().get_config(), "pixel_arcmin": self.pixel_arcmin, "e_filter": self.e_filter,
                "names": self.names}
