"""Outputs of the params stage: ``chains.h5`` and ``summary.json``.

``chains.h5`` (``format = 'deepcmb.params'``, ``format_version = 1``)::

    /                         attrs: provenance (deepcmb_version, git_revision, stage, created, config),
                                     format, format_version, report_file, parameters (sampled names),
                                     calibration_cosmology, noise_index, test_cosmologies
    /bins/edges (nb+1,), /bins/L (nb,)        the bands fitted
    /calibration/<label>/transfer (nb,)       T_b (1 for a QE)
    /calibration/<label>/noise (nb,)          N_b used by the calibrated fit (sr)
    /calibration/<label>/n0, noise_residual   QE only: analytic N0 and N_b - N0 (N1 + ...)
                           attrs: method, n_maps
    /<label>/cosmo<c>/chain (steps - burn, walkers, ndim) float64
    /<label>/cosmo<c>/log_prob (steps - burn, walkers)
    /<label>/cosmo<c>/data, model_best (nb,), covariance (nb, nb)
    /<label>/cosmo<c>/derived (steps - burn, walkers)   Alens_eff, when a CAMB parameter is sampled
           attrs: param_names, truth (ndim,), prior_lower, prior_upper (ndim,), acceptance, autocorr_time
                  (ndim,), n_maps, debias ('calibrated' | 'n0'), chi2_best, n_bins; with derived:
                  derived_name, derived_definition, derived_truth, derived_exponents (ndim,)
    /<label>/cosmo<c>/n0_only/...   QE only: the same, fitted with the analytic N0 alone

``summary.json``::

    {"report_file", "created", "git_revision", "parameters": [...], "derived_parameter": "Alens_eff" | null,
     "priors": {P: [low, high]}, "calibration_cosmology", "test_cosmologies": [...], "noise_index",
     "bins": {"edges": [...], "L": [...]},
     "calibration": {label: {"method", "n_maps", "transfer": [...], "noise": [...],
                             "n0": [...], "noise_residual": [...] (QE)}},
     "theory_check": {"emulator_vs_report_max_rel": float, "truth_over_theory": [...],
                      "truth_over_theory_err": [...]},
     "results": {label: {"cosmo<c>": {P: {"mean", "std", "truth", "pull", "fisher_std", "prior_std_ratio"},
                                      "derived": {"Alens_eff": {"mean", "std", "truth", "pull", "definition",
                                                                "exponents": {P: p},
                                                                "correlation_with_Alens": {P: r}}},
                                      "within_2sigma", "n_maps", "n_bins", "chi2_best", "acceptance",
                                      "autocorr_steps": {P: tau},
                                      "n0_only": {... the same, QE only}}}},
     "all_within_2sigma": {label: bool}, "notes": "..."}

``pull = (mean - truth) / std``; ``within_2sigma``: every sampled parameter and the derived amplitude
have ``|pull| <= 2``; ``prior_std_ratio``: posterior std over the flat prior's (range / sqrt 12), near 1
for a parameter the data do not constrain. Non-finite numbers are written as null.
"""

import json
import math
import os
from pathlib import Path

import h5py
import numpy as np

from ..provenance import provenance_attrs
from .likelihood import DERIVED
from .sampling import marginal

FORMAT = "deepcmb.params"
FORMAT_VERSION = 1

DEGENERATE = 0.98
"""Correlation of a parameter's C^kk response with Alens's above which the two are called degenerate."""

PRIOR_DOMINATED = 0.5
"""Posterior over prior standard deviation above which a parameter counts as unconstrained."""


def _fit_group(g, fit):
    g["chain"] = fit.chain.samples
    g["log_prob"] = fit.chain.log_prob
    g["data"] = fit.data
    g["covariance"] = fit.covariance
    g["model_best"] = fit.model_best
    g.attrs.update(param_names=list(fit.names), truth=fit.truth, prior_lower=fit.lower, prior_upper=fit.upper,
                   acceptance=fit.chain.acceptance, autocorr_time=fit.chain.autocorr, n_maps=fit.n_maps,
                   debias=fit.debias, chi2_best=fit.chi2_best, n_bins=fit.data.size)
    if fit.derived is not None:
        g["derived"] = fit.derived["samples"]
        g.attrs.update(derived_name=DERIVED, derived_definition=fit.derived["definition"],
                       derived_truth=fit.derived["truth"], derived_exponents=fit.derived["exponents"])


