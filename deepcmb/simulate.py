"""The simulate stage: config -> cosmologies -> CAMB spectra -> maps -> HDF5.

Work is split into units (a block of flat-sky samples, or one full-sky realisation cut into patches).
Each finished unit is saved atomically under ``OUT.partial/``; when all are there they are assembled
into ``OUT`` (written under a temporary name, then renamed). Re-running the same command after an
interruption skips the units already saved, and because every sample's randomness derives from
``(seed, index)`` only, the result is the same as an uninterrupted run with any number of workers. A
run that fails or is interrupted before its first unit is saved leaves no ``OUT.partial/`` behind. A
disk without room for the units still to make and the file is refused before any work.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import cosmology
from .config import Bool, Free, Int, ListOf, Number, OneOf, REQUIRED, resolve
from .errors import ConfigError
from .executor import default_workers, open_executor, run_tasks
from .geometry import FlatSkyGeometry
from .io.files import check_free_space, check_output_file
from .io.partial import PartialFolder
from .io.sims import assignment, write_sims
from .provenance import config_json
from .sample import FIELDS, FlatSimulator, Instrument
from .progress import Progress, track
from .foregrounds import SCHEMA as FOREGROUNDS_SCHEMA, Foregrounds
from .survey import SCHEMA as SURVEY_SCHEMA, Survey

if TYPE_CHECKING:
    from .cosmology import CMBSpectra

log = logging.getLogger(__name__)

SCHEMA = {
    "seed": Int(1234, min=0, doc="root seed: every map derives from (seed, index)"),
    "n_maps": Int(256, min=1, doc="number of maps written"),
    "geometry": {
        "kind": OneOf("flat", "flat", "curved",
                      doc="flat: flat-sky periodic boxes (or cut from them, survey.periodic); curved: gnomonic "
                          "patches of full-sky maps"),
        "shape": ListOf(Int(min=4), [128, 128], min_len=2, max_len=2, doc="map size (ny, nx), pixels, both even"),
        "pixel_arcmin": Number(2.34375, gt=0, doc="pixel side, arcmin"),
    },
    "curved": {
        "lmax": Int(5000, min=1, doc="band limit of the full-sky maps (at most cosmology.lmax)"),
        "patch_nside": Int(8, min=1, doc="HEALPix nside of the patch centres"),
        "max_abs_lat_deg": Number(90.0, doc="patch centres within this |latitude|, degrees"),
    },
    "cosmology": {
        "sampling": OneOf("fiducial", "fiducial", "list", "grid", "latin_hypercube",
                          doc="how the cosmologies are chosen"),
        "fixed": Free({}, doc="parameter -> value set in every cosmology"),
        "list": Free([], doc="sampling list: the cosmologies, as parameter mappings"),
        "grid": Free({}, doc="sampling grid: parameter -> list of values (all combinations)"),
        "ranges": Free({}, doc="sampling latin_hypercube: parameter -> [low, high]"),
        "n": Int(8, min=1, doc="sampling latin_hypercube: number of cosmologies"),
        "lmax": Int(5000, min=3000, doc="CAMB multipole limit"),
        "lens_potential_accuracy": Int(1, min=1, doc="CAMB lens_potential_accuracy"),
    },
    "instrument": {
        "beam_fwhm_arcmin": Number(1.0, min=0, doc="Gaussian beam FWHM, arcmin (0: none)"),
        "noise_p_uk_arcmin": ListOf(Number(min=0, keep_int=True), [1.0], min_len=1,
                                    doc="polarization noise of each noise level, uK-arcmin"),
        "noise_t_uk_arcmin": ListOf(Number(min=0, keep_int=True), None, min_len=1,
                                    doc="temperature noise of each level, uK-arcmin (null: noise_p / sqrt 2)"),
    },
    "simulation": {
        "fields": ListOf(OneOf(REQUIRED, *FIELDS), list(FIELDS), min_len=1, doc="maps written"),
        "lmax_cmb": Number(None, gt=0, keep_int=True, doc="band limit of the unlensed CMB (null: Nyquist)"),
        "lmax_phi": Number(None, gt=0, keep_int=True, doc="band limit of phi (null: Nyquist)"),
        "include_b": Bool(False, doc="draw unlensed B modes from the spectra"),
        "nufft_epsilon": Number(1e-6, gt=2e-13, lt=1e-2, doc="relative accuracy of the lensing NUFFT"),
        "block_size": Int(32, min=1, doc="flat-sky maps made per task"),
    },
    "survey": SURVEY_SCHEMA,
    "foregrounds": FOREGROUNDS_SCHEMA,
}
"""Config schema with defaults. See ``sims/quick.yaml`` for a commented example."""


def resolve_config(user: dict | None) -> dict:
    """Resolve a user config over :data:`SCHEMA` and check every value (raises ConfigError)."""
    cfg = resolve(user, SCHEMA)
    plan_from_config(cfg)
    return cfg


def sample_cosmologies(cosmo_cfg: dict, seed: int) -> list[dict]:
    """The list of full parameter sets a config asks for.

    Parameters
    ----------
    cosmo_cfg : dict
        The resolved ``cosmology`` section.
    seed : int
        Root seed (a Latin hypercube uses its own stream derived from it).

    Returns
    -------
    list of dict
    """
    fixed = cosmo_cfg["fixed"]
    if not isinstance(fixed, dict):
        raise ConfigError(f"cosmology.fixed: expected a mapping, got {fixed!r}")
    mode = cosmo_cfg["sampling"]
    if mode == "fiducial":
        points = [{}]
    elif mode == "list":
        points = cosmo_cfg["list"]
        if not isinstance(points, list) or not points or not all(isinstance(p, dict) for p in points):
            raise ConfigError("cosmology.list: expected a non-empty list of parameter mappings")
    elif mode == "grid":
        values = cosmo_cfg["grid"]
        if not isinstance(values, dict) or not values:
            raise ConfigError("cosmology.grid: expected a mapping of parameter -> list of values")
        for name, vals in values.items():
            if not isinstance(vals, list) or not vals:
                raise ConfigError(f"cosmology.grid.{name}: expected a non-empty list of values")
        points = cosmology.grid(values)
    else:
        ranges = cosmo_cfg["ranges"]
        if not isinstance(ranges, dict) or not ranges:
            raise ConfigError("cosmology.ranges: expected a mapping of parameter -> [low, high]")
        for name, rng_ in ranges.items():
            if (not isinstance(rng_, (list, tuple)) or len(rng_) != 2
                    or not all(isinstance(v, (int, float)) for v in rng_) or not rng_[0] < rng_[1]):
                raise ConfigError(f"cosmology.ranges.{name}: expected [low, high] with low < high, got {rng_!r}")
            cosmology.check_params({name: rng_[0]}, where="cosmology.ranges")
            cosmology.check_params({name: rng_[1]}, where="cosmology.ranges")
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2**31,)))
        points = cosmology.latin_hypercube(ranges, cosmo_cfg["n"], rng)
    where = "cosmology.fixed"
    out = []
    for k, p in enumerate(points):
        out.append(cosmology.check_params({**fixed, **p}, where=where if not p else f"cosmology.{mode}[{k}]"))
    return out


@dataclass(frozen=True)
class SimPlan:
    """Everything needed to make any sample, derived once from a resolved config.

    Attributes
    ----------
    config : dict
        The resolved config.
    geom : FlatSkyGeometry
        Geometry of a map (a flat periodic patch, or a gnomonic curved-sky patch).
    cosmologies : list of dict
        Full parameter sets.
    instruments : list of Instrument
        One per noise level.
    survey : Survey
        Mask, noise map and periodicity of the maps.
    foregrounds : Foregrounds
        Foreground residuals in the observed maps.
    units : list of tuple
        ``(unit_id, first_sample, stop_sample, seed_index)``; a unit is made by one task.
    """

    config: dict
    geom: FlatSkyGeometry
    cosmologies: list
    instruments: list
    survey: Survey
    units: list
    foregrounds: Foregrounds

    @property
    def n_maps(self) -> int:
        return self.config["n_maps"]

    @property
    def kind(self) -> str:
        return self.config["geometry"]["kind"]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.config["simulation"]["fields"])

    @property
    def periodic(self) -> bool:
        """Whether the maps are periodic (flat maps that are their whole box)."""
        return self.kind == "flat" and self.survey.periodic

    @property
    def products(self) -> tuple[str, ...]:
        """Everything a unit makes per map: the fields, then the survey's ``mask`` and ``ivar_p``."""
        return self.fields + self.survey.maps

    def assignment(self, seed_index: int | np.ndarray) -> tuple[int | np.ndarray, int | np.ndarray]:
        """``(cosmology_index, noise_index)`` of a flat sample or a full-sky realisation."""
        return assignment(seed_index, len(self.cosmologies), len(self.instruments))


