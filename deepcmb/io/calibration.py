"""The calibration file of ``deepcmb calibrate``: what a reconstruction method's per-map uncertainty rests on.

Layout (``format = 'deepcmb.calibration'``, ``format_version = 3``)::

    /              attrs: format, format_version, deepcmb_version, git_revision, software, stage, created,
                          config (JSON), method ('nn' | 'qe' | 'map'), identity (JSON: what makes two
                          reconstructions the same method, :func:`method_identity`), reconstruction
                          (absolute path of the calibration reconstruction), sims_file (its simulation
                          file), shape (ny, nx), pixel_arcmin
    /modes/edges      (nring + 1,) float64   ring edges in |L| (deepcmb.uncertainty.modes.ring_edges)
    /modes/transfer   (n_levels, nring) float64   regression coefficient a_b; for a calibration on masked
                      or non-periodic maps (with /window) per cell of the rfft grid, (n_levels, ny, nx // 2 + 1)
    /modes/residual   the shape of transfer, float64   posterior variance R_b of a Fourier mode (sr^2)
    /modes/noise_p    (n_levels,) float64   polarization noise of each level (uK-arcmin)
    /modes/n_maps     (n_levels,) int64     calibration maps per level
                      attrs: lmax (L_uq, the low-pass of the posterior)
    /ood/edges        (nbin + 1,) float64   multipole bin edges of the input score
    /ood/mean, /ood/std   (n_levels, 2 nbin) float64   log EE and BB band powers of each level's
                      calibration maps (deepcmb.uncertainty.ood)
    /ood/threshold    (n_levels,) float64   t_k: the 0.99 quantile of the scores S_k of level k's maps
    /ood/noise_p      (n_levels,) float64   polarization noise of each level (uK-arcmin)
    /ood/n_maps       (n_levels,) int64     calibration maps per level
    /ood/scores       (n,) float64          the calibration maps' own ood_score, min_k S_k / t_k
    /window           only for calibration maps with a mask, a noise map or edges (masked or non-periodic):
                      attrs: fwhm_arcmin (smoothing of the local depth, deepcmb.uncertainty.window)
    /window/depth     (n_levels, n_bins) float64   mean local depth of each bin (dimensionless)
    /window/ratio     (n_levels, n_bins) float64   residual variance of the bin over the stationary sigma^2

The levels of ``/ood`` and ``/window`` are those of ``/modes`` (the noise levels of the calibration maps).
A calibration with ``/window`` applies to masked or non-periodic maps only, one without it to maps without
a mask or noise map.

Format version 2 (read as well) is version 3 without ``/window``.

Format version 1 (read as well) has one reference pooled over every level: ``/ood/mean`` and ``/ood/std``
of shape (2 nbin,), its threshold as the attribute ``threshold`` of ``/ood``, no ``/ood/noise_p`` or
``/ood/n_maps``, and ``/ood/scores`` the unnormalised S. It reads as a reference of one level (noise_p
NaN, unless the calibration has a single level), whose ``ood_score`` is S / t.

Written atomically (``OUT.tmp``, then renamed).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..provenance import provenance_attrs
from .files import H5View, atomic_h5, text

FORMAT = "deepcmb.calibration"
FORMAT_VERSION = 3
"""The version this deepcmb writes; it reads this one and :data:`READ_VERSIONS`."""

READ_VERSIONS = (1, 2, 3)
"""Format versions this deepcmb reads (1: one input-score reference pooled over the noise levels; 2: no
``/window``)."""

IDENTITY = {"nn": ("model_sha256", "symmetrize"),
            "qe": ("estimator", "lmin", "lmax", "Lmin", "Lmax", "wiener", "apodize_arcmin", "filter", "mean_field",
                   "response_correction"),
            "map": ("estimator", "lmin", "lmax", "Lmin", "Lmax", "mean_field")}
"""Per method, the root attributes of a reconstruction file that must agree for a calibration to apply (a
calibration file written before one was added is not compared on it)."""


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def method_identity(method: str, attrs: dict) -> dict:
    """What identifies a reconstruction method: ``method`` and its :data:`IDENTITY` attributes, read from a
    reconstruction file's root attributes (or the ones a stage is about to write) as plain values."""
    out = {"method": method}
    for key in IDENTITY[method]:
        value = text(attrs.get(key))
        out[key] = value.item() if isinstance(value, np.generic) else value
    return out


