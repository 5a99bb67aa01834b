"""The results table of a benchmark run: every test set and noise level, every method, and the targets.

Reads the ``summary.json`` of the main evaluation and of each robustness evaluation of a run
(:mod:`deepcmb.pipeline`: ``eval/`` and ``robust_<tag>/eval/``) and writes ``OUT/results/``::

    results.json   per test set and noise level: bins, rho^2 and N_eff (with errors) of every method,
                   the analytic MV_POL N0, the iterative limit (as N and as rho^2 = C / (C + N)), the
                   transfer function of every method, the delensing A_lens^res of every method (when the
                   evaluation measured it), the coverage of the per-map uncertainties (methods
                   reconstructed with --uncertainty); and ``targets``: each target of the benchmark with the
                   measured figure and whether it is met
    results.rst    the same as reStructuredText tables (``evaluate/bench.sh`` copies them to
                   ``docs/results/PRESET.rst``, which the documentation's benchmark page includes)
    neff_ratio.png N_eff / N0(MV_POL) of every method per test set and noise level
                   (:func:`deepcmb.figures.results.plot_results`)

Nothing here is computed from maps: every number is a value of a ``summary.json``, so the table is
exactly what ``deepcmb evaluate`` measured.

The targets (measured at the benchmark's low noise level, 1 uK-arcmin, on the main test set):

- ``nn_below_qe_n0``: the network's N_eff is below the analytic N0 of the MV_POL QE in every bin
  inside ``[Lmin, Lmax_target]`` (default 100-1500);
- ``nn_near_iterative`` (stretch): N_eff within ``iterative_factor`` (1.3) of the iterative limit
  for bins below ``Lmax_iterative`` (800);
- ``nn_not_worse_high_noise``: at the high noise level (5 uK-arcmin), the network's N_eff is no
  larger than the measured N_eff of the MV_POL QE: the inverse-variance mean of their ratio over the
  target bins exceeds one by at most two standard errors (a per-bin test would miss a small excess
  common to every bin), judged by :func:`judge_mean`: a mean too imprecise to tell is no verdict;
- ``nn_unbiased``: after dividing by the transfer function measured on the maps of the reference
  cosmology alone, the cross-spectrum with the truth over all test maps is unbiased to ``bias_tol``
  (2 %) for bins inside ``[Lmin, Lmax_target]`` (no verdict when the test maps are of that cosmology
  alone).

With the iterative MAP estimator among the methods (label ``map``, :mod:`deepcmb.iterative`), measured on
the same maps:

- ``map_below_qe``: the MAP N_eff is below the measured N_eff of the MV_POL QE in every target bin;
- ``map_near_iterative``: the MAP N_eff is within ``map_iterative_tol`` (20 %) of the analytic
  iterative limit for bins below ``Lmax_map_iterative`` (1000): the estimator and the forecast agree;
- ``nn_near_map``: N_eff(network) / N_eff(MAP) at most ``map_factor`` (1.3) in every bin inside
  ``[Lmin, Lmax_map]`` (100-900): the network's distance from a measured optimum, the headline of
  the benchmark;
- ``nn_near_map_high_noise``: at the high noise level, the inverse-variance mean of that ratio over
  the target bins at most ``map_factor_high`` (1.05) within two standard errors (:func:`judge_mean`).

The network is ``nn``; the two high-noise targets judge ``nn_high_noise`` instead when it is set (a network
trained for the maps of that level alone), and the table names the network each of them judged.

With per-map uncertainties (``deepcmb reconstruct --uncertainty``, :mod:`deepcmb.uncertainty`):

- ``uq_coverage``: on the main test set, at every noise level, the low-passed truth lies within the
  1- and 2-sigma intervals of every such method at the Gaussian rates (0.683, 0.954) to within
  ``coverage_tol_1sigma`` (0.02) and ``coverage_tol_2sigma`` (0.01), in pixels and in every L bin.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import Int, Number, Str, resolve
from .io.files import atomic_files, check_output_folder, write_json

SCHEMA = {
    "low_noise": Number(1.0, min=0, doc="polarization noise of the low-noise targets, uK-arcmin"),
    "high_noise": Number(5.0, min=0, doc="polarization noise of the high-noise target, uK-arcmin"),
    "Lmin": Number(100.0, min=0, doc="lowest multipole of the targets"),
    "Lmax_target": Number(1500.0, gt=0, doc="highest multipole of the targets"),
    "Lmax_iterative": Number(800.0, gt=0, doc="highest multipole of the iterative-limit target"),
    "iterative_factor": Number(1.3, gt=0, doc="largest N_eff / N_iterative meeting the iterative-limit target"),
    "bias_tol": Number(0.02, min=0, doc="largest |transfer bias| meeting the unbiased target (fraction)"),
    "reference_cosmology": Int(0, min=0, doc="cosmology (index) whose transfer function is the reference"),
    "nn": Str("nn", doc="method label of the network"),
    "nn_high_noise": Str(None, doc="method label of the network the high-noise targets judge, when the maps of "
                                   "that level have a network of their own (null: results.nn)"),
    "qe": Str("qe_mv_pol", doc="method label of the QE compared at high noise"),
    "map": Str("map", doc="method label of the iterative MAP estimator"),
    "map_iterative_tol": Number(0.2, min=0, doc="largest |N_MAP / N_iterative - 1| meeting map_near_iterative"),
    "Lmax_map_iterative": Number(1000.0, gt=0, doc="highest multipole of map_near_iterative"),
    "map_factor": Number(1.3, gt=0, doc="largest N_eff(network) / N_eff(MAP) meeting nn_near_map"),
    "Lmax_map": Number(900.0, gt=0, doc="highest multipole of nn_near_map"),
    "map_factor_high": Number(1.05, gt=0, doc="largest mean N_eff(network) / N_eff(MAP) at the high noise level"),
    "high_noise_precision": Number(0.05, gt=0, doc="largest two-sigma error of a mean ratio that the high-noise "
                                                   "targets judge (a larger one: no verdict)"),
    "coverage_tol_1sigma": Number(0.02, min=0, doc="largest |coverage - 0.683| of the 1-sigma intervals meeting "
                                                   "uq_coverage"),
    "coverage_tol_2sigma": Number(0.01, min=0, doc="largest |coverage - 0.954| of the 2-sigma intervals meeting "
                                                   "uq_coverage"),
}
"""Settings of the results table and its targets (``results:`` of a run preset)."""


def _arr(values):
    return np.asarray(values, dtype=float)


def noise_table(summary: dict, j: int) -> dict:
    """Every figure of one noise level of one evaluation summary.

    Parameters
    ----------
    summary : dict
        A ``summary.json`` of ``deepcmb evaluate``.
    j : int
        Noise-level index (group ``noise<j>``).

    Returns
    -------
    dict
        ``noise_p_uk_arcmin``, ``n_maps``, ``edges``, ``L``; ``methods``: label -> ``rho2``,
        ``rho2_err``, ``n_eff``, ``n_eff_err``, ``transfer``, ``transfer_err``; ``theory``: ``clkk``,
        ``n0_mv_pol``, ``n_iterative``, ``rho2_iterative``, ``rho2_n0_mv_pol`` (lists, one value per
        bin; theory entries the evaluation did not compute are absent); ``delensing``: ``{'lmin', 'lmax'}``
        (the B-mode multipoles summed) and per method ``A_res``, ``A_res_err``, ``spurious_flag``, or
        ``{'skipped': why}`` (see :mod:`deepcmb.io.report`); ``coverage``: label -> the :data:`COVERAGE`
        figures of every method reconstructed with per-map uncertainties.
    """
    group = f"noise{j}"
    out = {"noise_p_uk_arcmin": float(summary["noise_p_uk_arcmin"][j]), "edges": summary["bins"]["edges"],
           "L": summary["bins"]["L"], "methods": {}, "theory": {}}
    for label in summary["methods"]:
        r = summary["results"][label][group]
        out["n_maps"] = r["n_maps"]
        out["methods"][label] = {k: r[k] for k in ("rho2", "rho2_err", "n_eff", "n_eff_err", "transfer",
                                                   "transfer_err")}
    delensing = summary.get("delensing", {"skipped": "the summary predates the delensing metric"})
    out["delensing"] = _delensing_table(delensing, group)
    out["coverage"] = {label: {k: summary["results"][label][group][k] for k in COVERAGE}
                       for label in summary["methods"] if "coverage_1sigma" in summary["results"][label][group]}
    theory = summary["theory"]
    clkk = _arr(theory["clkk"][group])
    out["theory"]["clkk"] = clkk.tolist()
    for key, name in (("n0_MV_POL", "n0_mv_pol"), ("n_iterative", "n_iterative")):
        if group in theory.get(key, {}):
            n = _arr(theory[key][group])
            out["theory"][name] = n.tolist()
            out["theory"]["rho2_" + name.replace("n_", "")] = (clkk / (clkk + n)).tolist()
    return out


COVERAGE = ("coverage_1sigma", "coverage_1sigma_err", "coverage_2sigma", "coverage_2sigma_err",
            "mode_coverage_1sigma", "mode_coverage_2sigma", "ood_score_median", "ood_outside")
"""The coverage figures of a method with per-map uncertainties (:mod:`deepcmb.io.report`) a table carries."""


def _delensing_table(delensing: dict, group: str) -> dict:
    """A_lens^res of every method in one group of a summary's ``delensing`` entry (or why it is absent)."""
    if "skipped" in delensing:
        return {"skipped": delensing["skipped"]}
    edges = delensing["bins"]["edges"]
    out = {"lmin": edges[0], "lmax": edges[-1], "methods": {}}
    for label, groups in delensing["results"].items():
        r = groups[group]
        out["methods"][label] = {k: r[k] for k in ("A_res", "A_res_err", "spurious_flag")}
    return out


