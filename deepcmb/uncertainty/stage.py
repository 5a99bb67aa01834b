"""``deepcmb calibrate`` (a reconstruction of calibration maps -> calibration file) and its use by the
reconstruction stages (``deepcmb reconstruct ... --uncertainty CALIBRATION``).

The calibration maps are simulations with their truth that neither trained the network nor test it
(``deepcmb run`` simulates a set of its own, ``run.uncertainty``); every method is calibrated on the same
maps, reconstructed exactly as the maps it will be applied to. :class:`Uncertainty` adds to a
reconstruction file, for each map: the posterior mean ``/maps/kappa_mean`` and standard deviation
``/maps/kappa_sigma`` of the true convergence low-passed to :math:`|L| \\le L_{\\rm uq}` (root attribute
``uq_lmax``), the input's score ``/meta/ood_score`` (:mod:`~deepcmb.uncertainty.ood`: against the
calibration maps of each noise level, normalised by that level's 0.99 quantile; the root attribute
``ood_threshold`` is 1, above which a map is unlike those of every level), the calibrated noise level it used
``/meta/uq_level``, and the per-mode posterior in the group ``/uncertainty`` (``edges``, ``transfer``,
``residual``, ``noise_p``: :mod:`~deepcmb.uncertainty.modes`), from which :func:`posterior_samples` draws. The cost is two FFTs per map.

Calibration maps with a mask, a noise map or edges (masked or non-periodic) are calibrated per cell of
the Fourier grid rather than per ring (they are not isotropic, :mod:`~deepcmb.uncertainty.modes`) and for
the variance of each pixel as a function of its local depth (:mod:`~deepcmb.uncertainty.window`); such a
calibration applies to masked or non-periodic maps only, and masked maps need one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..config import Int, Number, resolve
from ..errors import InputError
from ..geometry import FlatSkyGeometry
from ..io.calibration import method_identity, read_calibration, read_window, write_calibration
from ..io.files import check_output_file
from ..io.maps import open_maps, read_weights
from ..io.reconstruction import open_reconstruction
from ..progress import Progress
from .coverage import lowpass
from .modes import ModeCalibration, measure
from .ood import QUANTILE, THRESHOLD, reference
from .window import WindowCalibration, local_depth, measure_window

log = logging.getLogger(__name__)

SCHEMA = {
    "uq_lmax": Number(1000.0, gt=0, doc="L_uq: the posterior is that of the convergence low-passed to |L| <= lmax"),
    "ood_bins": Int(8, min=1, doc="logarithmic multipole bins of the E and B band powers of the input score"),
    "window_fwhm_arcmin": Number(30.0, gt=0, doc="masked or non-periodic calibration maps: FWHM of the smoothing "
                                 "of the local depth the variance of a pixel depends on"),
    "window_bins": Int(10, min=1, doc="masked or non-periodic calibration maps: bins of equal pixel count in "
                                      "local depth, per noise level"),
}
"""Settings of ``deepcmb calibrate`` (``run.uncertainty`` of a preset, but ``sims``)."""

WARN_FACTOR = 5.0
"""A reconstruction warns when more than this many times the expected fraction ``1 - QUANTILE`` of its input
maps score above the threshold."""

FIELDS = ("kappa_mean", "kappa_sigma")
"""The maps a reconstruction with ``--uncertainty`` adds."""


def run_calibrate(config: dict | None, inputs: dict, out: str | Path, *, overwrite: bool = False,
                  progress: bool = True) -> Path:
    """Measure a method's per-mode transfer and residual, and the band powers of its inputs, on calibration maps,
    per noise level of the maps.

    Calibration maps with a mask, a noise map or edges are calibrated per cell of the Fourier grid, and give
    the variance of a pixel as a function of its local depth (:mod:`~deepcmb.uncertainty.window`): calibrate
    on maps like those the uncertainty will be applied to.

    Parameters
    ----------
    config : dict or None
        Settings over :data:`SCHEMA`: ``uq_lmax`` (:math:`L_{\\rm uq}`), ``ood_bins``, ``window_fwhm_arcmin``,
        ``window_bins``.
    inputs : dict
        ``sims``: the calibration simulation file (with ``kappa``, ``Q``, ``U``); ``rec``: a reconstruction
        of (rows of) it by the method to calibrate.
    out : str or Path
        The calibration file (:mod:`deepcmb.io.calibration`).
    overwrite : bool
    progress : bool

    Returns
    -------
    Path
    """
    cfg = resolve(config, SCHEMA)
    check_output_file(out, overwrite)
    sims, rec = inputs["sims"], inputs["rec"]
    with open_reconstruction(rec, sims) as r:
        attrs = dict(r.attrs)
        rows = r["meta/index"][...]
        kappa_hat = r["maps/kappa"][...].astype(float)
    method = str(attrs["method"])
    with open_maps(sims) as m:
        if m.kind != "simulations":
            raise InputError(f"{sims}: calibration needs simulations with their true kappa")
        geom, levels = m.geom, m.noise_index[rows]
        noise_p = np.array([i.noise_p_uk_arcmin for i in m.instruments()])
        windowed = m.masked or not m.periodic
        with Progress(3 + windowed, "calibrate", "step", enabled=progress, log=log) as bar:
            truth = m.read("kappa", rows).astype(float)
            bar.update(1)
            modes = measure(geom, kappa_hat, truth, levels, noise_p, cfg["uq_lmax"], per_cell=windowed)
            bar.update(1)
            window = None
            if windowed:
                window = _measure_window(m, rows, levels, noise_p, modes, kappa_hat, truth, cfg)
                bar.update(1)
            q, u = m.read("Q", rows), m.read("U", rows)
            try:
                ref = reference(geom, q, u, cfg["ood_bins"], levels, noise_p)
            except ValueError as exc:
                raise InputError(f"{sims}: {exc}") from None
            scores = ref.score(geom, q, u)
            bar.update(1)
    return write_calibration(out, cfg, method_identity(method, attrs), modes, ref, scores, rec, sims, window)


def _measure_window(m, rows: np.ndarray, levels: np.ndarray, noise_p: np.ndarray, modes: ModeCalibration,
                    kappa_hat: np.ndarray, truth: np.ndarray, cfg: dict) -> WindowCalibration:
    """The local-depth calibration (:func:`~deepcmb.uncertainty.window.measure_window`) of the calibration
    maps ``rows`` of the open file ``m`` (levels: the file's noise level of each), given their per-mode
    calibration."""
    geom = m.geom
    calib = np.array([modes.level_of(noise_p[lev]) for lev in levels])
    residual = np.empty(truth.shape)
    depth = np.empty(truth.shape)
    for lev in np.unique(levels):
        sel = np.flatnonzero(levels == lev)
        k = modes.level_of(noise_p[lev])
        residual[sel] = lowpass(geom, truth[sel], modes.lmax) - modes.posterior_mean(geom, kappa_hat[sel], k)
        mask, ivar = read_weights(m, rows[sel])
        try:
            depth[sel] = local_depth(geom, mask, ivar, noise_p[lev], cfg["window_fwhm_arcmin"], m.periodic)
        except ValueError as exc:
            raise InputError(f"{m.path}: {exc}") from None
    sigma = np.array([modes.pixel_sigma(geom, k) for k in range(len(modes.noise_p))])
    return measure_window(residual, sigma, depth, calib, len(modes.noise_p), cfg["window_bins"],
                          cfg["window_fwhm_arcmin"])


def check_window(window: WindowCalibration | None, masked: bool, periodic: bool, calibration: str | Path,
                 data: str | Path) -> None:
    """Refuse a calibration for maps unlike its own: one of periodic maps without a mask or noise map for
    masked maps, one of masked or non-periodic maps for periodic unmasked ones (InputError). A calibration
    of periodic maps still applies to non-periodic ones without a mask, whose input score flags them."""
    if window is None and masked:
        raise InputError(f"{calibration}: calibrated on maps without a mask or noise map; {data} has one: "
                         "calibrate on masked simulations like these maps")
    if window is not None and not masked and periodic:
        raise InputError(f"{calibration}: calibrated on masked or non-periodic maps; {data} holds periodic maps "
                         "without a mask or noise map")


def posterior_maps(modes: ModeCalibration, window: WindowCalibration | None, geom: FlatSkyGeometry,
                   kappa: np.ndarray, level: int, mask: np.ndarray | None = None, ivar: np.ndarray | None = None,
                   periodic: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and standard deviation of the low-passed convergence of reconstructions at one
    calibrated level.

    Parameters
    ----------
    modes : ModeCalibration
    window : WindowCalibration or None
        With one, the standard deviation of each pixel follows its local depth, from ``mask`` and ``ivar``.
    geom : FlatSkyGeometry
    kappa : ndarray, shape (n, ny, nx)
        Reconstructions.
    level : int
        Calibrated level.
    mask, ivar : ndarray, shape (n, ny, nx), optional
        Masks and polarization inverse noise variances (1/µK² per pixel) of the maps (with a window).
    periodic : bool

    Returns
    -------
    mean, sigma : ndarray, shape (n, ny, nx)
    """
    mean = modes.posterior_mean(geom, kappa, level)
    sigma = np.full(kappa.shape, modes.pixel_sigma(geom, level))
    if window is not None:
        depth = local_depth(geom, mask, ivar, modes.noise_p[level], window.fwhm_arcmin, periodic)
        sigma *= window.std_factor(depth, level)
    return mean, sigma


class Uncertainty:
    """A calibration applied to the maps a reconstruction stage writes.

    Parameters
    ----------
    path : str or Path
        Calibration file of ``deepcmb calibrate``.
    method : {'nn', 'qe', 'map'}
    attrs : dict
        The root attributes the stage writes (compared with the calibration's :func:`method_identity`).
    geom : FlatSkyGeometry
        The maps' geometry (that of the calibration maps).
    noise_p : sequence of float
        Polarization noise of each level of the input file, µK-arcmin.
    data : str or Path
        The input file (its masks and noise maps, and the input score).

    Raises
    ------
    InputError
        For a calibration of another method or settings, maps of another geometry, or masked maps with a
        calibration of maps without a mask (and the other way round, :func:`check_window`).
    """

    fields = FIELDS

    def __init__(self, path, method, attrs, geom, noise_p, data):
        self.path, self.data = Path(path), Path(data)
        identity, self.modes, self.reference = read_calibration(path)
        self.window = read_window(path)
        with open_maps(data) as f:  # first: a calibration of other maps may also have other settings
            self.periodic = f.periodic
            check_window(self.window, f.masked, f.periodic, path, data)
        mine = method_identity(method, attrs)
        differ = sorted(k for k in identity if identity[k] != mine.get(k))
        if differ:
            raise InputError(f"{path}: calibrates another method or settings ({', '.join(differ)}: "
                             f"{', '.join(repr(identity.get(k)) for k in differ)} there, "
                             f"{', '.join(repr(mine.get(k)) for k in differ)} here)")
        try:
            self.modes.check_geometry(geom)
        except ValueError as exc:
            raise InputError(f"{path}: {exc}") from None
        self.geom = geom
        self.level = [self.modes.level_of(n) for n in noise_p]
        for n, lev in zip(noise_p, self.level):
            if not np.isclose(self.modes.noise_p[lev], n, rtol=1e-6):
                log.warning("%s: no calibration at %g uK-arcmin; the maps at that noise level use the one at %g",
                            path, n, self.modes.noise_p[lev])

    @property
    def attrs(self) -> dict:
        """Root attributes of the reconstruction file: ``uq_lmax``, ``uq_calibration``, ``ood_threshold``
        (:data:`~deepcmb.uncertainty.ood.THRESHOLD`)."""
        return {"uq_lmax": self.modes.lmax, "uq_calibration": str(self.path.resolve()), "ood_threshold": THRESHOLD}

    def maps(self, kappa: np.ndarray, levels: np.ndarray, rows: np.ndarray) -> dict:
        """``kappa_mean`` and ``kappa_sigma`` of reconstructions ``kappa`` ``(n, ny, nx)`` of the input file's
        maps ``rows`` ``(n,)`` (increasing), whose noise levels are ``levels`` ``(n,)``."""
        mean = np.empty(kappa.shape)
        sigma = np.empty(kappa.shape)
        rows = np.asarray(rows)
        for lev in np.unique(levels):
            sel = levels == lev
            mask = ivar = None
            if self.window is not None:
                with open_maps(self.data) as f:
                    mask, ivar = read_weights(f, rows[sel])
            mean[sel], sigma[sel] = posterior_maps(self.modes, self.window, self.geom, kappa[sel], self.level[lev],
                                                   mask, ivar, self.periodic)
        return {"kappa_mean": mean, "kappa_sigma": sigma}

    def finish(self, writer, rows: np.ndarray, levels: np.ndarray, batch_size: int = 256) -> None:
        """Write what is not a map: ``/meta/ood_score`` (the inputs' scores, read from the input file at ``rows``),
        ``/meta/uq_level`` (the calibrated level each map used, from its noise level ``levels``) and the
        group ``/uncertainty`` (the per-mode posterior of every calibrated level)."""
        scores = np.empty(len(rows))
        with open_maps(self.data) as f:
            for start in range(0, len(rows), batch_size):
                sel = np.asarray(rows[start:start + batch_size])
                scores[start:start + len(sel)] = self.reference.score(self.geom, f.read("Q", sel), f.read("U", sel))
        writer.write_meta("ood_score", scores)
        writer.write_meta("uq_level", np.array(self.level)[np.asarray(levels)])
        m = self.modes
        writer.write_group("uncertainty", {"edges": m.edges, "transfer": m.transfer, "residual": m.residual,
                                           "noise_p": m.noise_p})
        outside = int(np.sum(scores > THRESHOLD))
        if outside > WARN_FACTOR * (1 - QUANTILE) * len(rows):
            log.warning("%d of %d input maps score above the %g quantile of the calibration maps of every noise "
                        "level (ood_score > %g): unlike the maps the uncertainty was calibrated on", outside,
                        len(rows), QUANTILE, THRESHOLD)


def posterior_samples(path: str | Path, index: int, n: int, seed: int = 0) -> np.ndarray:
    """Draws from the Gaussian posterior of the low-passed convergence of one map of a reconstruction file
    written with ``--uncertainty``.

    Parameters
    ----------
    path : str or Path
        The reconstruction file.
    index : int
        Row in the file (not in the simulation file).
    n : int
        Number of draws.
    seed : int

    Returns
    -------
    ndarray, shape (n, ny, nx)
        Each the posterior mean plus a Gaussian field with the per-mode variance, scaled pixel by pixel to
        the map's ``kappa_sigma`` (a stationary field on periodic maps without a mask, where ``kappa_sigma``
        is the same in every pixel; on masked maps the draws have the right variance in every pixel, their
        correlations those of the stationary field).
    """
    with open_reconstruction(path) as f:
        if "uncertainty" not in f:
            raise InputError(f"{path}: written without --uncertainty (no /uncertainty group)")
        g = f["uncertainty"]
        geom = FlatSkyGeometry(tuple(int(s) for s in f.attrs["shape"]), float(f.attrs["pixel_arcmin"]))
        level = int(f["meta/uq_level"][index])
        modes = ModeCalibration(edges=g["edges"][...], transfer=g["transfer"][...], residual=g["residual"][...],
                                noise_p=g["noise_p"][...], n_maps=np.zeros(len(g["noise_p"]), int),
                                lmax=float(f.attrs["uq_lmax"]), shape=geom.shape, pixel_arcmin=geom.pixel_arcmin)
        mean = f["maps/kappa_mean"][index].astype(float)
        sigma = f["maps/kappa_sigma"][index].astype(float)
    noise = modes.sample(geom, np.zeros_like(mean), level, n, np.random.default_rng(seed))
    return mean + noise * (sigma / modes.pixel_sigma(geom, level))