def write_calibration(out: str | Path, config: dict, identity: dict, modes, reference, scores: np.ndarray,
                      reconstruction: str | Path, sims_file: str | Path, window=None) -> Path:
    """Write a calibration file (layout in the module docstring).

    Parameters
    ----------
    out : str or Path
    config : dict
        The resolved config of the stage.
    identity : dict
        :func:`method_identity` of the calibration reconstruction.
    modes : deepcmb.uncertainty.modes.ModeCalibration
    reference : deepcmb.uncertainty.ood.Reference
    scores : ndarray, shape (n,)
        The calibration maps' ``ood_score`` (:meth:`~deepcmb.uncertainty.ood.Reference.score`).
    reconstruction, sims_file : str or Path
        The files it was measured on.
    window : deepcmb.uncertainty.window.WindowCalibration, optional
        For calibration maps that are masked or non-periodic.
    """
    with atomic_h5(out) as f:
        f.attrs.update(provenance_attrs(config, "calibrate"))
        f.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, method=identity["method"],
                       identity=json.dumps(identity, sort_keys=True), reconstruction=str(Path(reconstruction).resolve()),
                       sims_file=str(Path(sims_file).resolve()), shape=np.array(modes.shape),
                       pixel_arcmin=modes.pixel_arcmin)
        g = f.create_group("modes")
        g.attrs["lmax"] = modes.lmax
        for name in ("edges", "transfer", "residual", "noise_p", "n_maps"):
            g.create_dataset(name, data=getattr(modes, name))
        g = f.create_group("ood")
        for name in ("edges", "mean", "std", "noise_p", "n_maps"):
            g.create_dataset(name, data=getattr(reference, name))
        g.create_dataset("threshold", data=reference.thresholds)
        g.create_dataset("scores", data=np.asarray(scores, float))
        if window is not None:
            g = f.create_group("window")
            g.attrs["fwhm_arcmin"] = window.fwhm_arcmin
            g.create_dataset("depth", data=window.depth)
            g.create_dataset("ratio", data=window.ratio)
    return Path(out)


def read_calibration(path: str | Path) -> tuple[dict, object, object]:
    """Read a calibration file.

    Returns
    -------
    identity : dict
        :func:`method_identity` of the method it calibrates.
    modes : deepcmb.uncertainty.modes.ModeCalibration
    reference : deepcmb.uncertainty.ood.Reference
    """
    from ..uncertainty.modes import ModeCalibration

    with H5View(path, FORMAT, "calibration (deepcmb calibrate)") as f:
        edges = f.array("modes/edges", dtype=float, ndim=1)
        noise_p = f.array("modes/noise_p", dtype=float, ndim=1)
        shape = tuple(int(s) for s in f.attr("shape"))
        per = (shape[0], shape[1] // 2 + 1) if f.has("window") else (edges.size - 1,)  # per cell, or per ring
        modes = ModeCalibration(
            edges=edges, transfer=f.array("modes/transfer", dtype=float, shape=(noise_p.size, *per), finite=True),
            residual=f.array("modes/residual", dtype=float, shape=(noise_p.size, *per), finite=True),
            noise_p=noise_p, n_maps=f.array("modes/n_maps", dtype=np.int64, shape=noise_p.shape),
            lmax=float(f.attr("lmax", "modes")), shape=shape, pixel_arcmin=float(f.attr("pixel_arcmin")))
        version = f.attr("format_version")
        if not isinstance(version, (int, np.integer)) or int(version) not in READ_VERSIONS:
            raise InputError(f"{path}: format_version {text(version)!s} is not supported (this deepcmb reads "
                             f"{', '.join(map(str, READ_VERSIONS))})")
        reference = _read_reference(f, int(version), modes)
        try:
            identity = json.loads(f.attr("identity"))
        except json.JSONDecodeError:
            raise InputError(f"{path}: unreadable identity attribute") from None
    return identity, modes, reference


def read_window(path: str | Path):
    """The local-depth calibration of a calibration file (:class:`deepcmb.uncertainty.window.WindowCalibration`),
    or None for one made on periodic maps without a mask or noise map."""
    from ..uncertainty.window import WindowCalibration

    with H5View(path, FORMAT, "calibration (deepcmb calibrate)") as f:
        if not f.has("window"):
            return None
        n_levels = f.array("modes/noise_p", dtype=float, ndim=1).size
        depth = f.array("window/depth", dtype=float, ndim=2, finite=True)
        if depth.shape[0] != n_levels:
            raise InputError(f"{path}: /window/depth has {depth.shape[0]} levels, /modes {n_levels}")
        return WindowCalibration(fwhm_arcmin=float(f.attr("fwhm_arcmin", "window")), depth=depth,
                                 ratio=f.array("window/ratio", dtype=float, shape=depth.shape, finite=True))


def _read_reference(f: H5View, version: int, modes):
    """The input-score reference of an open calibration file of format ``version``; a version-1 file's pooled
    reference is one level of all the calibration maps, at the calibration's noise level if it has one, else
    NaN."""
    from ..uncertainty.ood import Reference

    edges = f.array("ood/edges", dtype=float, ndim=1)
    nbin = 2 * (edges.size - 1)
    if version == 1:
        return Reference(edges=edges, mean=f.array("ood/mean", dtype=float, shape=(nbin,), finite=True)[None],
                         std=f.array("ood/std", dtype=float, shape=(nbin,), finite=True)[None],
                         thresholds=np.array([float(f.attr("threshold", "ood"))]),
                         noise_p=modes.noise_p if modes.noise_p.size == 1 else np.array([np.nan]),
                         n_maps=np.array([modes.n_maps.sum()], np.int64))
    levels = f.array("ood/noise_p", dtype=float, ndim=1)
    return Reference(edges=edges, mean=f.array("ood/mean", dtype=float, shape=(levels.size, nbin), finite=True),
                     std=f.array("ood/std", dtype=float, shape=(levels.size, nbin), finite=True),
                     thresholds=f.array("ood/threshold", dtype=float, shape=levels.shape, finite=True),
                     noise_p=levels, n_maps=f.array("ood/n_maps", dtype=np.int64, shape=levels.shape))
