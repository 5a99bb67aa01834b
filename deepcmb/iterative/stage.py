"""The ``deepcmb reconstruct --method map`` stage: a simulation or observation file -> MAP kappa maps.

Reads the Q, U maps of a periodic simulation file (or of an observation file with ``periodic = true``,
no mask and white noise), reconstructs each with a :class:`~deepcmb.iterative.MapEstimator` of its
noise level (fiducial spectra, the level's beam and noise), in tasks of ``maps_per_task`` maps run
inline, in local worker processes (``--workers``) or on a Dask cluster (``--scheduler``), and writes the
reconstruction layout of :mod:`deepcmb.io.reconstruction` with ``method = 'map'``. Each finished task
is saved in ``OUT.partial/`` (:mod:`deepcmb.io.partial`), so an interrupted run, re-run with the same
command, continues where it stopped; the file is assembled when every task is done:

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
from ..uncertainty.stage import Uncertainty
from .estimator import MAPS, STATS, MapEstimator, stack_results
from .settings import ESTIMATOR_SCHEMA, SCHEMA

log = logging.getLogger(__name__)

_FIELDS = tuple(MAPS)
_UNITS = {"E_delensed": "uK", "B_delensed": "uK"}
_ESTIMATORS: dict = {}


def _estimator(geom, spectra, instrument, settings):
    """One estimator per (geometry, instrument, settings) in each process."""
    key = (geom, instrument, tuple(sorted(settings.items())))
    if key not in _ESTIMATORS:
        _ESTIMATORS.clear()
        _ESTIMATORS[key] = MapEstimator(geom, spectra, instrument, settings)
    return _ESTIMATORS[key]


def _task_name(k: int) -> str:
    return f"task_{k:07d}"


def reconstruct_task(key: int, geom, spectra, instrument, settings: dict, q: np.ndarray, u: np.ndarray) -> tuple:
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

    Returns
    -------
    tuple
        ``key``; field -> ``(k, ny, nx)`` maps of :data:`_FIELDS`; statistic -> ``(k,)``.
    """
    est = _estimator(geom, spectra, instrument, settings)
    maps, stats = stack_results([est.estimate(qi, ui) for qi, ui in zip(q, u)])
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
        ``sims``: simulation file of ``deepcmb simulate`` (periodic flat-sky maps with Q, U), or an
        observation file with ``periodic = true``, no mask and constant inverse variance; ``uncertainty``
        (optional): calibration file of ``deepcmb calibrate`` for these settings, which adds the per-map
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
        if not f.periodic:
            raise InputError(f"{data}: the MAP estimator handles periodic flat-sky maps only (this file's maps are "
                             "not periodic)")
        geom, levels, instruments, n = f.geom, f.noise_index, f.instruments(), f.n_maps
        spectra = compute_spectra({})
        for lev in np.unique(levels):  # a bad setting fails here, once, not in every task
            _estimator(geom, spectra, instruments[lev], settings)
        per_task = cfg["maps_per_task"]
        blocks = [(s, min(s + per_task, n)) for s in range(0, n, per_task)]
        tasks = []
        for start, stop in blocks:
            rows = np.arange(start, stop)
            for lev in np.unique(levels[rows]):
                sel = rows[levels[rows] == lev]
                tasks.append((sel, lev))
        config = {"method": "map", **cfg, "data": str(data)}
        attrs = {"estimator": "MAP", "lmin": settings["lmin"], "lmax": settings["lmax"], "Lmin": settings["Lmin"],
                 "Lmax": settings["Lmax"], "mean_field": "none (joint MAP: the log-determinant term is neglected)",
                 "start": "Wiener-filtered MV_POL QE"}
        uq = None
        if inputs.get("uncertainty"):
            uq = Uncertainty(inputs["uncertainty"], "map", attrs, geom, [i.noise_p_uk_arcmin for i in instruments])
            attrs.update(uq.attrs)
        partial = PartialFolder(out, config_json({"settings": settings, "maps_per_task": cfg["maps_per_task"],
                                                  "sims": sims_identity(data)}), fresh=overwrite)
        todo = [k for k in range(len(tasks)) if not partial.has(_task_name(k))]
        done = n - sum(len(tasks[k][0]) for k in todo)

        def work():
            for k in todo:
                sel, lev = tasks[k]
                yield (k, geom, spectra, instruments[lev], settings, f.read("Q", sel), f.read("U", sel))

        with open_executor(workers, scheduler, scheduler_file) as ex, \
                Progress(n, "MAP", "map", enabled=progress, initial=done, log=log) as bar:
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
                    maps.update(uq.maps(maps["kappa"], np.full(len(sel), lev)))
                for i, row in enumerate(sel):
                    writer.write(int(row), {name: m[i:i + 1] for name, m in maps.items()})
                for name in STATS:
                    stats[name][sel] = unit[f"stat_{name}"]
            writer.write_meta("noise_index", levels)
            for name, values in stats.items():
                writer.write_meta(name, values)
            if uq:
                uq.finish(writer, data, np.arange(n), levels)
    partial.remove()
    not_converged = int(np.sum(~stats["converged"]))
    if not_converged:
        log.warning("map: %d of %d maps stopped at max_iterations=%d before the gradient fell below tol=%g "
                    "(see /meta/gradient_ratio)", not_converged, n, settings["max_iterations"], settings["tol"])
    return writer.out