def plan_from_config(cfg: dict) -> SimPlan:
    """Check the values of a resolved config that depend on one another and build its :class:`SimPlan`."""
    n_maps, g, inst = cfg["n_maps"], cfg["geometry"], cfg["instrument"]
    geom = FlatSkyGeometry(tuple(g["shape"]), g["pixel_arcmin"])
    noise_p = [float(p) for p in inst["noise_p_uk_arcmin"]]
    if inst["noise_t_uk_arcmin"] is None:
        noise_t = [p / np.sqrt(2.0) for p in noise_p]
    else:
        noise_t = [float(t) for t in inst["noise_t_uk_arcmin"]]
        if len(noise_t) != len(noise_p):
            raise ConfigError("instrument.noise_t_uk_arcmin: needs one entry per noise_p_uk_arcmin level")
    instruments = [Instrument(inst["beam_fwhm_arcmin"], t, p) for t, p in zip(noise_t, noise_p)]
    survey = Survey.from_config(cfg["survey"])
    survey.check(geom, noise_p)
    foregrounds = Foregrounds.from_config(cfg["foregrounds"])
    if foregrounds.any and g["kind"] != "flat":
        raise ConfigError("foregrounds: residuals are simulated on flat maps only (geometry.kind: flat)")
    cosmologies = sample_cosmologies(cfg["cosmology"], cfg["seed"])
    if g["kind"] == "flat":
        block = cfg["simulation"]["block_size"]
        units = [(u, s, min(s + block, n_maps), None) for u, s in enumerate(range(0, n_maps, block))]
    else:
        units = _curved_units(cfg, geom)
    return SimPlan(cfg, geom, cosmologies, instruments, survey, units, foregrounds)


