"""The summary of the params stage: ``summary.json``.

Its layout (and the definitions of its figures) is documented in :mod:`deepcmb.io.chains`, which also
writes the chains (``chains.h5``); this module computes the content of ``summary.json`` (per-fit statistics,
the calibration's measured cosmology dependence, the theory cross-check and the notes) and writes it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import chi2 as chi2_dist

from ..io.files import write_json
from ..provenance import provenance_attrs
from .calibration import GRADIENT_DEGREE
from .likelihood import DERIVED
from .sampling import marginal

if TYPE_CHECKING:
    from pathlib import Path

    from .emulator import KappaEmulator
    from .report import ReportSpectra
    from .stage import Fit, Plan

DEGENERATE = 0.98
"""Correlation of a parameter's model response with Alens's above which the two are called degenerate."""

NONLINEAR = 1e-3
"""p-value of a calibration's linear-fit chi2 below which the notes call the linear model rejected."""

PRIOR_DOMINATED = 0.5
"""Posterior over prior standard deviation above which a parameter counts as unconstrained."""


def _calibration_summary(method, cals, plan, names):
    cal = cals[0]
    rec = {"method": method, "n_maps": cal.n_maps, "cosmologies": plan.calibration, "transfer": cal.transfer,
           "noise": cal.noise}
    if method == "qe":
        rec.update(n0=cals[1].noise, noise_residual=cal.noise - cals[1].noise)
    if cal.fitted:
        t_err, n_err = cal.gradient_errors()
        rec["gradients"] = {}
        for i, name in enumerate(names):
            resp = cal.log_response(i)
            rec["gradients"][name] = {
                "transfer": cal.transfer_gradient[i], "transfer_err": t_err[i],
                "noise": cal.noise_gradient[i], "noise_err": n_err[i],
                "dlnT_dlnP": resp["transfer"], "dlnT_dlnP_err": resp["transfer_err"],
                "dlnN_dlnP": resp["noise"], "dlnN_dlnP_err": resp["noise_err"]}
        rec["gradient_smoothing"] = {"degree": GRADIENT_DEGREE if cal.smooth_dof else None,
                                     "chi2_transfer": dict(zip(names, cal.smooth_chi2_transfer.tolist())),
                                     "chi2_noise": dict(zip(names, cal.smooth_chi2_noise.tolist())),
                                     "dof": cal.smooth_dof}
        rec["linear_fit"] = {"chi2_transfer": float(cal.fit_chi2_transfer.sum()),
                             "chi2_noise": float(cal.fit_chi2_noise.sum()),
                             "dof": cal.fit_dof * cal.transfer.size}
    return rec


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
    rows = plan.calibration_rows[0]
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
    cal, j = plan.calibration, cfg["noise_index"]
    n_ref = plan.calibration_rows[0].size
    text = (f"Model: C_hat_b = T_b(theta)^2 C^kk_b(theta) + N_b(theta) over {edges.size - 1} bands, "
            f"L = {edges[0]:g}..{edges[-1]:g}. ")
    if len(cal) == 1:
        text += (f"T_b and N_b come from the {n_ref} maps of cosmology {cal[0]} at noise level {j}, separate from "
                 "the test maps, and are held at those values: a method whose response depends on cosmology (a "
                 "Wiener-like network, a QE normalised with fiducial spectra) is biased by that dependence beyond "
                 "the quoted errors; calibrate on several cosmologies (params.calibration_cosmologies) to model it.")
    else:
        text += (f"T_b and N_b are linear in ({', '.join(cfg['sample'])}) about reference cosmology {cal[0]}, "
                 f"fitted per band by weighted least squares to the maps of calibration cosmologies {cal} at noise "
                 f"level {j} ({', '.join(str(r.size) for r in plan.calibration_rows)} maps), separate from the "
                 "test maps; each gradient's logarithmic response is smoothed across bands with a polynomial of "
                 f"degree {GRADIENT_DEGREE} in band index (when there are more bands than terms).")
    notes = [text + f" The band-power covariance comes from the {n_ref} maps of cosmology {cal[0]} (Hartlap-"
             "corrected) and includes the calibration's own statistical error, propagated to the model at the "
             "best fit."]
    for label, cals in calibrations.items():
        c0 = cals[0]
        if c0.fitted:
            parts = []
            for i, name in enumerate(cfg["sample"]):
                r = c0.log_response(i)
                if np.isfinite(r["transfer"]):
                    parts.append(f"dlnT/dln{name} = {r['transfer']:+.3f} +- {r['transfer_err']:.3f}, "
                                 f"dlnN/dln{name} = {r['noise']:+.3f} +- {r['noise_err']:.3f}")
            dof = c0.fit_dof * c0.transfer.size
            text = (f"{label}: measured cosmology dependence (band means; gradients per band in calibration): "
                    f"{'; '.join(parts) or 'see calibration'}. Linear fits: chi2 {c0.fit_chi2_transfer.sum():.1f} "
                    f"(T), {c0.fit_chi2_noise.sum():.1f} (N) for {dof} degrees of freedom")
            bad = [q for q, x in (("T", c0.fit_chi2_transfer), ("N", c0.fit_chi2_noise))
                   if dof and chi2_dist.sf(x.sum(), dof) < NONLINEAR]
            if bad:
                text += (f"; the linear model of {' and '.join(bad)} is rejected (p < {NONLINEAR:g}): narrow the "
                         "spread of the calibration cosmologies")
            rough = [f"{q}/{name}" for q, x in (("T", c0.smooth_chi2_transfer), ("N", c0.smooth_chi2_noise))
                     for name, v in zip(cfg["sample"], x) if c0.smooth_dof and chi2_dist.sf(v, c0.smooth_dof) < NONLINEAR]
            if rough:
                text += (f"; the smooth log-response of {', '.join(rough)} is rejected by its per-band gradients "
                         f"(p < {NONLINEAR:g})")
            notes.append(text + ".")
        if report.methods[label].method != "qe":
            continue
        frac = float(np.mean((c0.noise - cals[1].noise) / cals[1].noise))
        text = (f"{label}: quadratic estimator calibrated like any method (T_b from its cross-spectrum with the "
                f"truth, {np.mean(c0.transfer):.3f} on average at the reference; N_b = analytic N0 + Monte-Carlo "
                f"residual, N1 + ..., {100 * frac:+.1f}% of N0 on average). The textbook fit (n0_only: T_b = 1, "
                "N_b = N0) ignores N1 > 0 (its lensing amplitude is biased high) and any dependence of the "
                "response on cosmology")
        shifts = [f"cosmo{c} {_amplitude(results[label][f'cosmo{c}']['n0_only']):.3f} vs "
                  f"{_amplitude(results[label][f'cosmo{c}']):.3f}" for c in plan.tests]
        if shifts:
            text += " (amplitude mean N0-only vs calibrated: " + ", ".join(shifts) + ")"
        notes.append(text + ".")
    degenerate, where = set(), {}
    for f in fits:
        if f.derived is not None and "Alens" in f.names:
            found = {n for i, n in enumerate(f.names) if n != "Alens" and f.derived["correlation"][i] > DEGENERATE}
            degenerate |= found
            if found:
                where[f.label + (" n0_only" if f.debias == "n0" else "")] = None
    if degenerate:
        notes.append(f"Alens is nearly degenerate with {', '.join(sorted(degenerate))} (response correlation > "
                     f"{DEGENERATE}) in the band-power model of {', '.join(where)}: the band powers constrain the "
                     f"derived amplitude {DERIVED} = Alens * prod_P (P/P_ref)^p_P, p_P the precision-weighted response "
                     "of the model to ln P relative to ln Alens (the method's own response to cosmology included; "
                     "each fit's exponents are in its derived entry), while the marginals of the degenerate "
                     "parameters follow the degeneracy out to the prior edges.")
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
        if derived is not None:
            constrained.append(f"{DERIVED} (= {derived['definition']} for cosmo{fitted[0].cosmology})")
        loose = [n for n, r in ratios.items() if r >= PRIOR_DOMINATED and n not in degenerate]
        text = f"{label}: constrained: {', '.join(constrained) or 'none'}"
        if degenerate:
            text += f"; degenerate in the model, marginals set by the priors: {', '.join(sorted(degenerate))}"
        notes.append(text + f"; prior-dominated (posterior std > {PRIOR_DOMINATED} x prior std): "
                            f"{', '.join(loose) or 'none'}.")
    for c in plan.tests:
        truth = report.cosmology(c)
        off = [f"{n} = {truth[n]:.6g} (held at {plan.base[n]:.6g})" for n in truth
               if n not in cfg["sample"] and not np.isclose(truth[n], plan.base[n], rtol=1e-6, atol=0)]
        if off:
            notes.append(f"cosmo{c}: parameters not sampled differ from the reference calibration cosmology's: "
                         f"{', '.join(off)}; the fit is biased by them.")
    if check["emulator_vs_report_max_rel"] > 0.01:
        notes.append(f"The emulator's C^kk at the reference calibration cosmology differs from the report's "
                     f"/cosmology/clkk by up to {100 * check['emulator_vs_report_max_rel']:.1f}%: set params.camb to "
                     "the CAMB settings of the simulations.")
    dev = np.abs(check["truth_over_theory"] - 1)
    bad = np.flatnonzero((dev > 3 * check["truth_over_theory_err"]) & (dev > 0.01))
    if bad.size:
        notes.append("The reference calibration maps' true kappa power departs from the theory by more than 3 "
                     f"sigma at L = {', '.join(f'{x:.0f}' for x in report.L[plan.bins][bad])} (see theory_check); "
                     "the model assumes the simulations follow the theory.")
    kept = cfg["steps"] - cfg["burn"]
    short = [f"{f.label}/cosmo{f.cosmology}" + ("/n0_only" if f.debias == "n0" else "") for f in fits
             if np.nanmax(f.chain.autocorr) * 50 > kept]
    if short:
        notes.append(f"Chains shorter than 50 autocorrelation times ({kept} steps kept): {', '.join(short)}; "
                     "increase params.steps for publication-quality errors.")
    return " ".join(notes)


