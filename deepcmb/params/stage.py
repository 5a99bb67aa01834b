"""The params stage: evaluation report -> calibrated band-power likelihood -> emcee chains.

For each method of the report and each test cosmology, the data vector is the mean auto band power of
the test maps at one noise level, fitted with :math:`T_b(\\theta)^2 C_b^{\\kappa\\kappa}(\\theta) + N_b(\\theta)`
where :math:`T_b, N_b` (constant, or linear in the sampled parameters) come from the maps of separate
calibration cosmologies and the covariance from those of the first, the reference
(:mod:`~deepcmb.params.calibration`, :mod:`~deepcmb.params.likelihood`). Quadratic estimators are
fitted twice: calibrated on simulations like any method (N0 + N1 + ...) and with unit transfer and the
analytic N0 alone.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from dataclasses import dataclass

import numpy as np

from ..cosmology import PARAM_NAMES
from ..errors import ConfigError, InputError
from ..io.chains import RESERVED, write_chains
from ..io.files import atomic_files, check_output_file, check_output_folder
from .calibration import calibrate, calibrate_n0, calibration_design
from .emulator import build_emulator
from .likelihood import DERIVED, amplitude_exponents, build_likelihood, derived_amplitude
from .output import write_summary
from .report import read_report
from .sampling import run_emcee
from .schema import resolve_config


@dataclass(frozen=True)
class Fit:
    """One sampled posterior and what it was fitted to.

    Attributes
    ----------
    label : str
        Method label.
    cosmology : int
        Test cosmology.
    debias : str
        ``'calibrated'`` or ``'n0'`` (quadratic estimators' N0-only fit).
    names : tuple of str
        Sampled parameters.
    truth : ndarray, shape (ndim,)
        The test cosmology's values.
    lower, upper : ndarray, shape (ndim,)
        Prior bounds.
    data, model_best : ndarray, shape (nb,)
        Mean band powers of the test maps and the model at the best sample (sr).
    covariance : ndarray, shape (nb, nb)
    chi2_best : float
    fisher_std : ndarray, shape (ndim,)
        Fisher forecast of the marginal errors at the best sample.
    n_maps : int
        Test maps averaged.
    chain : Chain
    derived : dict or None
        ``name`` (:data:`~deepcmb.params.likelihood.DERIVED`), ``samples`` (steps - burn, walkers),
        ``truth``, ``exponents`` and ``correlation`` (ndim,), ``definition`` (text) of the derived
        amplitude; None when only ``Alens`` is sampled.
    """

    label: str
    cosmology: int
    debias: str
    names: tuple
    truth: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    data: np.ndarray
    model_best: np.ndarray
    covariance: np.ndarray
    chi2_best: float
    fisher_std: np.ndarray
    n_maps: int
    chain: object
    derived: dict


@dataclass(frozen=True)
class Plan:
    """What a resolved config selects from a report.

    Attributes
    ----------
    bins : slice
        The bands fitted.
    calibration : list of int
        Calibration cosmologies, the reference first.
    calibration_rows : list of ndarray
        Their maps at the chosen noise level.
    thetas : ndarray, shape (k, ndim)
        Their sampled parameters.
    tests : list of int
        Test cosmologies.
    base : dict
        Full parameter set of the reference cosmology.
    """

    bins: slice
    calibration: list
    calibration_rows: list
    thetas: np.ndarray
    tests: list
    base: dict


def _calibration_cosmologies(cfg, report):
    """Check the calibration cosmologies; return their rows and sampled parameters, shape (k, ndim)."""
    cal, j, names = cfg["calibration_cosmologies"], cfg["noise_index"], cfg["sample"]
    n_cosmo = report.n_cosmologies
    rows = []
    for c in cal:
        if c >= n_cosmo:
            raise ConfigError(f"params.calibration_cosmologies: {c} is not a cosmology of {report.path} "
                              f"(it has {n_cosmo})")
        rows.append(report.rows(c, j))
        if rows[-1].size == 0:
            raise ConfigError(f"params.noise_index: {report.path} has no maps of cosmology {c} at noise level {j}")
    params = [report.cosmology(c) for c in cal]
    varying = [f"{p} ({', '.join(f'{q[p]:.6g}' for q in params)})" for p in PARAM_NAMES
               if p not in names and any(q[p] != params[0][p] for q in params)]
    if varying:
        raise ConfigError(f"params.calibration_cosmologies: {cal} differ in parameters not sampled: "
                          f"{'; '.join(varying)}; the calibration is linear in the sampled parameters only: "
                          "sample them or calibrate on cosmologies that share them")
    thetas = np.array([[q[n] for n in names] for q in params])
    try:
        calibration_design(thetas, names)
    except ValueError as exc:
        raise ConfigError(f"params.calibration_cosmologies: {cal}: {exc}") from None
    return rows, thetas


def _plan(cfg, report):
    inside = np.flatnonzero((report.edges[:-1] >= cfg["Lmin"]) & (report.edges[1:] <= cfg["Lmax"]))
    if inside.size == 0:
        raise ConfigError(f"params.Lmin, params.Lmax: no band of {report.path} lies inside "
                          f"[{cfg['Lmin']:g}, {cfg['Lmax']:g}] (edges {report.edges[0]:g} .. {report.edges[-1]:g})")
    n_cosmo, j, cal = report.n_cosmologies, cfg["noise_index"], cfg["calibration_cosmologies"]
    cal_rows, thetas = _calibration_cosmologies(cfg, report)
    if cfg["test_cosmologies"] is None:
        tests = [c for c in range(n_cosmo) if c not in cal and report.rows(c, j).size]
        if not tests:
            raise ConfigError(f"params.test_cosmologies: {report.path} has no cosmology other than the "
                              f"calibration cosmologies {cal} with maps at noise level {j}")
    else:
        tests = list(cfg["test_cosmologies"])
        for c in tests:
            if c >= n_cosmo or not report.rows(c, j).size:
                raise ConfigError(f"params.test_cosmologies: {report.path} has no maps of cosmology {c} "
                                  f"at noise level {j}")
    for label in report.methods:
        if label in RESERVED:
            raise InputError(f"{report.path}: method label {label!r} is reserved in chains.h5; rename it")
    base = report.cosmology(cal[0])
    for name in cfg["sample"]:
        lo, hi = cfg["priors"][name]
        if name != "Alens" and not lo <= base[name] <= hi:
            raise ConfigError(f"params.priors.{name}: [{lo:g}, {hi:g}] excludes the reference calibration "
                              f"cosmology's value {base[name]:g}, the emulator's reference point")
    return Plan(slice(inside[0], inside[-1] + 1), list(cal), cal_rows, thetas, tests, base)


def _calibrations(cfg, spectra, report, plan):
    b, j = plan.bins, cfg["noise_index"]
    auto = [spectra.auto[rows, b] for rows in plan.calibration_rows]
    truth = [report.truth[rows, b] for rows in plan.calibration_rows]
    cross = [spectra.cross[rows, b] for rows in plan.calibration_rows]
    calibrated = calibrate(plan.thetas, cfg["sample"], auto, cross, truth)
    if spectra.method == "qe":
        if j >= spectra.n0.shape[0]:
            raise InputError(f"{report.path}: the N0 of {spectra.label!r} has no noise level {j}")
        return calibrated, calibrate_n0(auto[0], spectra.n0[j, b], plan.thetas[0])
    return (calibrated,)


def _chain_key(label, cosmology, debias):
    return zlib.crc32(f"{label}/cosmo{cosmology}/{debias}".encode())


def _fit(cfg, report, plan, emulator, spectra, calibration, c, progress):
    names = tuple(cfg["sample"])
    rows = report.rows(c, cfg["noise_index"])
    data = spectra.auto[rows, plan.bins].mean(0)
    lower = np.array([cfg["priors"][n][0] for n in names])
    upper = np.array([cfg["priors"][n][1] for n in names])
    lik = build_likelihood(data, calibration, rows.size, emulator, lower, upper)
    chain = run_emcee(lik, lower, upper, cfg["walkers"], cfg["steps"], cfg["burn"], cfg["seed"],
                      _chain_key(spectra.label, c, calibration.debias), progress=progress,
                      desc=f"{spectra.label} cosmo{c}" + (" N0-only" if calibration.debias == "n0" else ""))
    best = chain.best()
    truth_params = report.cosmology(c)
    truth = np.array([truth_params[n] for n in names])
    derived = None
    theta0 = emulator.base_theta()
    if any(n != "Alens" for n in names) and all(theta0[i] > 0 for i, n in enumerate(names) if n != "Alens"):
        exponents, correlation = amplitude_exponents(lik, theta0)
        sampled = "Alens" in names
        # Alens enters once: as a component of theta when sampled, else as the fixed factor
        alens_fixed, alens_truth = (1.0, 1.0) if sampled else (emulator.base["Alens"], truth_params["Alens"])
        terms = [f"({n}/{theta0[i]:.6g})^{exponents[i]:.4f}" for i, n in enumerate(names) if n != "Alens"]
        derived = {
            "name": DERIVED, "samples": derived_amplitude(chain.samples, names, theta0, exponents, alens_fixed),
            "truth": float(derived_amplitude(truth, names, theta0, exponents, alens_truth)),
            "exponents": exponents, "correlation": correlation,
            "definition": " * ".join(["Alens" if sampled else f"{alens_fixed:g}"] + terms),
        }
    return Fit(spectra.label, c, calibration.debias, names, truth, lower, upper, data, lik.model(best),
               lik.covariance, float(lik.chi2(best)), lik.fisher_std(best), int(rows.size), chain, derived)


OUTPUTS = ("chains.h5", "summary.json")
"""The files of the params stage in its output folder."""


def _prepare_output(out, overwrite):
    """Check the output folder; returns it and the paths of :data:`OUTPUTS` (nothing is created)."""
    out = check_output_folder(out, overwrite, holds=lambda d: any((d / n).exists() for n in OUTPUTS),
                              what=" or ".join(OUTPUTS) + " of deepcmb params")
    paths = [out / n for n in OUTPUTS]
    if out.is_dir():
        for path in paths:
            check_output_file(path, overwrite=True)
    return (out, *paths)


def run_params(config: dict | None, inputs: dict, out: str | Path, *, overwrite: bool = False,
               progress: bool = True) -> Path:
    """Fit cosmological parameters to the reconstructed lensing spectra of an evaluation report.

    Parameters
    ----------
    config : dict or None
        The ``params:`` section (resolved over :data:`~deepcmb.params.schema.SCHEMA`).
    inputs : dict
        ``report``: ``report.h5`` of ``deepcmb evaluate``.
    out : str or Path
        Output folder (created if missing; its parent must exist); receives ``chains.h5`` and
        ``summary.json`` (layout in :mod:`deepcmb.io.chains`).
    overwrite : bool
        Replace existing ``chains.h5`` / ``summary.json`` in ``out``.
    progress : bool
        Progress bars for the CAMB grid and each chain.

    Returns
    -------
    Path
        The output folder.

    Raises
    ------
    ConfigError, InputError, OutputExistsError
        For a bad config, an unusable report, or existing outputs.
    """
    cfg = resolve_config(config)
    out, chains_path, summary_path = _prepare_output(out, overwrite)
    rep = read_report(inputs["report"], cfg["methods"])
    plan = _plan(cfg, rep)
    edges = rep.edges[plan.bins.start:plan.bins.stop + 1]
    emulator = build_emulator(rep.geom, edges, cfg["sample"], plan.base, cfg["priors"], cfg["emulator_points"],
                              lmax=cfg["camb"]["lmax"], lens_potential_accuracy=cfg["camb"]["lens_potential_accuracy"],
                              progress=progress)
    calibrations, fits = {}, []
    for label, spectra in rep.methods.items():
        calibrations[label] = _calibrations(cfg, spectra, rep, plan)
        for c in plan.tests:
            for cal in calibrations[label]:
                fits.append(_fit(cfg, rep, plan, emulator, spectra, cal, c, progress))
    with atomic_files(out) as tmp:
        write_chains(tmp / chains_path.name, cfg, rep, plan, edges, calibrations, fits)
        write_summary(tmp / summary_path.name, cfg, rep, plan, edges, emulator, calibrations, fits)
    return out