def _curved_units(cfg, geom):
    from .curvedsky import patch_centres

    c = cfg["curved"]
    if c["lmax"] > cfg["cosmology"]["lmax"]:
        raise ConfigError(f"curved.lmax: {c['lmax']} exceeds cosmology.lmax {cfg['cosmology']['lmax']}")
    npatch = len(patch_centres(c["patch_nside"], c["max_abs_lat_deg"]))
    if npatch == 0:
        raise ConfigError("curved.max_abs_lat_deg: leaves no patch centre")
    n = cfg["n_maps"]
    return [(u, s, min(s + npatch, n), u) for u, s in enumerate(range(0, n, npatch))]


# -- work units --------------------------------------------------------------------------------------

def simulate_unit(plan: SimPlan, unit: tuple, spectra_by_index: Mapping[int, CMBSpectra]) -> tuple[int, dict, dict]:
    """Make the samples of one unit.

    Parameters
    ----------
    plan : SimPlan
    unit : tuple
        ``(unit_id, start, stop, seed_index)`` from ``plan.units``.
    spectra_by_index : dict
        Cosmology index -> CMBSpectra for the cosmologies this unit needs.

    Returns
    -------
    tuple
        ``(unit_id, maps, meta)``: ``maps`` maps field (and survey map, ``plan.products``) -> float32 array
        ``(stop - start, ny, nx)``;
        ``meta`` maps ``cosmology_index``, ``noise_index``, ``seed_index`` (and ``patch_centre``
        for curved patches) to per-sample arrays.
    """
    unit_id, start, stop, seed_index = unit
    cfg = plan.config
    sim = cfg["simulation"]
    if plan.kind == "flat":
        maps = {f: np.empty((stop - start,) + plan.geom.shape, np.float32) for f in plan.products}
        meta = {k: np.empty(stop - start, np.int64) for k in ("cosmology_index", "noise_index", "seed_index")}
        simulators = {}
        for k, i in enumerate(range(start, stop)):
            ci, ni = plan.assignment(i)
            if (ci, ni) not in simulators:
                simulators[ci, ni] = FlatSimulator(plan.geom, spectra_by_index[ci], plan.instruments[ni],
                                                   lmax_cmb=sim["lmax_cmb"], lmax_phi=sim["lmax_phi"],
                                                   include_b=sim["include_b"], epsilon=sim["nufft_epsilon"],
                                                   survey=plan.survey, foregrounds=plan.foregrounds)
            sample = simulators[ci, ni].sample(cfg["seed"], i, fields=plan.products)
            for f in plan.products:
                maps[f][k] = sample[f]
            meta["cosmology_index"][k], meta["noise_index"][k], meta["seed_index"][k] = ci, ni, i
        return unit_id, maps, meta
    from .curvedsky import patch_centres, simulate_curved_patches

    c = cfg["curved"]
    centres = patch_centres(c["patch_nside"], c["max_abs_lat_deg"])[: stop - start]
    ci, ni = plan.assignment(seed_index)
    patches = simulate_curved_patches(spectra_by_index[ci], plan.instruments[ni], cfg["seed"], seed_index,
                                      plan.geom, centres, lmax=c["lmax"], fields=plan.products,
                                      include_b=sim["include_b"], epsilon=sim["nufft_epsilon"], survey=plan.survey)
    n = stop - start
    maps = {f: patches[f].astype(np.float32) for f in plan.products}
    meta = {"cosmology_index": np.full(n, ci, np.int64), "noise_index": np.full(n, ni, np.int64),
            "seed_index": np.full(n, seed_index, np.int64), "patch_centre": np.asarray(centres, float)}
    return unit_id, maps, meta


