"""The ``deepcmb reconstruct --method map`` stage: a simulation or observation file -> MAP kappa maps.

Reads the Q, U maps of a flat-sky simulation or observation file, reconstructs each with a
:class:`~deepcmb.iterative.MapEstimator` of its noise level (fiducial spectra, the level's beam and
noise), in tasks of ``maps_per_task`` maps run inline, in local worker processes (``--workers``) or on a
Dask cluster (``--scheduler``), and writes the reconstruction layout of :mod:`deepcmb.io.reconstruction`
with ``method = 'map'``.

Masked maps (a ``/mask`` not all ones or an ``ivar_p`` that is not constant) and non-periodic maps take
the pixel weights :math:`M\\, {\\rm ivar}_P` (:meth:`~deepcmb.iterative.MapEstimator.weight`; without
``/ivar_p`` the white noise of the level), non-periodic ones embedded in a periodic grid ``pad`` times
larger per side. For each distinct mask and noise map of a level a first set of tasks simulates the
gradient's mean field (``mean_field_maps`` simulations, streams from ``mc_seed``,
:mod:`deepcmb.iterative.meanfield`); every map then starts from phi = 0 with its mean field subtracted,
and the white-noise curvature of the first step is that of the mean inverse noise of the level's
observed pixels.

Each finished task is saved in ``OUT.partial/`` (:mod:`deepcmb.io.partial`), so an interrupted run,
re-run with the same command, continues where it stopped; the file is assembled when every task is done:

``/maps/kappa``, ``/maps/phi``
    The MAP convergence and potential (a posterior mode: filtered like a Wiener filter, not unbiased).
``/maps/E_delensed``
    The Wiener-filtered unlensed E at the MAP potential (µK).
``/maps/B_delensed``
    The B-mode map of the data minus the lensed Wiener-filtered E: the observed B modes with the
    lensing B template removed (µK, beam-convolved like the data).
``/meta/iterations``, ``/meta/converged``, ``/meta/gradient_ratio``, ``/meta/cg_iterations``
    Per map: quasi-Newton steps, whether the gradient fell below ``tol``, the final relative
    gradient, and the conjugate-gradient iterations in all.
``/meta/noise_index``
    The noise level of each map.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..config import Int, resolve
from ..cosmology import compute_spectra
from ..errors import InputError
from ..executor import default_workers, open_executor, run_tasks
from ..io.files import check_output_file
from ..io.maps import open_maps
from ..io.partial import PartialFolder
from ..io.reconstruction import ReconstructionWriter, sims_identity
from ..provenance import config_json
from ..progress import Progress
from ..qe.masked import level_weights
from ..uncertainty.stage import Uncertainty
from .estimator import MAPS, STATS, MapEstimator, stack_results
from .settings import ESTIMATOR_SCHEMA, SCHEMA

log = logging.getLogger(__name__)

_FIELDS = tuple(MAPS)
_UNITS = {"E_delensed": "uK", "B_delensed": "uK"}
_ESTIMATORS: dict = {}


def _estimator(geom, spectra, instrument, settings, periodic=True):
    """One estimator per (geometry, instrument, settings, periodicity) in each process."""
    key = (geom, instrument, tuple(sorted(settings.items())), periodic)
    if key not in _ESTIMATORS:
        _ESTIMATORS.clear()
        _ESTIMATORS[key] = MapEstimator(geom, spectra, instrument, settings, periodic=periodic)
    return _ESTIMATORS[key]


def _task_name(k: int) -> str:
    return f"task_{k:07d}"


def _mean_field_name(k: int) -> str:
    return f"mean_field_{k:07d}"


def mean_field_task(key: int, geom, spectra, instrument, settings: dict, periodic: bool, ivar: np.ndarray,
                    mask: np.ndarray, first_index: int) -> tuple:
    """Simulate the gradient mean field of one mask and noise map (one task): ``(key, mean_field)``
    (:meth:`~deepcmb.iterative.MapEstimator.mean_field`; arguments as :func:`reconstruct_task`)."""
    est = _estimator(geom, spectra, instrument, settings, periodic)
    return key, est.mean_field(ivar, mask, first_index=first_index)


def reconstruct_task(key: int, geom, spectra, instrument, settings: dict, q: np.ndarray, u: np.ndarray,
                     periodic: bool = True, ivar: np.ndarray | None = None, mask: np.ndarray | None = None,
                     mean_fields: np.ndarray | None = None) -> tuple:
    """MAP-reconstruct a block of maps (one task): ``(start, maps, stats)``.

    Parameters
    ----------
    key : int
        The task's number, returned with its result.
    geom, spectra, instrument
        Geometry, fiducial spectra and the block's instrument.
    settings : dict
        Resolved :data:`~deepcmb.iterative.settings.ESTIMATOR_SCHEMA`.
    q, u : ndarray, shape (k, ny, nx)
        Observed maps, µK.
    periodic : bool
        Whether the maps are periodic.
    ivar, mask : ndarray, shape (k, ny, nx), optional
        Inverse noise variance (µK⁻²) and mask of each map, for weighted maps.
    mean_fields : ndarray, shape (k,) + the estimator grid's rfft shape, optional
        The gradient mean field of each map's mask and noise map.

    Returns
    -------
    tuple
        ``key``; field -> ``(k, ny, nx)`` maps of :data:`_FIELDS`; statistic -> ``(k,)``.
    """
    est = _estimator(geom, spectra, instrument, settings, periodic)
    if ivar is None:
        results = [est.estimate(qi, ui) for qi, ui in zip(q, u)]
    else:
        results = [est.estimate(q[i], u[i], ivar[i], mask[i], None if mean_fields is None else mean_fields[i])
                   for i in range(len(q))]
    maps, stats = stack_results(results)
    return key, maps, stats


def run_reconstruct_map(config: dict | None, inputs: dict, out: str | Path, *, overwrite: bool = False,
                        progress: bool = True, workers: int | None = None, scheduler: str | None = None,
                        scheduler_file: str | None = None) -> Path:
    """MAP-reconstruct kappa from every map of a simulation or observation file.

    Parameters
    ----------
    config : dict or None
        Settings over :data:`~deepcmb.iterative.settings.SCHEMA` (``run.map`` of a preset).
    inputs : dict
        ``sims``: simulation or observation file with Q, U maps (masked or non-periodic ones as in the
        module docstring); ``uncertainty`` (optional): calibration file of ``deepcmb calibrate`` for these
        settings, on maps like these (masked ones need a calibration on masked maps), which adds the per-map
        posterior (:class:`~deepcmb.uncertainty.stage.Uncertainty`).
    out : str or Path
        Output reconstruction file (see the module docstring).
    overwrite : bool
        Replace an existing output.
    progress : bool
        Show a progress bar.
    workers : int, optional
        Local worker processes (default: one per core this process may use,
        :func:`~deepcmb.executor.default_workers`).
    scheduler, scheduler_file : str, optional
        Dask scheduler address, or scheduler file; overrides ``workers``.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    InputError
        For a file without Q or U, a map with no observed pixel, or an uncertainty calibration of another
        method or of maps unlike these (:class:`~deepcmb.uncertainty.stage.Uncertainty`).
    """
    cfg = resolve(config, SCHEMA)
    workers = Int(min=1).check("--workers", workers if workers is not None else default_workers())
    settings = {k: cfg[k] for k in ESTIMATOR_SCHEMA}
    data = inputs["sims"]
    check_output_file(out, overwrite)
    with open_maps(data, method="map") as f:
        missing = [k for k in ("Q", "U") if k not in f.fields]
        if missing:
            raise InputError(f"{data}: the MAP estimator needs maps Q, U; missing {', '.join(missing)}")
        geom, levels, instruments, n = f.geom, f.noise_index, f.instruments(), f.n_maps
        periodic, weighted = f.periodic, f.masked or not f.periodic
        weights = {int(lev): level_weights(f, lev) for lev in np.unique(levels)} if weighted else {}
        level_instrument = {int(lev): weights[int(lev)].instrument if weighted else instruments[lev]
                            for lev in np.unique(levels)}
        spectra = compute_spectra({})
        for inst in level_instrument.values():  # a bad setting fails here, once, not in every task
            _estimator(geom, spectra, inst, settings, periodic)
        per_task = cfg["maps_per_task"]
        blocks = [(s, min(s + per_task, n)) for s in range(0, n, per_task)]
        tasks = []
        for start, stop in blocks:
            rows = np.arange(start, stop)
            for lev in np.unique(levels[rows]):
                sel = rows[levels[rows] == lev]
                tasks.append((sel, int(lev)))
        mean_fields = []  # (level, group): one mean field per distinct mask and noise map
        if weighted and settings["mean_field_maps"] > 0:
            mean_fields = [(lev, g) for lev, w in weights.items() for g in range(len(w.first))]
        config = {"method": "map", **cfg, "data": str(data)}
        attrs = {"estimator": "MAP", "lmin": settings["lmin"], "lmax": settings["lmax"], "Lmin": settings["Lmin"],
                 "Lmax": settings["Lmax"], "mean_field": "none (joint MAP: the log-determinant term is neglected)",
                 "start": "Wiener-filtered MV_POL QE"}
        if weighted:
            attrs.update(start="phi = 0", weights="mask x ivar_p" + ("" if periodic else
                                                                      f", embedded in a grid {settings['pad']:g} x "
                                                                      "larger per side"))
            if mean_fields:
                attrs["mean_field"] = (f"gradient at phi = 0, {settings['mean_field_maps']} simulations per mask "
                                       "and noise map, held fixed")
        uq = None
        if inputs.get("uncertainty"):
            uq = Uncertainty(inputs["uncertainty"], "map", attrs, geom, [i.noise_p_uk_arcmin for i in instruments],
                             data)
            attrs.update(uq.attrs)
        partial = PartialFolder(out, config_json({"settings": settings, "maps_per_task": cfg["maps_per_task"],
                                                  "sims": sims_identity(data)}), fresh=overwrite)
        mf_todo = [k for k in range(len(mean_fields)) if not partial.has(_mean_field_name(k))]
        todo = [k for k in range(len(tasks)) if not partial.has(_task_name(k))]
        done = n - sum(len(tasks[k][0]) for k in todo)

        def mean_field_work():
            for k in mf_todo:
                lev, g = mean_fields[k]
                w = weights[lev]
                row = w.first[g]
                yield (k, geom, spectra, level_instrument[lev], settings, periodic, w.ivar[row], w.mask[row],
                       k * settings["mean_field_maps"])

        def work():
            index = {key: k for k, key in enumerate(mean_fields)}
            for k in todo:
                sel, lev = tasks[k]
                args = (k, geom, spectra, level_instrument[lev], settings, f.read("Q", sel), f.read("U", sel))
                if not weighted:
                    yield args
                    continue
                w = weights[lev]
                local = np.searchsorted(w.rows, sel)
                groups = w.group[local]
                mf = np.stack([partial.load(_mean_field_name(index[(lev, int(g))]))["mean_field"] for g in groups]) \
                    if mean_fields else None
                yield args + (periodic, w.ivar[local], w.mask[local], mf)

        with open_executor(workers, scheduler, scheduler_file) as ex:
            if mf_todo:
                with Progress(len(mean_fields), "MAP mean fields", "mask", enabled=progress,
                              initial=len(mean_fields) - len(mf_todo), log=log) as bar:
                    for k, mf in run_tasks(ex, mean_field_task, mean_field_work()):
                        partial.save(_mean_field_name(k), {"mean_field": mf})
                        bar.update(1)
            with Progress(n, "MAP", "map", enabled=progress, initial=done, log=log) as bar:
                for k, maps, block in run_tasks(ex, reconstruct_task, work()):
                    partial.save(_task_name(k), {**{f"map_{name}": m for name, m in maps.items()},
                                                 **{f"stat_{name}": v for name, v in block.items()}})
                    bar.update(len(tasks[k][0]))
        stats = {k: np.zeros(n, dtype=t) for k, t in STATS.items()}
        fields = list(_FIELDS) + (list(uq.fields) if uq else [])
        with ReconstructionWriter(out, np.arange(n), fields, data, "map", config, attrs=attrs, units=_UNITS,
                                  overwrite=overwrite) as writer:
            for k, (sel, lev) in enumerate(tasks):
                unit = partial.load(_task_name(k))
                maps = {name: unit[f"map_{name}"] for name in _FIELDS}
                if uq:
                    maps.update(uq.maps(maps["kappa"], np.full(len(sel), lev), sel))
                for i, row in enumerate(sel):
                    writer.write(int(row), {name: m[i:i + 1] for name, m in maps.items()})
                for name in STATS:
                    stats[name][sel] = unit[f"stat_{name}"]
            writer.write_meta("noise_index", levels)
            for name, values in stats.items():
                writer.write_meta(name, values)
            if uq:
                uq.finish(writer, np.arange(n), levels)
    partial.remove()
    not_converged = int(np.sum(~stats["converged"]))
    if not_converged:
        log.warning("map: %d of %d maps stopped at max_iterations=%d before the gradient fell below tol=%g "
                    "(see /meta/gradient_ratio)", not_converged, n, settings["max_iterations"], settings["tol"])
    return writer.out
