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
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..config import Int, Number, resolve
from ..errors import InputError
from ..io.calibration import method_identity, read_calibration, write_calibration
from ..io.files import check_output_file
from ..io.maps import open_maps
from ..io.reconstruction import open_reconstruction
from ..progress import Progress
from .modes import measure
from .ood import QUANTILE, THRESHOLD, reference

log = logging.getLogger(__name__)

SCHEMA = {
    "uq_lmax": Number(1000.0, gt=0, doc="L_uq: the posterior is that of the convergence low-passed to |L| <= lmax"),
    "ood_bins": Int(8, min=1, doc="logarithmic multipole bins of the E and B band powers of the input score"),
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

    Parameters
    ----------
    config : dict or None
        Settings over :data:`SCHEMA`: ``uq_lmax`` (:math:`L_{\\rm uq}`), ``ood_bins``.
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
        if not m.periodic or m.masked:
            raise InputError(f"{sims}: calibration maps must be periodic and unmasked (as the maps the "
                             "uncertainty applies to)")
        geom, levels = m.geom, m.noise_index[rows]
        noise_p = np.array([i.noise_p_uk_arcmin for i in m.instruments()])
        with Progress(3, "calibrate", "step", enabled=progress, log=log) as bar:
            truth = m.read("kappa", rows).astype(float)
            bar.update(1)
            modes = measure(geom, kappa_hat, truth, levels, noise_p, cfg["uq_lmax"])
            bar.update(1)
            q, u = m.read("Q", rows), m.read("U", rows)
            try:
                ref = reference(geom, q, u, cfg["ood_bins"], levels, noise_p)
            except ValueError as exc:
                raise InputError(f"{sims}: {exc}") from None
            scores = ref.score(geom, q, u)
            bar.update(1)
    return write_calibration(out, cfg, method_identity(method, attrs), modes, ref, scores, rec, sims)


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

    Raises
    ------
    InputError
        For a calibration of another method or settings, or maps of another geometry.
    """

    fields = FIELDS

    def __init__(self, path, method, attrs, geom, noise_p):
        self.path = Path(path)
        identity, self.modes, self.reference = read_calibration(path)
        mine = method_identity(method, attrs)
        if identity != mine:
            differ = sorted(k for k in set(identity) | set(mine) if identity.get(k) != mine.get(k))
            raise InputError(f"{path}: calibrates another method or settings ({', '.join(differ)}: "
                             f"{', '.join(repr(identity.get(k)) for k in differ)} there, "
                             f"{', '.join(repr(mine.get(k)) for k in differ)} here)")
        try:
            self.modes.check_geometry(geom)
        except ValueError as exc:
            raise InputError(f"{path}: {exc}") from None
        self.geom = geom
        self.level = [self.modes.level_of(n) for n in noise_p]
        self.sigma = [self.modes.pixel_sigma(geom, lev) for lev in self.level]
        for n, lev in zip(noise_p, self.level):
            if not np.isclose(self.modes.noise_p[lev], n, rtol=1e-6):
                log.warning("%s: no calibration at %g uK-arcmin; the maps at that noise level use the one at %g",
                            path, n, self.modes.noise_p[lev])

    @property
    def attrs(self) -> dict:
        """Root attributes of the reconstruction file: ``uq_lmax``, ``uq_calibration``, ``ood_threshold``
        (:data:`~deepcmb.uncertainty.ood.THRESHOLD`)."""
        return {"uq_lmax": self.modes.lmax, "uq_calibration": str(self.path.resolve()), "ood_threshold": THRESHOLD}

    def maps(self, kappa: np.ndarray, levels: np.ndarray) -> dict:
        """``kappa_mean`` and ``kappa_sigma`` of reconstructions ``kappa`` ``(n, ny, nx)`` whose maps have
        the input file's noise levels ``levels`` ``(n,)``."""
        mean = np.empty(kappa.shape)
        sigma = np.empty(kappa.shape)
        for lev in np.unique(levels):
            sel = levels == lev
            mean[sel] = self.modes.posterior_mean(self.geom, kappa[sel], self.level[lev])
            sigma[sel] = self.sigma[lev]
        return {"kappa_mean": mean, "kappa_sigma": sigma}

    def finish(self, writer, data: str | Path, rows: np.ndarray, levels: np.ndarray, batch_size: int = 256) -> None:
        """Write what is not a map: ``/meta/ood_score`` (the inputs' scores, read from ``data`` at ``rows``),
        ``/meta/uq_level`` (the calibrated level each map used, from its noise level ``levels``) and the
        group ``/uncertainty`` (the per-mode posterior of every calibrated level)."""
        scores = np.empty(len(rows))
        with open_maps(data) as f:
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
        Each the posterior mean plus a stationary Gaussian field with the per-mode variance.
    """
    from ..geometry import FlatSkyGeometry
    from .modes import ModeCalibration

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
    return modes.sample(geom, mean, level, n, np.random.default_rng(seed))
