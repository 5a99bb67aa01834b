"""The ``deepcmb reconstruct --method qe`` stage: a simulation or observation file -> quadratic-estimator
kappa maps.

Reads the observed maps of a simulation file, or of an observation file
(:mod:`deepcmb.io.observations`: maps deepcmb did not simulate, with their beam and noise level), in
batches, reconstructs kappa with one :class:`~deepcmb.qe.QuadraticEstimator` per noise level of the
file (filters and N0 follow that level's beam and noise; an observation file has one level), and
writes the reconstruction layout of :mod:`deepcmb.io.reconstruction` with the analytic N0 of each
level (``/n0``). A file whose mask is not all ones or whose ``ivar_p`` is not constant is reconstructed
by :func:`deepcmb.qe.masked_stage.run_masked` instead (C^-1 filter, simulated mean field, Monte Carlo
response and N0).

The filters use the fiducial (Planck 2018) spectra, as a QE on data would. Non-periodic maps (curved-sky
patches, and observation files with ``periodic = false``) are apodised with a cosine window (default
taper :func:`~deepcmb.qe.default_taper`) and a mean field is subtracted, estimated for each map from
maps of the same file and noise level in the other half of the file (odd rows for even rows and vice
versa), so no map enters its own mean field.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..config import Bool, Int, Number, OneOf, Str, resolve
from ..cosmology import compute_spectra
from ..errors import InputError
from ..io.files import check_output_file
from ..io.maps import open_maps
from ..io.reconstruction import ReconstructionWriter
from ..binning import bin_centres, linear_bins
from ..progress import Progress
from ..uncertainty.stage import Uncertainty
from .apodization import cosine_window, default_taper, window_moment
from .estimators import fields_needed
from .estimators import parse_estimator
from .masked_stage import run_masked
from .quadratic import BAND, EMBEDDING_PAD, QuadraticEstimator

log = logging.getLogger(__name__)

SCHEMA = {
    "estimator": Str("EB", doc="TT, TE, EE, EB, TB, MV (all five) or MV_POL (EE + EB)"),
    "lmin": Number(BAND["lmin"], min=0, doc="lowest CMB multipole used by the filters"),
    "lmax": Number(BAND["lmax"], gt=0, doc="highest CMB multipole used by the filters"),
    "Lmin": Number(BAND["Lmin"], min=0, doc="lowest lensing multipole kept"),
    "Lmax": Number(BAND["Lmax"], gt=0, doc="highest lensing multipole kept"),
    "wiener": Bool(False, doc="write the Wiener-filtered kappa C/(C+N0) kappa_hat"),
    "apodize_arcmin": Number(None, min=0, keep_int=True, doc="cosine taper width in arcmin (null: 0 for periodic maps, 60 for "
                                              "curved-sky patches)"),
    "mean_field_maps": Int(64, min=1, doc="maps per mean-field estimate: of the file, for non-periodic patches; "
                                          "simulated per mask and noise map, for masked maps"),
    "pad": Number(EMBEDDING_PAD, gt=1, doc="masked non-periodic maps: side of the periodic grid of the C^-1 filter over "
                                 "the map's"),
    "cg_tol": Number(1e-3, gt=0, doc="masked maps: relative residual at which the C^-1 filter's conjugate "
                                     "gradients stop"),
    "cg_maxiter": Int(500, min=1, doc="masked maps: conjugate-gradient iterations at most"),
    "response_maps": Int(64, min=2, doc="masked maps: simulations of the Monte Carlo response and N0"),
    "response_min_snr": Number(3.0, min=0, doc="masked maps: the Monte Carlo response is applied in the L bins "
                                               "where it exceeds this many standard errors"),
    "mc_seed": Int(0, min=0, doc="masked maps: root seed of the mean-field and response simulations (not the "
                                 "seed of the simulation file reconstructed)"),
    "batch_size": Int(64, min=1, doc="maps read and reconstructed at once"),
    "precision": OneOf("single", "single", "double", doc="arithmetic of the estimate (the maps are float32)"),
}
"""Settings of the quadratic-estimator stage, with their defaults (``run.qe`` of a preset)."""


def _mean_fields(source, qe, rows, need, window, n_max):
    """Mean-field maps for even and odd rows: each from up to ``n_max`` maps of the other parity."""
    out = {}
    for parity in (0, 1):
        use = rows[rows % 2 != parity][:n_max]
        if use.size == 0:
            raise InputError(f"{source.path}: the qe mean field of non-periodic maps needs maps of both parities "
                             "(at least two maps) at every noise level")
        maps = {k: source.read(k, np.sort(use)) for k in need}
        out[parity] = qe.mean_field(maps, window=window)
    return out


def run_reconstruct_qe(config: dict | None, inputs: dict, out: str | Path, *, overwrite: bool = False,
                       progress: bool = True) -> Path:
    """Reconstruct kappa from every map of a simulation or observation file with a quadratic estimator.

    Parameters
    ----------
    config : dict or None
        Estimator settings over :data:`SCHEMA`: ``estimator`` (``TT, TE, EE, EB, TB, MV`` (all five) or
        ``MV_POL`` (EE + EB), case-insensitive); ``lmin, lmax`` (CMB multipoles of the filters) and
        ``Lmin, Lmax`` (lensing multipoles kept), default :data:`deepcmb.qe.BAND`; ``wiener`` (write
        ``C / (C + N0) kappa_hat`` instead of the unbiased kappa); ``apodize_arcmin`` (cosine-taper width of
        the window; null: :func:`deepcmb.qe.default_taper`, 0 for periodic flat-sky maps and 60 arcmin for
        non-periodic curved-sky patches, which also get a mean field subtracted); ``mean_field_maps``
        (maps per mean-field estimate, non-periodic patches only); ``batch_size`` (maps read and
        reconstructed at once); ``precision`` (arithmetic of the map estimate: the stored maps are
        float32, single is twice as fast); for masked files (:mod:`deepcmb.qe.masked_stage`) also ``pad``,
        ``cg_tol``, ``cg_maxiter`` (the C^-1 filter), ``response_maps``, ``response_min_snr`` and
        ``mc_seed`` (the Monte Carlo response), ``mean_field_maps`` then counting simulations per mask.
    inputs : dict
        ``sims``: simulation file of ``deepcmb simulate``, or observation file
        (:mod:`deepcmb.io.observations`; its beam and noise attributes set the filters); ``uncertainty``
        (optional): calibration file of ``deepcmb calibrate`` for this estimator and settings, which adds
        the per-map posterior (:class:`~deepcmb.uncertainty.stage.Uncertainty`; for masked files, a calibration
        on masked maps).
    out : str or Path
        Output reconstruction file (layout of :mod:`deepcmb.io.reconstruction`, with its ``/n0``).
    overwrite : bool
        Replace an existing output.
    progress : bool
        Show a progress bar.

    Returns
    -------
    Path
        The written file.
    """
    cfg = resolve(config, SCHEMA)
    data = inputs["sims"]
    label, names = parse_estimator(cfg["estimator"])
    check_output_file(out, overwrite)
    lmin, lmax, Lmin, Lmax = (cfg[k] for k in ("lmin", "lmax", "Lmin", "Lmax"))
    config = {"method": "qe", **{k: v for k, v in cfg.items() if k != "batch_size"}, "estimator": label,
              "data": str(data)}
    with open_maps(data, method="qe") as f:
        if f.masked:
            return run_masked(f, cfg, label, data, out, config, uncertainty=inputs.get("uncertainty"),
                              overwrite=overwrite, progress=progress)
        geom = f.geom
        need = fields_needed(names)
        missing = [k for k in need if k not in f.fields]
        if missing:
            hint = "add them to simulation.fields" if f.kind == "simulations" else "the observation file has none"
            raise InputError(f"{data}: the {label} estimator needs maps {', '.join(need)}; "
                             f"missing {', '.join(missing)} ({hint})")
        periodic = f.periodic
        taper = default_taper(periodic) if cfg["apodize_arcmin"] is None else float(cfg["apodize_arcmin"])
        window = cosine_window(geom, taper) if taper > 0 else None
        spectra = compute_spectra({})
        levels = f.noise_index
        instruments = f.instruments()
        qes = {lev: QuadraticEstimator(geom, spectra, instruments[lev], label, lmin=lmin, lmax=lmax, Lmin=Lmin,
                                       Lmax=Lmax, precision=cfg["precision"]) for lev in np.unique(levels)}
        mean_fields = {}
        if not periodic:
            for lev, qe in qes.items():
                mean_fields[lev] = _mean_fields(f, qe, np.flatnonzero(levels == lev), need, window,
                                                cfg["mean_field_maps"])
        n = f.n_maps
        edges = linear_bins(max(Lmin, geom.ell_fundamental), Lmax, 2.0 * geom.ell_fundamental)
        attrs = {"estimator": label, "estimators": list(qes[levels[0]].names), "lmin": lmin, "lmax": lmax,
                 "Lmin": Lmin, "Lmax": Lmax, "wiener": cfg["wiener"], "response": "gradient",
                 "mv_covariance": qes[levels[0]].mv_covariance, "apodize_arcmin": taper,
                 "mean_field": "half-split, from the file's own maps" if mean_fields else "none"}
        if window is not None:
            attrs.update(window_w2=window_moment(window, 2), window_w4=window_moment(window, 4))
        uq = None
        if inputs.get("uncertainty"):
            uq = Uncertainty(inputs["uncertainty"], "qe", attrs, geom, [i.noise_p_uk_arcmin for i in instruments],
                             data)
            attrs.update(uq.attrs)
        batch_size = cfg["batch_size"]
        fields = ["kappa", "phi"] + (list(uq.fields) if uq else [])
        with ReconstructionWriter(out, np.arange(n), fields, data, "qe", config, attrs=attrs,
                                  overwrite=overwrite) as writer:
            with Progress(n, f"QE {label}", "map", enabled=progress, log=log) as bar:
                for start in range(0, n, batch_size):
                    stop = min(start + batch_size, n)
                    maps = {k: f.read(k, np.arange(start, stop)) for k in need}
                    kappa = np.empty((stop - start,) + geom.shape)
                    phi = np.empty_like(kappa)
                    rows = np.arange(start, stop)
                    for lev in np.unique(levels[start:stop]):
                        for parity in ((0, 1) if mean_fields else (None,)):
                            sel = (levels[start:stop] == lev) & ((rows % 2 == parity) if parity is not None else True)
                            if not sel.any():
                                continue
                            mf = mean_fields[lev][parity] if parity is not None else None
                            est = qes[lev].estimate({k: v[sel] for k, v in maps.items()}, window=window,
                                                    mean_field=mf, wiener=cfg["wiener"])
                            kappa[sel], phi[sel] = est["kappa"], est["phi"]
                    maps = {"kappa": kappa, "phi": phi}
                    if uq:
                        maps.update(uq.maps(kappa, levels[start:stop], np.arange(start, stop)))
                    writer.write(start, maps)
                    bar.update(stop - start)
            writer.write_meta("noise_index", levels)
            if uq:
                uq.finish(writer, np.arange(n), levels)
            writer.write_group("n0", {
                "edges": edges, "L": bin_centres(geom, edges),
                "kappa": np.stack([qes[lev].n0_binned(edges) if lev in qes else np.full(len(edges) - 1, np.nan)
                                   for lev in range(len(instruments))]),
                "kappa_2d": np.stack([qes[lev].n0_kappa if lev in qes else np.full(geom.fourier_shape(), np.nan)
                                      for lev in range(len(instruments))]),
            })
    return writer.out
