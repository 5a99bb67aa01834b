"""Reconstruction with a trained network: simulation or observation file -> kappa (and E) maps in physical
units.

:func:`load_network` loads a model in Keras safe mode (no code from the file is executed) and
returns it with its description; :func:`check_compatible` refuses data the network was not trained
for; :func:`run_reconstruct_nn` is ``deepcmb reconstruct --method nn``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..config import resolve
from ..errors import InputError
from ..fields import SURVEY_INPUTS
from ..io.calibration import file_sha256
from ..io.files import check_output_file
from ..io.reconstruction import ReconstructionWriter, same_sims, sims_identity
from ..progress import Progress
from ..shipped import network
from ..uncertainty.stage import Uncertainty
from .augment import allowed_transforms, inverse_transform, transform_maps
from .settings import RECONSTRUCT_SCHEMA

if TYPE_CHECKING:
    import keras

    from ..sample import Instrument

    from .data import MapSource

log = logging.getLogger(__name__)

RMS_TOLERANCE = 3.0
"""Input maps whose rms differs from the training rms by more than this factor are refused."""


def load_network(path: str | Path) -> tuple[keras.Model, dict]:
    """Load a trained network.

    Parameters
    ----------
    path : str or Path
        A run folder of ``deepcmb train`` (its ``model.keras`` is used) or a ``.keras`` file.

    Returns
    -------
    (keras.Model, dict)
        The model and its description: ``inputs``, ``outputs``, ``shape``, ``pixel_arcmin``,
        ``stats`` (read from the model's own layers), plus ``card`` (``model.json`` when present).
    """
    import keras

    from . import layers  # noqa: F401  (registers the custom layers)
    from .model import model_spec

    path = Path(path)
    file = path / "model.keras" if path.is_dir() else path
    if not file.exists():
        hint = " (training unfinished? re-run `deepcmb train` to resume)" if path.is_dir() else ""
        raise InputError(f"{file}: no such model file{hint}")
    try:
        model = keras.saving.load_model(file, safe_mode=True, compile=False)
    except ValueError as exc:
        raise InputError(f"{file}: refused or unreadable model ({str(exc).splitlines()[0]})") from None
    except (OSError, KeyError) as exc:
        raise InputError(f"{file}: unreadable model ({exc})") from None
    spec = model_spec(model)
    if "kappa" not in spec["outputs"]:
        raise InputError(f"{file}: the model has no kappa head (outputs {spec['outputs']})")
    card_path = file.with_name("model.json")
    spec["card"] = json.loads(card_path.read_text()) if card_path.exists() else None
    if spec["card"] is not None:
        norm = spec["card"].get("normalization", {})
        for name, (mean, std) in spec["stats"].items():
            saved = norm.get(name)
            if saved is None or not np.isclose(saved["mean"], mean, rtol=1e-6, atol=0) or \
                    not np.isclose(saved["std"], std, rtol=1e-6, atol=0):
                raise InputError(f"{card_path}: its normalisation of {name!r} does not match {file.name}'s; "
                                 "the files come from different runs")
    return model, spec


def downsampling_factor(model: keras.Model) -> int:
    """Ratio of the input side to the coarsest feature map of a network (its map sides must divide by it)."""
    side = int(model.inputs[0].shape[1])
    coarsest = min(int(layer.output.shape[1]) for layer in model.layers if len(layer.output.shape) == 4)
    return side // coarsest


def at_shape(model: keras.Model, shape: tuple[int, int]) -> keras.Model:
    """The same fully convolutional network, with its weights, built for maps of another shape.

    Parameters
    ----------
    model : keras.Model
        A ResUNet of :func:`deepcmb.nn.model.build_resunet` (convolutions, normalisation, resampling
        and concatenation only: nothing depends on the map size but the input layer).
    shape : tuple of int
        ``(ny, nx)`` of the new maps, both divisible by :func:`downsampling_factor`.

    Returns
    -------
    keras.Model
        A model whose outputs on maps of ``shape`` use exactly the weights of ``model`` (periodic
        padding then wraps around the new map). Its field of view in pixels is unchanged, so features
        the network read across a whole training patch it now reads across part of a larger one.
    """
    import keras

    factor = downsampling_factor(model)
    if any(n % factor for n in shape):
        raise InputError(f"maps of {shape[0]} x {shape[1]} pixels: the network needs sides divisible by {factor}")
    config = model.get_config()
    first = config["layers"][0]["config"]
    first["batch_shape"] = [None, int(shape[0]), int(shape[1]), first["batch_shape"][-1]]
    resized = keras.Model.from_config(config)
    resized.set_weights(model.get_weights())
    return resized


def predict_symmetrized(model: keras.Model, x: np.ndarray, inputs: Sequence[str],
                        outputs: Sequence[str]) -> dict[str, np.ndarray]:
    """Network prediction averaged over the symmetries of the pixel grid (test-time augmentation).

    For every rotation by a multiple of 90 degrees and reflection ``g`` the grid admits
    (:func:`deepcmb.nn.augment.allowed_transforms`: 8 for square maps), the inputs are transformed as
    the fields they hold (spin-2 and pseudo-scalar signs of :mod:`deepcmb.nn.augment`), the network is
    applied, and its output is transformed back by ``g^-1``; the result is the mean of the outputs.
    An exactly equivariant network would return its plain prediction; a trained one is equivariant
    only up to its training noise, which the average reduces.

    Parameters
    ----------
    model : keras.Model
    x : ndarray, shape (n, ny, nx, n_inputs)
        Input batch in physical units, channels in the order of ``inputs``.
    inputs, outputs : list of str
        Field names of the input channels and of the output heads.

    Returns
    -------
    dict of str to ndarray, shape (n, ny, nx)
        Averaged prediction of each head, in the network's output units.
    """
    channels = {name: x[..., c] for c, name in enumerate(inputs)}
    total = {h: 0.0 for h in outputs}
    ks = allowed_transforms(x.shape[1:3])
    for k in ks:
        xk = transform_maps(channels, k)
        pred = model.predict_on_batch(np.ascontiguousarray(np.stack([xk[name] for name in inputs], axis=-1)))
        back = transform_maps({h: np.asarray(pred[h])[..., 0] for h in outputs}, inverse_transform(k))
        total = {h: total[h] + back[h] for h in outputs}
    return {h: v / len(ks) for h, v in total.items()}


def mask_aware(spec: dict) -> bool:
    """Whether a network takes masked maps: it reads both the mask and the noise map
    (:data:`deepcmb.fields.SURVEY_INPUTS`); others refuse files with a mask or a noise map."""
    return set(SURVEY_INPUTS) <= set(spec["inputs"])


def network_view(source: MapSource, spec: dict, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The channels a network's convolutions read (``spec['channels']``), as its layers make them from the maps
    of ``rows``: multiplied by the mask for a network that takes one
    (:class:`~deepcmb.nn.layers.ApplyMask`; not the Wiener-filtered maps), then split into E and B. Returns
    name -> ``(n, ny, nx)``."""
    from ..fields import EB_INPUTS, multiplied_by_mask

    maps = {name: source.read(name, rows).astype(np.float64) for name in spec["inputs"]}
    if "mask" in maps:
        maps = {name: m * maps["mask"] if multiplied_by_mask(name) else m for name, m in maps.items()}
    if any(name in EB_INPUTS for name in spec["channels"]):
        maps.update(zip(EB_INPUTS, source.geom.qu2eb_maps(maps["Q"], maps["U"])))
    return {name: maps[name] for name in spec["channels"]}


def check_instrument(spec: dict, pixel_arcmin: float, instruments: Sequence[Instrument], where: str) -> None:
    """Refuse maps of another pixel size (relative 1e-6) or beam (relative 1e-3) than the network was trained
    on, when the network records them; ``where`` names the maps in the message."""
    pix = spec["pixel_arcmin"]
    if pix is not None and not np.isclose(pix, pixel_arcmin, rtol=1e-6):
        raise InputError(f"{where}: pixels of {pixel_arcmin} arcmin, the model was trained on {pix} arcmin")
    beam = spec["beam_fwhm_arcmin"]
    beams = {i.beam_fwhm_arcmin for i in instruments}
    if beam is not None and not all(np.isclose(b, beam, rtol=1e-3) for b in beams):
        raise InputError(f"{where}: maps of beam {', '.join(f'{b:g}' for b in sorted(beams))} arcmin "
                         f"FWHM, the model was trained on {beam:g} arcmin")


def check_compatible(spec: dict, source: MapSource, rows: np.ndarray, n_check: int = 32,
                     any_shape: bool = False) -> None:
    """Refuse data the network cannot be applied to, with a message saying why.

    Checks the input maps are present, the map shape (unless ``any_shape``), pixel size and beam match,
    and the rms of each channel the network reads (after its E/B split; the mask and noise map excepted) over the first
    ``n_check`` maps lies within a factor :data:`RMS_TOLERANCE` of the training rms (a different unit, noise
    level or sky would otherwise pass silently); for a network that takes a mask, over the pixels where it is 1.
    """
    source.require(spec["inputs"], "the model's input maps")
    if tuple(source.shape) != tuple(spec["shape"]) and not any_shape:
        raise InputError(f"{source.sims_path}: maps are {source.shape[0]} x {source.shape[1]} pixels, the model "
                         f"was trained on {spec['shape'][0]} x {spec['shape'][1]} (--any-shape applies the "
                         "fully convolutional network to maps of another size)")
    check_instrument(spec, source.pixel_arcmin, source.instruments, str(source.sims_path))
    sample = rows[:n_check]
    seen = network_view(source, spec, sample)
    observed = seen["mask"] == 1 if "mask" in seen else np.ones((1,), bool)
    for name in spec["channels"]:
        if name in SURVEY_INPUTS:  # a constant noise map or mask is as valid as the training maps' varied ones
            continue
        m = seen[name]
        if not np.all(np.isfinite(m)):
            raise InputError(f"{source.sims_path}: NaN or inf in map {name!r} "
                             f"(row {sample[np.argwhere(~np.isfinite(m))[0][0]]})")
        mean, std = spec["stats"][name]
        rms = float(np.sqrt(np.mean(((m.astype(np.float64) - mean) ** 2)[np.broadcast_to(observed, m.shape)])))
        if not std / RMS_TOLERANCE <= rms <= std * RMS_TOLERANCE:
            raise InputError(f"{source.sims_path}: map {name!r} has rms {rms:.4g} about the training mean, the "
                             f"model was trained on rms {std:.4g}: normalisation mismatch (other units, noise "
                             "level or sky?)")


KAPPA_INPUT_KEYS = ("method", "estimator", "lmin", "lmax", "Lmin", "Lmax")
"""What a ``kappa_qe`` input file must share with the one the network was trained with."""


def check_kappa_input(spec: dict, source: MapSource) -> None:
    """Refuse a ``kappa_qe`` file made by another method, estimator or band than the network's training file
    (recorded in its card as ``qe_input``; cards without those keys are not checked)."""
    trained = ((spec.get("card") or {}).get("qe_input")) or {}
    if source.qe is None or not {"method", "estimator"} <= set(trained):
        return
    given = source.qe.identity

    def describe(d: dict) -> str:
        band = f"CMB {d.get('lmin', 0):g}-{d.get('lmax', 0):g}, L {d.get('Lmin', 0):g}-{d.get('Lmax', 0):g}"
        return f"{d.get('method')} {d.get('estimator')} ({band})"

    if any(given.get(k) != trained.get(k) for k in KAPPA_INPUT_KEYS):
        raise InputError(f"{source.qe.path}: a {describe(given)} reconstruction; the network's kappa_qe input was "
                         f"trained on a {describe(trained)} one: give a reconstruction made the same way")


def untrained_noise(spec: dict, source: MapSource) -> list[float]:
    """Polarization noise levels of ``source`` (µK-arcmin) outside the range of the model's training levels
    (empty when the model does not record them). The network still applies; the output records them."""
    levels = spec["noise_p_uk_arcmin"]
    if not levels:
        return []
    lo, hi = min(levels) * (1 - 1e-6), max(levels) * (1 + 1e-6)
    return sorted({i.noise_p_uk_arcmin for i in source.instruments if not lo <= i.noise_p_uk_arcmin <= hi})


def select_rows(source: MapSource, split: str, model_path: str | Path, spec: dict) -> np.ndarray:
    """Rows to reconstruct: all, or one split of the run that trained the model on this very file."""
    if split == "all":
        return np.arange(source.n_maps, dtype=np.int64)
    card = spec["card"]
    model_path = Path(model_path)
    run = model_path if model_path.is_dir() else model_path.parent
    if card is None or not (run / "splits.npz").exists():
        raise InputError(f"{model_path}: --split {split} needs the run folder with splits.npz")
    trained = card["trained_on"]
    if not same_sims(sims_identity(source.sims_path), trained):
        raise InputError(f"--split {split}: {source.sims_path} is not the file the model was trained on "
                         f"({trained['path']})")
    with np.load(run / "splits.npz") as s:
        return s[split]


def run_reconstruct_nn(config: dict | None, inputs: dict, out: str | Path, *, overwrite: bool = False,
                       progress: bool = True) -> Path:
    """Apply a trained network to a simulation or observation file and write the reconstruction.

    Parameters
    ----------
    config : dict or None
        Settings over :data:`deepcmb.nn.settings.RECONSTRUCT_SCHEMA`: ``batch_size`` (maps per forward
        pass); ``split`` (``'all'``, or one split of the run that trained the model on this very file:
        needs its run folder); ``any_shape`` (apply the network to periodic maps of another size than it
        was trained on, same pixel size, :func:`at_shape`; the output file records both shapes);
        ``symmetrize`` (average the prediction over the 8 symmetries of the grid,
        :func:`predict_symmetrized`; 8 network passes); ``edge_arcmin`` (a network that takes a mask, on
        non-periodic maps stored without one: the mask it is given is a cosine taper of this width along
        the border, so that the masked maps vanish there, as in its training).
    inputs : dict
        ``sims``: simulation file, or observation file (:mod:`deepcmb.io.observations`; one with a
        non-trivial mask or ``ivar_p`` is refused unless the network takes both, :func:`mask_aware`), holding the observed maps of the model's input
        channels; ``model`` (optional): run folder, ``.keras`` file or shipped network's name
        (:func:`deepcmb.shipped.network`, default :data:`deepcmb.shipped.DEFAULT_NETWORK`); ``qe`` (optional): QE
        reconstruction of ``sims`` (for a model with a ``kappa_qe`` input); ``uncertainty`` (optional):
        calibration file of ``deepcmb calibrate`` for this network, which adds the per-map posterior
        (:class:`~deepcmb.uncertainty.stage.Uncertainty`).
    out : str or Path
        Output HDF5 file in the layout of :mod:`deepcmb.io.reconstruction` (``method = 'nn'``).
    overwrite : bool
    progress : bool

    Returns
    -------
    Path
        The written file.
    """
    from .data import MapSource, SimsBatches

    cfg = resolve(config, RECONSTRUCT_SCHEMA)
    batch_size, split, any_shape, symmetrize = (cfg[k] for k in ("batch_size", "split", "any_shape", "symmetrize"))
    data, qe, model_path = inputs["sims"], inputs.get("qe"), inputs.get("model")
    check_output_file(out, overwrite)
    model_path = network(model_path)
    model, spec = load_network(model_path)
    source = MapSource(data, qe, method=None if mask_aware(spec) else "nn", edge_arcmin=cfg["edge_arcmin"])
    rows = select_rows(source, split, model_path, spec)
    check_compatible(spec, source, rows, any_shape=any_shape)
    check_kappa_input(spec, source)
    trained_shape = list(spec["shape"])
    if tuple(source.shape) != tuple(spec["shape"]):
        model = at_shape(model, source.shape)
    batches = SimsBatches(source, rows, spec["inputs"], [], batch_size, split="prediction")
    config = {"method": "nn", "model": str(model_path.resolve()), "batch_size": batch_size, "split": split,
              "qe": None if qe is None else str(Path(qe).resolve()), "any_shape": any_shape,
              "symmetrize": symmetrize, "edge_arcmin": cfg["edge_arcmin"],
              "model_card": {k: v for k, v in (spec["card"] or {}).items() if k != "config"},
              "training_config": (spec["card"] or {}).get("config")}
    outside = untrained_noise(spec, source)
    if outside:
        log.warning("%s: noise levels %s uK-arcmin lie outside the levels the network was trained on (%s)",
                    source.sims_path, outside, spec["noise_p_uk_arcmin"])
    model_file = model_path / "model.keras" if model_path.is_dir() else model_path
    attrs = {"model": str(model_path.resolve()), "model_inputs": list(spec["inputs"]), "split": split,
             "model_shape": trained_shape, "noise_outside_training": outside,
             "model_sha256": file_sha256(model_file), "symmetrize": symmetrize}
    levels = source.noise_index[rows]
    uq = None
    if inputs.get("uncertainty"):
        uq = Uncertainty(inputs["uncertainty"], "nn", attrs, source.geom,
                         [i.noise_p_uk_arcmin for i in source.instruments], data)
        attrs.update(uq.attrs)
    try:
        fields = list(spec["outputs"]) + (list(uq.fields) if uq else [])
        with ReconstructionWriter(out, rows, fields, data, "nn", config, attrs=attrs, overwrite=overwrite) as w, \
                Progress(len(rows), "reconstruct", "map", enabled=progress, log=log) as bar:
            for i in range(len(batches)):
                x, _ = batches[i]
                if symmetrize:
                    pred = predict_symmetrized(model, x, spec["inputs"], spec["outputs"])
                else:
                    pred = {h: np.asarray(p)[..., 0] for h, p in model.predict_on_batch(x).items()}
                maps = {h: pred[h] for h in spec["outputs"]}
                if uq:
                    start = i * batch_size
                    maps.update(uq.maps(maps["kappa"], levels[start:start + len(x)], rows[start:start + len(x)]))
                w.write(i * batch_size, maps)
                bar.update(len(x))
            w.write_meta("noise_index", levels)
            if uq:
                uq.finish(w, rows, levels)
    finally:
        source.close()
    return Path(out)