def write_chains(path, cfg, report, plan, edges, calibrations, fits):
    """Write ``chains.h5`` (layout in the module docstring) via a temporary file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(provenance_attrs(cfg, "params"))
            f.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, report_file=str(report.path.resolve()),
                           parameters=list(cfg["sample"]), calibration_cosmology=cfg["calibration_cosmology"],
                           noise_index=cfg["noise_index"], test_cosmologies=np.array(plan.tests, dtype=np.int64))
            f["bins/edges"] = edges
            f["bins/L"] = report.L[plan.bins]
            for label, cals in calibrations.items():
                g = f.create_group(f"calibration/{label}")
                _calibration_datasets(g, report.methods[label].method, cals)
            for fit in fits:
                name = f"{fit.label}/cosmo{fit.cosmology}" + ("/n0_only" if fit.debias == "n0" else "")
                _fit_group(f.require_group(name), fit)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _calibration_datasets(g, method, cals):
    cal = cals[0]
    g["transfer"] = cal.transfer
    g["noise"] = cal.noise
    g.attrs.update(method=method, n_maps=cal.n_maps)
    if method == "qe":
        g["n0"] = cals[1].noise
        g["noise_residual"] = cal.noise - cals[1].noise


def _fit_summary(fit):
    flat = fit.chain.flat()
    out = {}
    for i, name in enumerate(fit.names):
        prior_std = (fit.upper[i] - fit.lower[i]) / math.sqrt(12.0)
        m = marginal(flat[:, i], fit.truth[i])
        out[name] = dict(m, fisher_std=float(fit.fisher_std[i]), prior_std_ratio=m["std"] / prior_std)
    pulls = [out[n]["pull"] for n in fit.names]
    if fit.derived is not None:
        d = fit.derived
        m = marginal(d["samples"].ravel(), d["truth"])
        pulls.append(m["pull"])
        others = [(i, n) for i, n in enumerate(fit.names) if n != "Alens"]
        out["derived"] = {DERIVED: dict(m, definition=d["definition"],
                                        exponents={n: float(d["exponents"][i]) for i, n in others},
                                        correlation_with_Alens={n: float(d["correlation"][i]) for i, n in others})}
    out.update(within_2sigma=bool(all(abs(p) <= 2 for p in pulls)), n_maps=fit.n_maps, n_bins=int(fit.data.size),
               chi2_best=fit.chi2_best, acceptance=fit.chain.acceptance,
               autocorr_steps={n: float(t) for n, t in zip(fit.names, fit.chain.autocorr)})
    return out


def _theory_check(report, plan, emulator):
    theta = np.array([plan.base[n] for n in emulator.names])
    theory = emulator(theta)
    rows = plan.calibration_rows
    truth = report.truth[rows, plan.bins]
    stored = report.clkk[int(report.cosmology_index[rows[0]]), plan.bins]
    return {"emulator_vs_report_max_rel": float(np.max(np.abs(theory / stored - 1))),
            "truth_over_theory": truth.mean(0) / theory,
            "truth_over_theory_err": truth.std(0, ddof=1) / math.sqrt(rows.size) / theory if rows.size > 1
            else np.full(theory.size, np.nan)}


def _amplitude(entry):
    """Posterior mean of the lensing amplitude of a fit summary: the derived one if any, else Alens."""
    if "derived" in entry:
        return entry["derived"][DERIVED]["mean"]
    return entry["Alens"]["mean"] if "Alens" in entry else float("nan")


def _notes(cfg, report, plan, edges, calibrations, fits, results, check):
    c_cal, j = cfg["calibration_cosmology"], cfg["noise_index"]
    n_cal = plan.calibration_rows.size
    notes = [
        f"Model: C_hat_b = T_b^2 C^kk_b(theta) + N_b over {edges.size - 1} bands, L = {edges[0]:g}..{edges[-1]:g}. "
        f"T_b, N_b and the band-power covariance come from the {n_cal} maps of cosmology {c_cal} at noise level "
        f"{j}, separate from the test maps; the covariance (Hartlap-corrected) includes the error of the "
        "calibrated noise. T_b and N_b are held at their calibration values: a method whose response depends "
        "on cosmology (a Wiener-like network) is biased by that dependence beyond the quoted errors."]
    for label, cals in calibrations.items():
        if report.methods[label].method != "qe":
            continue
        frac = float(np.mean((cals[0].noise - cals[1].noise) / cals[1].noise))
        text = (f"{label}: quadratic estimator, T_b = 1, N_b = analytic N0 + Monte-Carlo residual (N1 + ...; "
                f"{100 * frac:+.1f}% of N0 on average over the bands). The N0-only fit (n0_only) ignores N1 > 0 "
                "and is expected to be biased high in the lensing amplitude")
        shifts = [f"cosmo{c} {_amplitude(results[label][f'cosmo{c}']['n0_only']):.3f} vs "
                  f"{_amplitude(results[label][f'cosmo{c}']):.3f}" for c in plan.tests]
        if shifts:
            text += " (amplitude mean N0-only vs calibrated: " + ", ".join(shifts) + ")"
        notes.append(text + ".")
    first = next((f for f in fits if f.derived is not None), None)
    if first is not None:
        corr, expo = first.derived["correlation"], first.derived["exponents"]
        degenerate = [(n, corr[i], expo[i]) for i, n in enumerate(first.names) if n != "Alens" and corr[i] > DEGENERATE]
        if degenerate and "Alens" in first.names:
            desc = ", ".join(f"{n} (correlation {r:.4f}, exponent {p:.3f})" for n, r, p in degenerate)
            notes.append(f"Alens is nearly degenerate in C^kk with {desc}: the band powers constrain the derived "
                         f"amplitude {DERIVED} = {first.derived['definition']} (for {first.label}; the exponents "
                         "of each fit are in its derived entry), while the marginals of the degenerate parameters "
                         "follow the degeneracy out to the prior edges.")
    for label in calibrations:
        fitted = [f for f in fits if f.label == label and f.debias == "calibrated"]
        ratios = {n: max(results[label][f"cosmo{f.cosmology}"][n]["prior_std_ratio"] for f in fitted)
                  for n in cfg["sample"]}
        derived = fitted[0].derived
        degenerate = set()
        if derived is not None and "Alens" in fitted[0].names:
            degenerate = {n for i, n in enumerate(fitted[0].names) if derived["correlation"][i] > DEGENERATE}
            degenerate = degenerate if len(degenerate) > 1 else set()
        constrained = [n for n, r in ratios.items() if r < PRIOR_DOMINATED and n not in degenerate]
        constrained += [DERIVED] if derived is not None else []
        loose = [n for n, r in ratios.items() if r >= PRIOR_DOMINATED and n not in degenerate]
        text = f"{label}: constrained: {', '.join(constrained) or 'none'}"
        if degenerate:
            text += f"; degenerate in C^kk, marginals set by the priors: {', '.join(sorted(degenerate))}"
        notes.append(text + f"; prior-dominated (posterior std > {PRIOR_DOMINATED} x prior std): "
                            f"{', '.join(loose) or 'none'}.")
    for c in plan.tests:
        truth = report.cosmology(c)
        off = [f"{n} = {truth[n]:.6g} (held at {plan.base[n]:.6g})" for n in truth
               if n not in cfg["sample"] and not np.isclose(truth[n], plan.base[n], rtol=1e-6, atol=0)]
        if off:
            notes.append(f"cosmo{c}: parameters not sampled differ from the calibration cosmology's: "
                         f"{', '.join(off)}; the fit is biased by them.")
    if check["emulator_vs_report_max_rel"] > 0.01:
        notes.append(f"The emulator's C^kk at the calibration cosmology differs from the report's /cosmology/clkk by "
                     f"up to {100 * check['emulator_vs_report_max_rel']:.1f}%: set params.camb to the CAMB "
                     "settings of the simulations.")
    dev = np.abs(check["truth_over_theory"] - 1)
    bad = np.flatnonzero((dev > 3 * check["truth_over_theory_err"]) & (dev > 0.01))
    if bad.size:
        notes.append("The calibration maps' true kappa power departs from the theory by more than 3 sigma at "
                     f"L = {', '.join(f'{x:.0f}' for x in report.L[plan.bins][bad])} (see theory_check); the model "
                     "assumes the simulations follow the theory.")
    kept = cfg["steps"] - cfg["burn"]
    short = [f"{f.label}/cosmo{f.cosmology}" + ("/n0_only" if f.debias == "n0" else "") for f in fits
             if np.nanmax(f.chain.autocorr) * 50 > kept]
    if short:
        notes.append(f"Chains shorter than 50 autocorrelation times ({kept} steps kept): {', '.join(short)}; "
                     "increase params.steps for publication-quality errors.")
    return " ".join(notes)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_summary(path, cfg, report, plan, edges, emulator, calibrations, fits):
    """Write ``summary.json`` (layout in the module docstring) via a temporary file."""
    results = {}
    for fit in fits:
        entry = results.setdefault(fit.label, {}).setdefault(f"cosmo{fit.cosmology}", {})
        if fit.debias == "n0":
            entry["n0_only"] = _fit_summary(fit)
        else:
            entry.update(_fit_summary(fit))
    check = _theory_check(report, plan, emulator)
    calibration = {}
    for label, cals in calibrations.items():
        method = report.methods[label].method
        rec = {"method": method, "n_maps": cals[0].n_maps, "transfer": cals[0].transfer, "noise": cals[0].noise}
        if method == "qe":
            rec.update(n0=cals[1].noise, noise_residual=cals[0].noise - cals[1].noise)
        calibration[label] = rec
    prov = provenance_attrs(cfg, "params")
    summary = {
        "report_file": str(report.path.resolve()), "created": prov["created"], "git_revision": prov["git_revision"],
        "parameters": list(cfg["sample"]),
        "derived_parameter": DERIVED if any(f.derived is not None for f in fits) else None,
        "priors": cfg["priors"], "calibration_cosmology": cfg["calibration_cosmology"],
        "test_cosmologies": plan.tests, "noise_index": cfg["noise_index"],
        "bins": {"edges": edges, "L": report.L[plan.bins]},
        "calibration": calibration, "theory_check": check, "results": results,
        "all_within_2sigma": {label: all(r["within_2sigma"] for r in per.values()) for label, per in results.items()},
        "notes": _notes(cfg, report, plan, edges, calibrations, fits, results, check),
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(_jsonable(summary), indent=1, allow_nan=False) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