def needed_cosmologies(plan: SimPlan, unit: tuple) -> set[int]:
    """Indices of the cosmologies a unit uses."""
    _, start, stop, seed_index = unit
    if seed_index is not None:
        return {plan.assignment(seed_index)[0]}
    return {plan.assignment(i)[0] for i in range(start, stop)}


def _compute_spectra_task(params, lmax, accuracy):
    return cosmology.compute_spectra(params, lmax=lmax, lens_potential_accuracy=accuracy)


# -- the stage ------------------------------------------------------------------------------------

def _unit_name(unit_id: int) -> str:
    return f"unit_{unit_id:07d}"


def _load_unit(partial: PartialFolder, unit_id: int) -> tuple[dict, dict]:
    """The maps and metadata of a saved unit."""
    arrays = partial.load(_unit_name(unit_id))
    return ({k[4:]: v for k, v in arrays.items() if k.startswith("map_")},
            {k[5:]: v for k, v in arrays.items() if k.startswith("meta_")})


def parse_shard(text: str) -> tuple[int, int]:
    """``'K/N'`` -> ``(K, N)`` with ``1 <= K <= N`` (shard K of N).

    Raises
    ------
    ConfigError
        For anything else.
    """
    k, sep, n = str(text).partition("/")
    try:
        k, n = int(k), int(n)
    except ValueError:
        k = n = 0
    if not sep or not 1 <= k <= n:
        raise ConfigError(f"--shard {text}: expected K/N with 1 <= K <= N, e.g. 2/8")
    return k, n