def write_summary(path: str | Path, cfg: dict, report: ReportSpectra, plan: Plan, edges: np.ndarray,
                  emulator: KappaEmulator, calibrations: dict, fits: list[Fit]) -> None:
    """Write ``summary.json`` (layout in :mod:`deepcmb.io.chains`) via a temporary file."""
    results = {}
    for fit in fits:
        entry = results.setdefault(fit.label, {}).setdefault(f"cosmo{fit.cosmology}", {})
        if fit.debias == "n0":
            entry["n0_only"] = _fit_summary(fit)
        else:
            entry.update(_fit_summary(fit))
    check = _theory_check(report, plan, emulator)
    calibration = {label: _calibration_summary(report.methods[label].method, cals, plan, cfg["sample"])
                   for label, cals in calibrations.items()}
    prov = provenance_attrs(cfg, "params")
    summary = {
        "report_file": str(report.path.resolve()), "created": prov["created"], "git_revision": prov["git_revision"],
        "parameters": list(cfg["sample"]),
        "derived_parameter": DERIVED if any(f.derived is not None for f in fits) else None,
        "priors": cfg["priors"], "calibration_cosmologies": plan.calibration,
        "test_cosmologies": plan.tests, "noise_index": cfg["noise_index"],
        "bins": {"edges": edges, "L": report.L[plan.bins]},
        "calibration": calibration, "theory_check": check, "results": results,
        "all_within_2sigma": {label: all(r["within_2sigma"] for r in per.values()) for label, per in results.items()},
        "notes": _notes(cfg, report, plan, edges, calibrations, fits, results, check),
    }
    write_json(path, summary)
