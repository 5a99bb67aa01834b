"""The ResUNet: lensed, noisy Q/U (read as such or as their E/B split; T, QE kappa optional) -> kappa and unlensed E.

:func:`build_resunet` is the one builder; every architectural choice comes from the ``model`` section of
the training config (:data:`deepcmb.nn.settings.MODEL_SCHEMA`). The default is the DeepCMB design (Caldeira et al. 2019):
residual blocks of 5 x 5 convolutions, each unit ``Dropout(0.3) -> Conv -> BatchNorm -> SELU``, an
encoder-decoder with long skip connections and one linear 1 x 1 convolution per output head.

Layout (``F = filters``, ``D = len(F) - 1`` downsamplings)::

    input (ny, nx, C), physical units [-> ApplyMask] [-> StokesToEB] -> Standardize -> stem unit (stride stem_stride) -> F[0]
    encoder, level i < D:   `blocks` residual blocks at F[i] (-> skip i), unit with stride 2 -> F[i+1]
    bottleneck:             `blocks` residual blocks at F[D]
    decoder, level i = D-1..0: upsample x2, unit -> F[i], concatenate skip i, `blocks` residual blocks
    (stem_stride 2: upsample x2 and a unit at F[0])
    head h: Conv 1x1 (linear) -> Destandardize(mean_h, std_h) -> output named h, physical units

The input holds the stored maps of the ``inputs`` channels (:func:`deepcmb.fields.stored_fields`: ``Q`` and
``U`` for ``E`` and ``B``); when ``inputs`` has ``E`` or ``B``, a :class:`~deepcmb.nn.layers.StokesToEB` layer
named ``eb_split`` makes them, so a network file always takes Stokes maps in µK. When ``inputs`` has
``mask`` (a survey network, ``train/survey.yaml``), a :class:`~deepcmb.nn.layers.ApplyMask` layer named
``apply_mask`` first multiplies the maps and the noise map ``ivar_p`` by it.

A residual block is ``unit(x) -> Dropout -> Conv -> Norm``, added to ``x`` (through a 1 x 1 projection
when the width changes), then the activation. With ``padding: periodic`` every convolution sees the
map wrapped around its edges (flat-sky simulations are periodic); ``same`` pads with zeros (use it for
non-periodic curved-sky patches). Map sides must be multiples of ``stem_stride * 2**D``.

Unrolled steps (``unrolled_steps: n``; inputs periodic E/B or Q/U alone, or the Wiener-filtered
``E_wf``, ``B_wf`` with a mask and a noise map): after the ResUNet above, each step ``s = 1 .. n`` repeats the
iterative estimators' move with a network in place of the quadratic estimator::

    step s: delensed maps = SubtractLensingB(input maps [after ApplyMask]; kappa_{s-1})  (step{s}_delens)
            [StokesToEB] -> concatenate kappa_{s-1} -> Standardize        (step{s}_standardize)
            a ResUNet of the same shape, every layer named step{s}_...   -> correction
            kappa_s = kappa_{s-1} + correction (standardised units; the steps have a kappa head only)

The lensing B that ``kappa_{s-1}`` predicts from the data's Wiener-filtered E is taken out of the data
(:class:`~deepcmb.nn.layers.SubtractLensingB`: from Q and U, or from ``B_wf`` with ``E_wf`` as the filtered E),
so the B the next ResUNet reads holds the noise and the
lensing B of the previous estimate's error, from which it corrects the estimate (Hirata & Seljak 2003;
Carron & Lewis 2017: at low noise the gain of an iterative estimator over the quadratic one comes from
delensing the B modes). The model's kappa is the last step's (the earlier steps' are named
``kappa_step<s>``); its other heads are the first network's. :func:`transfer_weights` starts new steps
from a trained network's last step, and :func:`freeze_steps` keeps the steps it already had fixed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import keras
import numpy as np
from keras import layers

from ..errors import ConfigError
from ..fields import UNFILTERED, WIENER_INPUTS, stored_fields
from .layers import ApplyMask, Destandardize, PeriodicPad2D, Standardize, StokesToEB, SubtractLensingB

if TYPE_CHECKING:
    from ..cosmology import CMBSpectra
    from ..sample import Instrument

PREVIOUS_KAPPA = "kappa_previous"
"""Channel name, in an unrolled step's :class:`~deepcmb.nn.layers.Standardize` layer, of the kappa of the step
before (standardised with the statistics of the kappa head)."""

def check_map_shape(cfg: dict, shape: tuple) -> None:
    """Check that maps of ``shape`` suit the downsamplings of a valid ``model`` section.

    Parameters
    ----------
    cfg : dict
        A ``model`` section that passed :func:`deepcmb.nn.settings.check_model_config`.
    shape : tuple of int
        ``(ny, nx)`` of the maps, in pixels.

    Raises
    ------
    ConfigError
        If a side is not divisible by ``stem_stride * 2**(len(filters) - 1)``, or (periodic padding)
        the bottleneck is smaller than half the kernel.
    """
    f, k = cfg["filters"], cfg["kernel_size"]
    factor = cfg["stem_stride"] * 2 ** (len(f) - 1)
    if any(n % factor for n in shape):
        raise ConfigError(f"model.filters: {len(f) - 1} downsamplings with stem_stride {cfg['stem_stride']} "
                          f"need map sides divisible by {factor}; the maps are {shape[0]} x {shape[1]}")
    side = min(shape) // factor
    if cfg["padding"] == "periodic" and side < k // 2:
        raise ConfigError(f"model.filters: {len(f) - 1} downsamplings leave {side} x {side} pixels at the "
                          f"bottleneck, fewer than the periodic padding of a {k} x {k} kernel needs; "
                          "use fewer levels or a smaller kernel")


def filters_e(inputs: Sequence[str]) -> bool:
    """Whether the delensing of an unrolled step filters the E of input channels ``inputs`` itself (with
    ``e_filter``, :func:`unrolled_e_filter`): Stokes data; not the Wiener-filtered ``E_wf``, ``B_wf``."""
    return not set(WIENER_INPUTS) <= set(inputs)


def unrolled_e_filter(spectra: CMBSpectra, instruments: Sequence[Instrument], pixel_arcmin: float) -> list[float]:
    """The Wiener filter of E that an unrolled step's delensing applies (``e_filter`` of :func:`build_resunet`).

    :func:`deepcmb.delensing.wiener_e_profile` of the fiducial lensed E spectrum with the training maps' beam
    and their lowest noise level, at ``l = 0 .. ceil(l_Nyquist)`` of the pixel: one filter for every noise
    level of a network (at 5 uK-arcmin it keeps E a little noisier than the optimal filter would).

    Parameters
    ----------
    spectra : CMBSpectra
        The fiducial spectra (:func:`deepcmb.cosmology.compute_spectra` of ``{}``).
    instruments : sequence of Instrument
        The training maps' instruments (one beam).
    pixel_arcmin : float
        Pixel side, arcmin.

    Returns
    -------
    list of float
        :math:`F_\\ell`, dimensionless.
    """
    from ..delensing import wiener_e_profile

    lowest = min(instruments, key=lambda i: i.noise_p_uk_arcmin)
    ell_nyquist = 180.0 * 60.0 / pixel_arcmin
    return wiener_e_profile(spectra.lensed[1], lowest.beam_fwhm_arcmin, lowest.noise_p_uk_arcmin,
                            np.arange(int(np.ceil(ell_nyquist)) + 1)).tolist()


class _Builder:
    def __init__(self, cfg, prefix=""):
        self.prefix = prefix
        self.k = cfg["kernel_size"]
        self.act = cfg["activation"]
        self.norm = cfg["normalization"]
        self.dropout = cfg["dropout"]
        self.periodic = cfg["padding"] == "periodic"
        self.init = "lecun_normal" if self.act == "selu" else "he_normal"
        self.count = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{self.prefix}{kind}_{self.count}"

    def conv(self, x: keras.KerasTensor, filters: int, kernel: int, stride: int = 1) -> keras.KerasTensor:
        pad = "same"
        if self.periodic and kernel > 1:
            x = PeriodicPad2D(kernel // 2, name=self.name("pad"))(x)
            pad = "valid"
        return layers.Conv2D(filters, kernel, strides=stride, padding=pad, kernel_initializer=self.init,
                             use_bias=self.norm == "none", name=self.name("conv"))(x)

    def unit(self, x: keras.KerasTensor, filters: int, stride: int = 1, activate: bool = True) -> keras.KerasTensor:
        """Dropout -> Conv (k x k) -> Norm -> activation."""
        if self.dropout > 0:
            x = layers.Dropout(self.dropout, name=self.name("dropout"))(x)
        x = self.conv(x, filters, self.k, stride)
        if self.norm == "batch":
            x = layers.BatchNormalization(name=self.name("bn"))(x)
        if activate:
            x = layers.Activation(self.act, name=self.name("act"))(x)
        return x

    def residual(self, x: keras.KerasTensor, filters: int) -> keras.KerasTensor:
        shortcut = x
        if x.shape[-1] != filters:
            shortcut = layers.Conv2D(filters, 1, kernel_initializer=self.init, name=self.name("proj"))(x)
        y = self.unit(x, filters)
        y = self.unit(y, filters, activate=False)
        y = layers.Add(name=self.name("add"))([y, shortcut])
        return layers.Activation(self.act, name=self.name("act"))(y)

    def upsample(self, x: keras.KerasTensor, filters: int) -> keras.KerasTensor:
        x = layers.UpSampling2D(2, name=self.name("up"))(x)
        return self.unit(x, filters)


def build_resunet(cfg: dict, shape: tuple, stats: dict | None = None, pixel_arcmin: float | None = None,
                  instruments: Sequence[Instrument] = (), name: str = "resunet",
                  e_filter: Sequence[float] | None = None) -> keras.Model:
    """Build the ResUNet described by a resolved ``model`` config.

    Parameters
    ----------
    cfg : dict
        A resolved and valid ``model`` section: the ``model`` of :func:`deepcmb.nn.settings.resolve_config`,
        or one resolved over :data:`deepcmb.nn.settings.MODEL_SCHEMA` and passed through
        :func:`deepcmb.nn.settings.check_model_config`. Its values are not checked again.
    shape : tuple of int
        ``(ny, nx)`` of the maps, in pixels; checked by :func:`check_map_shape`.
    stats : dict, optional
        Field name -> ``(mean, std)`` in physical units for every input and output (the training
        split's statistics); default ``(0, 1)``.
    pixel_arcmin : float, optional
        Pixel size, recorded in the model so that maps of another resolution can be refused.
    instruments : sequence of Instrument
        The training maps' instruments (:func:`deepcmb.io.sims.read_instruments`): their beam (one for
        all) and polarization noise levels are recorded in the model, to refuse another beam and report
        noise outside the training levels.
    name : str
        Name of the Keras model.
    e_filter : sequence of float, optional
        With ``unrolled_steps`` on Stokes inputs: the Wiener filter of E at ``l = 0, 1, ..`` that the
        delensing of each step uses (:class:`~deepcmb.nn.layers.SubtractLensingB`, :func:`unrolled_e_filter`).
        Not used on ``E_wf`` inputs (:func:`filters_e`), the Wiener-filtered E already.

    Returns
    -------
    keras.Model
        One input ``maps`` of shape ``(ny, nx, C)``: the ``C`` maps of ``stored_fields(cfg['inputs'])``
        in that order, physical units; a dict of outputs, one per head, each ``(ny, nx, 1)`` in physical
        units (of the last unrolled step).

    Raises
    ------
    ConfigError
        If ``shape`` does not suit the downsamplings (:func:`check_map_shape`), or unrolled steps lack
        ``e_filter`` (on Stokes inputs) or ``pixel_arcmin``.
    """
    check_map_shape(cfg, shape)
    stats = stats or {}
    takes = stored_fields(cfg["inputs"])
    inp = x = keras.Input(shape=(shape[0], shape[1], len(takes)), name="maps")
    if "mask" in takes:
        x = ApplyMask(takes, name="apply_mask", dtype="float32")(x)
    observed = x
    if takes != list(cfg["inputs"]):
        x = StokesToEB(takes, cfg["inputs"], name="eb_split", dtype="float32")(x)
    beams = {i.beam_fwhm_arcmin for i in instruments}
    if len(beams) > 1:
        raise ConfigError(f"training maps of several beams {sorted(beams)}: a network is trained for one beam")
    recorded = dict(beam_fwhm_arcmin=beams.pop() if beams else None,
                    noise_p_uk_arcmin=[i.noise_p_uk_arcmin for i in instruments] or None)
    x = _standardize(cfg["inputs"], stats, pixel_arcmin, "standardize", **recorded)(x)
    steps = cfg["unrolled_steps"]
    filtered = not filters_e(cfg["inputs"])
    if steps and ((e_filter is None and not filtered) or pixel_arcmin is None):
        raise ConfigError("model.unrolled_steps: the network needs the Wiener filter of E and the pixel size")
    heads = _resunet(cfg, x)
    outputs = {h: _destandardize(h, stats, f"{h}_step0" if steps and h == "kappa" else h)(y)
               for h, y in heads.items()}
    kappa = heads.get("kappa")  # standardised
    for step in range(1, steps + 1):
        last = step == steps
        delensed = SubtractLensingB(pixel_arcmin, None if filtered else e_filter, takes, name=f"step{step}_delens",
                                    dtype="float32")([observed, outputs["kappa"]])
        if takes != list(cfg["inputs"]):
            delensed = StokesToEB(takes, cfg["inputs"], name=f"step{step}_eb_split", dtype="float32")(delensed)
        x = layers.Concatenate(name=f"step{step}_with_kappa")([delensed, outputs["kappa"]])
        names = [*cfg["inputs"], PREVIOUS_KAPPA]
        x = _standardize(names, {**stats, PREVIOUS_KAPPA: stats.get("kappa", (0.0, 1.0))}, pixel_arcmin,
                         f"step{step}_standardize")(x)
        correction = _resunet({**cfg, "outputs": ["kappa"]}, x, prefix=f"step{step}_")["kappa"]
        # the previous step's kappa plus this step's correction, in the standardised units of the kappa head
        kappa = layers.Add(name=f"step{step}_kappa_sum")([kappa, correction])
        outputs["kappa"] = _destandardize("kappa", stats, "kappa" if last else f"kappa_step{step}")(kappa)
    return keras.Model(inp, outputs, name=name)


def _standardize(names, stats, pixel_arcmin, name, **recorded):
    mean_std = [stats.get(n, (0.0, 1.0)) for n in names]
    return Standardize(names, [m for m, _ in mean_std], [s for _, s in mean_std], pixel_arcmin, name=name,
                       dtype="float32", **recorded)


def _destandardize(head, stats, name):
    mean, std = stats.get(head, (0.0, 1.0))
    return Destandardize(mean, std, name=name, dtype="float32")


def _resunet(cfg: dict, x: keras.KerasTensor, prefix: str = "") -> dict[str, keras.KerasTensor]:
    """The encoder-decoder on standardised channels ``x``: one standardised ``(ny, nx, 1)`` map per head,
    every layer name starting with ``prefix``."""
    b = _Builder(cfg, prefix)
    f = cfg["filters"]
    depth = len(f) - 1
    x = b.unit(x, f[0], stride=cfg["stem_stride"])
    skips = []
    for level in range(depth):
        for _ in range(cfg["blocks"]):
            x = b.residual(x, f[level])
        skips.append(x)
        x = b.unit(x, f[level + 1], stride=2)
    for _ in range(cfg["blocks"]):
        x = b.residual(x, f[depth])
    for level in reversed(range(depth)):
        x = b.upsample(x, f[level])
        x = layers.Concatenate(name=b.name("skip"))([x, skips[level]])
        for _ in range(cfg["blocks"]):
            x = b.residual(x, f[level])
    if cfg["stem_stride"] == 2:
        x = b.upsample(x, f[0])
    # heads in float32 (mixed precision)
    return {head: layers.Conv2D(1, 1, name=f"{prefix}{head}_head", dtype="float32")(x) for head in cfg["outputs"]}


def transfer_weights(model: keras.Model, start: keras.Model) -> list[str]:
    """Copy the weights of ``start`` into ``model``, a network of the same layers that reads more input channels
    or has more unrolled steps.

    Every layer with weights takes those of the layer of the same name in ``start``. Where the two differ only
    in the input channels of the first convolution (a survey network widened from one without ``mask`` and
    ``ivar_p``), that kernel gets ``start``'s weights for the channels both read (matched by name through
    their :class:`~deepcmb.nn.layers.Standardize` layers) and zeros for the new ones: the widened network
    first computes exactly what ``start`` computes on the shared channels. A Wiener-filtered channel
    (:data:`deepcmb.fields.WIENER_INPUTS`) that ``start`` lacks takes the weights of its unfiltered map (``E_wf``
    those of ``E``): the same field, given to the network filtered. An unrolled step that ``start`` lacks
    (``step<s>_`` layers) takes the weights of ``start``'s last step, with zeros for the previous kappa it
    reads: it first computes what ``start``'s last network computes on the delensed data.

    Parameters
    ----------
    model, start : keras.Model
        Networks of :func:`build_resunet`; ``start``'s channels a subset of ``model``'s, its unrolled steps
        at most ``model``'s.

    Returns
    -------
    list of str
        The channels ``model``'s first network reads that ``start``'s does not (their kernel slices are zero).

    Raises
    ------
    ConfigError
        If a layer is missing from ``start`` or differs in another way.
    """
    new, old = model.get_layer("standardize").names, start.get_layer("standardize").names
    added = [n for n in new if n not in old and not (n in UNFILTERED and UNFILTERED[n] in old)]
    if any(n not in new and n not in [UNFILTERED.get(m) for m in new] for n in old):
        raise ConfigError(f"training.init_from: the network reads {old}, the model section {new}: only channels "
                          "can be added")
    have, had = unrolled_steps(model), unrolled_steps(start)
    if had > have:
        raise ConfigError(f"training.init_from: the network has {had} unrolled steps, the model section {have}")
    stems = [next(layer for layer in model.layers if isinstance(layer, layers.Conv2D) and _step_of(layer.name) == s)
             for s in range(have + 1)]  # the first convolution of each network reads the channels
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        step = _step_of(layer.name)
        source = step if step <= had else had
        name = _step_prefix(source) + layer.name[len(_step_prefix(step)):]
        try:
            given = start.get_layer(name).get_weights()
        except ValueError:
            raise ConfigError(f"training.init_from: the network has no layer {name!r}") from None
        stem = stems[step] is layer
        here = model.get_layer(_step_prefix(step) + "standardize").names
        there = start.get_layer(_step_prefix(source) + "standardize").names
        shapes = [w.shape for w in weights], [w.shape for w in given]
        if shapes[0] == shapes[1] and (not stem or here == there):
            layer.set_weights(given)
            continue
        kernel, was = weights[0], given[0]
        if not (stem and kernel.shape[2] == len(here) and was.shape[2] == len(there)
                and kernel.shape[:2] + kernel.shape[3:] == was.shape[:2] + was.shape[3:]
                and shapes[0][1:] == shapes[1][1:]):
            raise ConfigError(f"training.init_from: layer {layer.name!r} has weights {shapes[1]} there, "
                              f"{shapes[0]} here")
        kernel = np.zeros_like(kernel)
        for c, channel in enumerate(here):
            match = channel if channel in there else UNFILTERED.get(channel)
            if match in there:
                kernel[:, :, c, :] = was[:, :, there.index(match), :]
        layer.set_weights([kernel, *given[1:]])
    return added


def unrolled_steps(model: keras.Model) -> int:
    """Number of unrolled steps of a network of :func:`build_resunet` (0 for a plain ResUNet)."""
    return sum(1 for layer in model.layers if layer.name.endswith("_standardize"))


def freeze_steps(model: keras.Model, steps: int) -> None:
    """Make the layers of the first network and of unrolled steps ``1 .. steps - 1`` untrainable (their
    batch normalisation then runs in inference mode): ``steps`` networks taken trained from another model.

    Parameters
    ----------
    model : keras.Model
        A network of :func:`build_resunet` with unrolled steps.
    steps : int
        How many of its networks to freeze: 1 for the first alone; 0 freezes nothing.
    """
    for layer in model.layers:
        if layer.weights and _step_of(layer.name) < steps:
            layer.trainable = False


def _step_prefix(step: int) -> str:
    return f"step{step}_" if step else ""


def _step_of(name: str) -> int:
    head = name.split("_", 1)[0]
    return int(head[4:]) if head.startswith("step") and head[4:].isdigit() else 0


def model_spec(model: keras.Model) -> dict:
    """What a built or loaded model expects, read from the model itself, so a ``.keras`` file is self-describing.

    Returns
    -------
    dict
        ``inputs``: the maps the model takes, in the order of its input channels (``Q``, ``U``, ...);
        ``channels``: what its convolutions read after the optional E/B split (the names of its
        :class:`Standardize` layer, e.g. ``E``, ``B``); ``outputs``: the heads; ``shape``: ``(ny, nx)``;
        ``pixel_arcmin``, ``beam_fwhm_arcmin``, ``noise_p_uk_arcmin`` (list) of the training maps (None
        when the model does not record them); ``stats``: channel or head name -> ``(mean, std)`` of the
        training split.
    """
    try:
        std = model.get_layer("standardize")
    except ValueError:
        raise ConfigError(f"model {model.name!r}: not a deepcmb network (no 'standardize' layer)") from None
    outputs = list(model.output.keys()) if isinstance(model.output, dict) else [o.name for o in model.outputs]
    stats = {n: (m, s) for n, m, s in zip(std.names, std.mean, std.std)}
    for head in outputs:
        layer = model.get_layer(head)
        stats[head] = (layer.mean, layer.std)
    try:
        inputs = list(model.get_layer("eb_split").names_in)
    except ValueError:  # no E/B split: the channels are the inputs
        inputs = list(std.names)
    ny, nx = model.inputs[0].shape[1:3]
    return {"inputs": inputs, "channels": list(std.names), "outputs": outputs, "shape": (int(ny), int(nx)),
            "pixel_arcmin": std.pixel_arcmin, "beam_fwhm_arcmin": std.beam_fwhm_arcmin,
            "noise_p_uk_arcmin": std.noise_p_uk_arcmin, "stats": stats}