def run_simulate(config: dict | None, inputs: dict | None, out: str | Path, *, overwrite: bool = False,
                 progress: bool = True, workers: int | None = None, scheduler: str | None = None,
                 scheduler_file: str | None = None, shard: str | None = None) -> Path:
    """Run the simulate stage.

    Parameters
    ----------
    config : dict
        Config as read from YAML (merged over :data:`SCHEMA`).
    inputs : dict or None
        None or ``{}``: the stage reads no file.
    out : str or Path
        Output HDF5 path (layout of :mod:`deepcmb.io.sims`).
    overwrite : bool
        Replace an existing output.
    progress : bool
        Show the progress (maps done, ETA) on stderr (:mod:`deepcmb.progress`).
    workers : int, optional
        Local worker processes (default: one per core this process may use,
        :func:`~deepcmb.executor.default_workers`; one for curved-sky patches, whose transforms use
        every core).
    scheduler, scheduler_file : str, optional
        Dask scheduler address, or scheduler file; overrides ``workers``.
    shard : str, optional
        ``'K/N'``: make only the K-th of N interleaved shares of the work units, into the partial folder
        ``OUT.partial/`` that the N shards share (e.g. the tasks of an array job), and write no file; a
        call without ``shard`` then makes whatever is missing and assembles ``OUT``, the same file as a
        single run's (every map depends only on the seed and its index).

    Returns
    -------
    Path
        The written file; with ``shard``, the partial folder.
    """
    if inputs:
        raise ConfigError(f"simulate: reads no input file, got {', '.join(inputs)}")
    k_n = parse_shard(shard) if shard is not None else None
    cfg = resolve(config, SCHEMA)
    if workers is None:
        workers = 1 if cfg["geometry"]["kind"] == "curved" else default_workers()
    workers = Int(min=1).check("--workers", workers)
    plan = plan_from_config(cfg)
    out = Path(out)
    partial = PartialFolder(check_output_file(out, overwrite), config_json(cfg), fresh=overwrite,
                            shared=k_n is not None)
    try:
        cc = cfg["cosmology"]
        mine = plan.units if k_n is None else [u for i, u in enumerate(plan.units) if i % k_n[1] == k_n[0] - 1]
        todo = [u for u in mine if not partial.has(_unit_name(u[0]))]
        n_mine = sum(u[2] - u[1] for u in mine)
        n_done = n_mine - sum(u[2] - u[1] for u in todo)
        map_bytes = 4 * plan.geom.shape[0] * plan.geom.shape[1] * len(plan.fields)
        # the units still to make, and the file, which is assembled before the units are removed
        check_free_space(out, map_bytes * ((0 if k_n else plan.n_maps) + sum(u[2] - u[1] for u in todo)))
        with open_executor(workers, scheduler, scheduler_file) as ex:
            cosmo_tasks = [(p, cc["lmax"], cc["lens_potential_accuracy"]) for p in plan.cosmologies]
            spectra = list(track(run_tasks(ex, _indexed(_compute_spectra_task), list(enumerate(cosmo_tasks))),
                                 "CAMB", "cosmology", total=len(cosmo_tasks), enabled=progress, leave=False,
                                 log=log))
            spectra = [s for _, s in sorted(spectra, key=lambda t: t[0])]
            tasks = [(plan, u, {i: spectra[i] for i in needed_cosmologies(plan, u)}) for u in todo]
            with Progress(n_mine, "simulate", "map", enabled=progress, initial=n_done, log=log) as bar:
                for unit_id, maps, meta in run_tasks(ex, simulate_unit, tasks):
                    partial.save(_unit_name(unit_id), {**{f"map_{k}": v for k, v in maps.items()},
                                                       **{f"meta_{k}": v for k, v in meta.items()}})
                    bar.update(len(next(iter(maps.values()))))
        if k_n is not None:
            left = sum(not partial.has(_unit_name(u[0])) for u in plan.units)
            log.info("shard %d/%d done; %d of %d units still missing in %s%s", *k_n, left, len(plan.units),
                     partial.path, "" if left else "; run the command without --shard to assemble the file")
            return partial.path
        write_sims(out, plan, spectra, ((u, *_load_unit(partial, u[0])) for u in plan.units))
    except BaseException:
        if k_n is None and not any(partial.path.glob("*.npz")):  # nothing to resume from: leave nothing behind
            shutil.rmtree(partial.path, ignore_errors=True)
        raise
    partial.remove()
    return out


class _indexed:
    """Picklable wrapper: ``_indexed(fn)((i, args)) -> (i, fn(*args))`` keeps results in order."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, i, args):
        return i, self.fn(*args)