def _inside(edges, lo, hi):
    e = _arr(edges)
    return (e[:-1] >= lo - 1e-9) & (e[1:] <= hi + 1e-9)


def _level(summary, value):
    levels = _arr(summary["noise_p_uk_arcmin"])
    hits = np.flatnonzero(np.isclose(levels, value))
    return int(hits[0]) if hits.size else None


def neff_ratio(table: dict, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    """``(ratio, err)`` per bin: N_eff of method ``a`` over that of ``b`` in a :func:`noise_table`, with
    the error propagated from both methods' jackknife errors."""
    na, nb = table["methods"][a], table["methods"][b]
    ratio = _arr(na["n_eff"]) / _arr(nb["n_eff"])
    err = ratio * np.hypot(_arr(na["n_eff_err"]) / _arr(na["n_eff"]), _arr(nb["n_eff_err"]) / _arr(nb["n_eff"]))
    return ratio, err


def mean_ratio(ratio: np.ndarray, err: np.ndarray) -> tuple[float, float]:
    """Inverse-variance weighted mean of per-bin ratios and its error, ``(mean, mean_err)``."""
    w = 1.0 / np.asarray(err) ** 2
    return float(np.sum(w * ratio) / w.sum()), float(1.0 / np.sqrt(w.sum()))


def judge_mean(mean: float, mean_err: float, limit: float, precision: float) -> bool | None:
    """Verdict on "the mean ratio is at most ``limit``" from a measurement ``mean +- mean_err``.

    False when the mean exceeds ``limit`` by more than two standard errors; otherwise True if those two
    errors are at most ``precision``, and None if they are larger: a measurement too noisy to tell meets
    nothing (a handful of maps would otherwise meet any target).
    """
    if mean - limit > 2.0 * mean_err:
        return False
    return True if 2.0 * mean_err <= precision else None


def high_noise_network(cfg: dict) -> str:
    """Method label of the network the high-noise targets judge: ``nn_high_noise``, else ``nn``."""
    return cfg["nn_high_noise"] or cfg["nn"]


def targets(summary: dict, cfg: dict) -> dict:
    """The benchmark targets measured on one evaluation summary (see the module docstring).

    Returns
    -------
    dict
        target name -> ``{'met': bool or None, ...figures}``; ``met`` is None when the summary lacks
        what the target needs (a noise level, a method or a theory curve), or when a high-noise mean is
        too imprecise to judge (:func:`judge_mean`; the table says ``inconclusive``).
    """
    nn, qe = cfg["nn"], cfg["qe"]
    nn_hi = high_noise_network(cfg)
    out = {}
    lo_j, hi_j = _level(summary, cfg["low_noise"]), _level(summary, cfg["high_noise"])
    have = nn in summary["methods"]
    missing = {"met": None}
    if lo_j is None or not have:
        out["nn_below_qe_n0"] = out["nn_near_iterative"] = out["nn_unbiased"] = missing
    else:
        t = noise_table(summary, lo_j)
        sel = _inside(t["edges"], cfg["Lmin"], cfg["Lmax_target"])
        n_eff = _arr(t["methods"][nn]["n_eff"])
        if "n0_mv_pol" in t["theory"] and sel.any():
            ratio = n_eff / _arr(t["theory"]["n0_mv_pol"])
            out["nn_below_qe_n0"] = {"met": bool(np.all(ratio[sel] < 1)), "max_ratio": float(ratio[sel].max()),
                                     "ratio": ratio.tolist()}
        else:
            out["nn_below_qe_n0"] = missing
        sel_it = _inside(t["edges"], cfg["Lmin"], cfg["Lmax_iterative"])
        if "n_iterative" in t["theory"] and sel_it.any():
            ratio = n_eff / _arr(t["theory"]["n_iterative"])
            out["nn_near_iterative"] = {"met": bool(np.all(ratio[sel_it] <= cfg["iterative_factor"])),
                                        "max_ratio": float(ratio[sel_it].max()), "ratio": ratio.tolist()}
        else:
            out["nn_near_iterative"] = missing
        ref = summary["results"][nn].get(f"cosmo{cfg['reference_cosmology']}_noise{lo_j}")
        if ref is not None and ref["n_maps"] == summary["results"][nn][f"noise{lo_j}"]["n_maps"]:
            ref = None  # the reference cosmology's maps are all the maps: nothing to test the transfer on
        if ref is not None and sel.any():
            bias = _arr(t["methods"][nn]["transfer"]) / _arr(ref["transfer"]) - 1
            err = np.hypot(_arr(t["methods"][nn]["transfer_err"]), _arr(ref["transfer_err"])) / _arr(ref["transfer"])
            out["nn_unbiased"] = {"met": bool(np.all(np.abs(bias[sel]) <= cfg["bias_tol"])),
                                  "max_abs_bias": float(np.abs(bias[sel]).max()), "bias": bias.tolist(),
                                  "bias_err": err.tolist()}
        else:
            out["nn_unbiased"] = missing
    if hi_j is None or nn_hi not in summary["methods"] or qe not in summary["methods"]:
        out["nn_not_worse_high_noise"] = missing
    else:
        t = noise_table(summary, hi_j)
        sel = _inside(t["edges"], cfg["Lmin"], cfg["Lmax_target"])
        ratio, err = neff_ratio(t, nn_hi, qe)
        if sel.any():
            mean, mean_err = mean_ratio(ratio[sel], err[sel])
            out["nn_not_worse_high_noise"] = {"met": judge_mean(mean, mean_err, 1.0, cfg["high_noise_precision"]),
                                              "network": nn_hi, "mean_ratio": mean,
                                              "mean_ratio_err": mean_err, "max_ratio": float(ratio[sel].max()),
                                              "ratio": ratio.tolist(), "ratio_err": err.tolist()}
        else:
            out["nn_not_worse_high_noise"] = missing
    out.update(map_targets(summary, cfg))
    out["uq_coverage"] = coverage_target(summary, cfg)
    return out


def coverage_target(summary: dict, cfg: dict) -> dict:
    """``uq_coverage``: at every noise level, every method with per-map uncertainties covers the low-passed
    truth at the Gaussian rates, in pixels and in every L bin with modes below ``uq_lmax``, to within
    ``coverage_tol_1sigma`` and ``coverage_tol_2sigma``; ``met`` None when no method has them."""
    from .uncertainty.coverage import NOMINAL

    tol = {1: cfg["coverage_tol_1sigma"], 2: cfg["coverage_tol_2sigma"]}
    worst = {1: 0.0, 2: 0.0}
    methods = []
    for j in range(len(summary["noise_p_uk_arcmin"])):
        for label, c in noise_table(summary, j)["coverage"].items():
            methods.append(label)
            for k in (1, 2):
                values = [c[f"coverage_{k}sigma"]] + [v for v in c[f"mode_coverage_{k}sigma"] if v is not None]
                worst[k] = max(worst[k], max(abs(v - NOMINAL[k]) for v in values))
    if not methods:
        return {"met": None}
    return {"met": bool(worst[1] <= tol[1] and worst[2] <= tol[2]), "max_deviation_1sigma": worst[1],
            "max_deviation_2sigma": worst[2], "methods": sorted(set(methods))}


def map_targets(summary: dict, cfg: dict) -> dict:
    """The targets that compare with the measured MAP (see the module docstring); absent without a MAP method."""
    mp, nn, qe = cfg["map"], cfg["nn"], cfg["qe"]
    if mp not in summary["methods"]:
        return {}
    missing = {"met": None}
    out = {k: missing for k in ("map_below_qe", "map_near_iterative", "nn_near_map", "nn_near_map_high_noise")}
    lo_j, hi_j = _level(summary, cfg["low_noise"]), _level(summary, cfg["high_noise"])
    if lo_j is not None:
        t = noise_table(summary, lo_j)
        n_map = _arr(t["methods"][mp]["n_eff"])
        sel = _inside(t["edges"], cfg["Lmin"], cfg["Lmax_target"])
        if qe in t["methods"] and sel.any():
            ratio, err = neff_ratio(t, mp, qe)
            out["map_below_qe"] = {"met": bool(np.all(ratio[sel] < 1)), "max_ratio": float(ratio[sel].max()),
                                   "ratio": ratio.tolist(), "ratio_err": err.tolist()}
        sel_it = _inside(t["edges"], cfg["Lmin"], cfg["Lmax_map_iterative"])
        if "n_iterative" in t["theory"] and sel_it.any():
            ratio = n_map / _arr(t["theory"]["n_iterative"])
            out["map_near_iterative"] = {"met": bool(np.all(np.abs(ratio[sel_it] - 1) <= cfg["map_iterative_tol"])),
                                         "max_abs_deviation": float(np.abs(ratio[sel_it] - 1).max()),
                                         "ratio": ratio.tolist()}
        sel_nn = _inside(t["edges"], cfg["Lmin"], cfg["Lmax_map"])
        if nn in t["methods"] and sel_nn.any():
            ratio, err = neff_ratio(t, nn, mp)
            out["nn_near_map"] = {"met": bool(np.all(ratio[sel_nn] <= cfg["map_factor"])),
                                  "max_ratio": float(ratio[sel_nn].max()), "ratio": ratio.tolist(),
                                  "ratio_err": err.tolist()}
    nn_hi = high_noise_network(cfg)
    if hi_j is not None and nn_hi in summary["methods"]:
        t = noise_table(summary, hi_j)
        sel = _inside(t["edges"], cfg["Lmin"], cfg["Lmax_target"])
        if sel.any():
            ratio, err = neff_ratio(t, nn_hi, mp)
            mean, mean_err = mean_ratio(ratio[sel], err[sel])
            out["nn_near_map_high_noise"] = {"met": judge_mean(mean, mean_err, cfg["map_factor_high"],
                                                               cfg["high_noise_precision"]),
                                             "network": nn_hi, "mean_ratio": mean, "mean_ratio_err": mean_err,
                                             "ratio": ratio.tolist(), "ratio_err": err.tolist()}
    return out


def collect(evaluations: Mapping[str, str | Path], cfg: dict) -> dict:
    """Tables and targets of a set of evaluations.

    Parameters
    ----------
    evaluations : dict
        Test-set tag -> folder of a ``deepcmb evaluate`` output (``summary.json``); the first is the
        main test set, on which the targets are measured.
    cfg : dict
        Resolved :data:`SCHEMA`.

    Returns
    -------
    dict
        ``sets``: tag -> list of :func:`noise_table` (one per noise level); ``targets``; ``config``.
    """
    sets, main = {}, None
    for tag, folder in evaluations.items():
        summary = json.loads((Path(folder) / "summary.json").read_text())
        main = main or summary
        sets[tag] = [noise_table(summary, j) for j in range(len(summary["noise_p_uk_arcmin"]))]
    return {"config": cfg, "sets": sets, "targets": targets(main, cfg)}


def overview_rows(results: dict, L_ref: float = 400.0) -> tuple[list[str], list[list[str]]]:
    """One row per test set and noise level: rho^2 at ``L_ref`` and the range of N_eff / N0(MV_POL) over the
    target bins ``[Lmin, Lmax_target]`` of every method (and of the iterative limit); with a MAP method, the
    range of N_eff / N_eff(MAP) of every other method that is not a QE; for the methods with per-map
    uncertainties, the pixel coverage of their 1- and 2-sigma intervals.

    Returns
    -------
    head : list of str
    rows : list of list of str
    """
    cfg = results["config"]
    methods = list(dict.fromkeys(m for tables in results["sets"].values() for t in tables for m in t["methods"]))
    head = ["test set", "uK'", "maps"] + [f"rho2 {m}" for m in methods] + ["rho2 iter"] \
        + [f"N/N0 {m}" for m in methods] + ["N/N0 iter"]
    mp = cfg["map"]
    vs_map = [m for m in methods if m != mp and not m.startswith("qe")] if mp in methods else []
    head += [f"N {m} / N map" for m in vs_map]
    covered = list(dict.fromkeys(m for tables in results["sets"].values() for t in tables for m in t["coverage"]))
    head += [f"cover {m}" for m in covered]
    rows = []
    for tag, tables in results["sets"].items():
        for t in tables:
            e = _arr(t["edges"])
            k = int(np.clip(np.searchsorted(e, L_ref, side="right") - 1, 0, len(e) - 2))
            sel = _inside(e, cfg["Lmin"], cfg["Lmax_target"])
            n0 = _arr(t["theory"].get("n0_mv_pol", np.full(len(e) - 1, np.nan)))

            def ratio(n: Sequence[float]) -> str:
                r = (_arr(n) / n0)[sel]
                return f"{r.min():.2f}-{r.max():.2f}" if sel.any() and np.all(np.isfinite(r)) else "-"

            def rho(values: Sequence[float] | None) -> str:
                return f"{values[k]:.3f}" if values is not None else "-"

            row = [tag, f"{t['noise_p_uk_arcmin']:g}", str(t["n_maps"])]
            row += [rho(t["methods"][m]["rho2"]) if m in t["methods"] else "-" for m in methods]
            row.append(rho(t["theory"].get("rho2_iterative")))
            row += [ratio(t["methods"][m]["n_eff"]) if m in t["methods"] else "-" for m in methods]
            row.append(ratio(t["theory"]["n_iterative"]) if "n_iterative" in t["theory"] else "-")
            for m in vs_map:
                r = (_arr(t["methods"][m]["n_eff"]) / _arr(t["methods"][mp]["n_eff"]))[sel] \
                    if m in t["methods"] and mp in t["methods"] else np.array([])
                row.append(f"{r.min():.2f}-{r.max():.2f}" if r.size and np.all(np.isfinite(r)) else "-")
            for m in covered:
                c = t["coverage"].get(m)
                row.append(f"{c['coverage_1sigma']:.3f}/{c['coverage_2sigma']:.3f}" if c else "-")
            rows.append(row)
    return head, rows


def render_rst(results: dict, title_level: str = "~") -> str:
    """reStructuredText of :func:`collect`'s results: an overview, then one table per test set and noise level.

    The overview (:func:`overview_rows`) gives rho^2 in the bin holding L = 400 and the range of
    N_eff / N0(MV_POL) over the target bins; the delensing table (when an evaluation measured it) gives
    A_lens^res of every method with its jackknife error per test set and noise level. Each detailed table
    lists, per L bin, rho^2 of every method and of the iterative limit, then N_eff of every method, the
    analytic MV_POL N0 and the iterative N, in units of 1e-8 (kappa power, sr).
    """
    cfg = results["config"]
    title = "Overview"
    head, rows = overview_rows(results)
    lines = [title, title_level * len(title), "",
             f"rho^2 in the bin holding L = 400; N/N0: the range of N_eff / N0(MV_POL analytic) over the bins in "
             f"{cfg['Lmin']:g} <= L <= {cfg['Lmax_target']:g}; cover: the fraction of pixels whose low-passed "
             "truth lies within 1 / 2 sigma of the posterior mean (Gaussian: 0.683 / 0.954):", ""]
    lines += rst_grid(head, rows) + [""]
    lines += _delensing_rst(results, title_level)
    lines += _coverage_rst(results, title_level)
    for tag, tables in results["sets"].items():
        for t in tables:
            methods = list(t["methods"])
            title = f"{tag}: {t['noise_p_uk_arcmin']:g} uK-arcmin, {t['n_maps']} maps"
            lines += [title, title_level * len(title), "",
                      "rho^2 per L bin, then the effective noise N in units of 1e-8 (kappa power, sr):", ""]
            head = ["L"] + [f"rho2 {m}" for m in methods]
            cols = [[f"{a:g}-{b:g}" for a, b in zip(t["edges"][:-1], t["edges"][1:])]]
            cols += [[f"{v:.3f}" for v in t["methods"][m]["rho2"]] for m in methods]
            if "rho2_iterative" in t["theory"]:
                head.append("rho2 iterative")
                cols.append([f"{v:.3f}" for v in t["theory"]["rho2_iterative"]])
            head += [f"N {m}" for m in methods]
            cols += [[f"{1e8 * v:.3g}" for v in t["methods"][m]["n_eff"]] for m in methods]
            for key, name in (("n0_mv_pol", "N0 MV_POL"), ("n_iterative", "N iterative")):
                if key in t["theory"]:
                    head.append(name)
                    cols.append([f"{1e8 * v:.3g}" for v in t["theory"][key]])
            lines += rst_grid(head, list(zip(*cols))) + [""]
    lines += ["Targets (main test set):", ""]
    for name, t in results["targets"].items():
        figs = ", ".join(f"{k} {v:.3g}" for k, v in t.items() if isinstance(v, float))
        judged = f" [{t['network']}]" if "network" in t else ""
        lines.append(f"- {name}{judged}: {target_status(t)}" + (f" ({figs})" if figs else ""))
    return "\n".join(lines) + "\n"


def target_status(target: dict) -> str:
    """``met``, ``not met``, or, without a verdict, ``inconclusive`` (figures too imprecise) or ``n/a``
    (nothing measured): the word the results table gives a target of :func:`targets`."""
    if target["met"] is None:
        return "inconclusive" if any(isinstance(v, float) for v in target.values()) else "n/a"
    return "met" if target["met"] else "not met"


def _delensing_rst(results: dict, title_level: str) -> list[str]:
    """The delensing table of :func:`render_rst` (no lines when no evaluation measured it)."""
    tables = [(tag, t) for tag, ts in results["sets"].items() for t in ts if "methods" in t["delensing"]]
    if not tables:
        return []
    methods = list(dict.fromkeys(m for _, t in tables for m in t["delensing"]["methods"]))
    rows = []
    for tag, t in tables:
        d = t["delensing"]["methods"]

        def cell(m: str) -> str:
            if m not in d or d[m]["A_res"] is None:
                return "-"
            err = f" +- {d[m]['A_res_err']:.3f}" if d[m]["A_res_err"] is not None else ""
            return f"{d[m]['A_res']:.3f}{err}" + (" (!)" if d[m]["spurious_flag"] else "")

        rows.append([tag, f"{t['noise_p_uk_arcmin']:g}", f"{t['delensing']['lmin']:g}-{t['delensing']['lmax']:g}"]
                    + [cell(m) for m in methods])
    title = "Delensing"
    return [title, title_level * len(title), "",
            "A_lens^res: the lensing-B power left after subtracting each method's lensing-B template (the "
            "Wiener-filtered E of the data remapped by the method's phi), over the lensing-B power, summed over "
            "the B-mode bins in l (1: nothing removed). (!): the template correlates with the noise B of the data "
            "beyond n_sigma jackknife errors below l_cut (see deepcmb.io.report).", "",
            *rst_grid(["test set", "uK'", "l"] + [f"A_res {m}" for m in methods], rows), ""]


def _coverage_rst(results: dict, title_level: str) -> list[str]:
    """The coverage table of :func:`render_rst` (no lines when no method has per-map uncertainties)."""
    tables = [(tag, t) for tag, ts in results["sets"].items() for t in ts if t["coverage"]]
    if not tables:
        return []
    methods = list(dict.fromkeys(m for _, t in tables for m in t["coverage"]))
    rows = []
    for tag, t in tables:
        def cell(m: str) -> str:
            c = t["coverage"].get(m)
            if c is None:
                return "-"
            return f"{c['coverage_1sigma']:.3f} / {c['coverage_2sigma']:.3f} ({100 * c['ood_outside']:.0f} %)"

        rows.append([tag, f"{t['noise_p_uk_arcmin']:g}"] + [cell(m) for m in methods])
    title = "Coverage of the per-map uncertainties"
    return [title, title_level * len(title), "",
            "The fraction of pixels where the true kappa, low-passed to uq_lmax, lies within 1 and 2 posterior "
            "standard deviations of the posterior mean (Gaussian: 0.683 / 0.954), and in brackets the fraction of "
            "input maps whose score marks them as unlike the calibration maps (deepcmb.uncertainty).", "",
            *rst_grid(["test set", "uK'"] + [f"{m} 1 / 2 sigma" for m in methods], rows), ""]


def rst_grid(head: Sequence[Any], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Lines of a reStructuredText grid table of ``rows`` under the header ``head``."""
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def row(cells: Sequence[Any]) -> str:
        return "|" + "|".join(f" {str(c):<{w}} " for c, w in zip(cells, widths)) + "|"

    return [rule, row(head), rule.replace("-", "="), *[line for r in rows for line in (row(r), rule)]]


def run_results(config: dict | None, inputs: dict, out: str | Path, *, overwrite: bool = False,
                progress: bool = True) -> Path:
    """Gather evaluations into one table with the benchmark targets.

    Parameters
    ----------
    config : dict or None
        The ``results:`` section (:data:`SCHEMA`).
    inputs : dict
        ``evaluations``: tag (``'test'``, a robustness set) -> evaluation folder of ``deepcmb evaluate``
        (see :func:`collect`).
    out : str or Path
        Output folder; receives ``results.json``, ``results.rst`` and ``neff_ratio.png``.
    overwrite : bool
        Replace the results already in ``out``.
    progress : bool
        Unused (the stage takes about a second); part of the stage contract.

    Returns
    -------
    Path
        The output folder.
    """
    from .figures.results import plot_results

    cfg = resolve(config, SCHEMA, prefix="results.")
    out = check_output_folder(out, overwrite, holds=lambda d: (d / "results.json").exists(), what="results")
    res = collect(inputs["evaluations"], cfg)
    with atomic_files(out) as tmp:
        write_json(tmp / "results.json", res)
        (tmp / "results.rst").write_text(render_rst(res))
        plot_results(res).savefig(tmp / "neff_ratio.png")
    return out
