"""The evaluation outputs ``OUT/report.h5`` and ``OUT/summary.json`` of ``deepcmb evaluate``: their
layout, writers (:func:`write_report`, :func:`write_summary`) and the one reader of ``report.h5``
(:class:`Report`, used by the params stage and the figures).

``report.h5`` (``format = 'deepcmb.evaluation'``, ``format_version = 1``); spectra in sr (kappa
dimensionless) or µK² sr (E); on windowed maps the kappa spectra are those of W² kappa divided by
``window_w4`` and the E spectra those of W E divided by ``window_w2``, per map (the attributes are their
means; on masked maps W is each map's mask: :mod:`deepcmb.evaluation.window`)::

    /                 attrs: format, format_version, deepcmb_version, git_revision, software, stage, created,
                             config (JSON), sims_file (absolute path), methods (labels), n_maps,
                             apodize_arcmin, masked, window_w2, window_w4, shape (ny, nx), pixel_arcmin, periodic,
                             truth (False for the report of an observation file, below), snr_Lmax, jackknife
    /bins/edges (nb+1,), /bins/L (nb,) mode-weighted centres, /bins/n_modes (nb,) Fourier modes per
        map (l and -l counted separately; independent modes = n_modes / 2)
    /e_bins/edges, /e_bins/L, /e_bins/n_modes (nbe...)     only when a method has an E map
    /meta/index (n,) rows of the sims file evaluated; /meta/cosmology_index (n,); /meta/noise_index (n,)
    /cosmology/params/<P> (n_cosmo,); /cosmology/clkk (n_cosmo, nb): theory C_L^kk binned on the modes
        of /bins
    /instrument/noise_p_uk_arcmin, /instrument/noise_t_uk_arcmin (n_levels,); attrs beam_fwhm_arcmin
    /theory/n0_<EST> (n_levels, nb): analytic QE kappa N0 (fiducial spectra) for each
        theory.qe_estimators (canonical labels: EB, MV_POL, ...)
    /theory/n_iterative (n_levels, nb): iterative-limit kappa noise at /bins/L (if theory.iterative)
    /delensing/edges, /delensing/L, /delensing/n_modes (nbd...): B-mode bins of the delensing metric
        (evaluate.delensing); attrs cmb_lmin, cmb_lmax (band of the Wiener-filtered E), l_cut, n_sigma.
        When the metric was not measured, /delensing has no dataset and one attribute, skipped: why
        (e.g. the simulation file has no Q_lensed, U_lensed)
    /truth/kappa_auto (n, nb): per-map binned C^kk of the true kappa
    /truth/E_auto (n, nbe): per-map unlensed-E power (when a method has an E map)
    /truth/BB_lens (n, nbd): per-map power of the true lensing B (that of Q_lensed, U_lensed), uK^2 sr
    /methods/<label>/            attrs: method, file, and estimator, model, wiener when the file has them;
                                 delensing_wiener (with the delensing metric): whether the kappa was
                                 Wiener-filtered C/(C+N0) before lensing the template (an unbiased QE)
        per_map/auto, per_map/cross (n, nb): kappa_hat x kappa_hat, kappa_hat x kappa
        per_map/E_auto, per_map/E_cross, per_map/E_resid (n, nbe): E_hat x E_hat, E_hat x E,
            (E_hat - E) x (E_hat - E)                         methods with an E map only
        per_map/BB_res, per_map/TB_noise, per_map/TB_lens (n, nbd): (B - T) x (B - T), T x n, T x B, uK^2 sr,
            with T the method's lensing-B template, B the true lensing B and n = B_obs / B_l - B the
            beam-deconvolved noise B of the data (:mod:`deepcmb.delensing`)   with the delensing metric
        per_map/pixel_coverage (n, 2), per_map/mode_coverage (n, nb, 2), per_map/ood_score (n,): the
            fraction of pixels (of Fourier-mode parts per bin) where the true kappa low-passed to uq_lmax
            lies within 1 and 2 sigma of the posterior mean, and the input's score
            (:func:`deepcmb.evaluation.stage.per_map_coverage`); methods attrs uq_lmax, ood_threshold
                                                  reconstructions written with --uncertainty
        groups/<g>/  g = 'all', 'noise<j>' (every cosmology at level j), 'cosmo<c>_noise<j>';
                     attrs cosmology_index (-1: pooled), noise_index (-1: pooled), n_maps
            auto_mean, auto_std, cross_mean, cross_std, truth_mean, truth_std (nb,): std = scatter
                over the maps (not the error of the mean)
            clkk_theory (nb,): mean theory C^kk of the group's maps
            rho, rho_err, rho2, rho2_err, n_eff, n_eff_err, transfer, transfer_err (nb,)
            snr_per_bin, snr_cumulative, snr_cumulative_err (nb,): NaN above snr.Lmax
            E_rho, E_rho_err, E_resid_mean, E_resid_std, E_truth_mean (nbe,)   methods with E
            BB_lens_mean, BB_res_mean, BB_res_ratio, BB_res_ratio_err, spurious, spurious_err (nbd,);
                A_res, A_res_err, spurious_flag (scalars)                 with the delensing metric
            coverage_1sigma, coverage_2sigma and their _err (scalars), mode_coverage_1sigma,
                mode_coverage_2sigma and their _err (nb,), ood_score_median, ood_outside (scalars)
                                                  reconstructions written with --uncertainty
    /examples/index, /examples/cosmology_index, /examples/noise_index (k,)
    /examples/<FIELD> (k, ny, nx): the sims' Q, U, T, kappa, E_unlensed (those present), unwindowed
    /examples/<label>/kappa, /examples/<label>/E_unlensed (k, ny, nx)

Without truth (``truth = False``: the input was an observation file, :func:`deepcmb.evaluation.stage.compare`)
the report keeps /bins, /meta (all zeros: one noise level), /instrument (its one level), /theory,
/examples, /delensing (its attribute skipped only), and /cosmology for the fiducial cosmology only
(the filters'; one row), has no /truth and no /e_bins, and every method has the one group 'all' with
other members::

    /methods/<label>/per_map/auto (n, nb), per_map/cross_<b> (n, nb) for every other method b
    /methods/<label>/groups/all/  auto_mean, auto_std, and for every other method b cross_<b>_mean,
        cross_<b>_std, rho_<b> = cross_<b>_mean / sqrt(auto_mean auto_mean of b), rho_<b>_err (nb,)

Definitions (:mod:`deepcmb.evaluation.metrics`): rho = cross_mean / sqrt(auto_mean truth_mean);
n_eff = clkk_theory (1/rho^2 - 1); transfer = cross_mean / truth_mean; snr_per_bin^2 =
(n_modes / 2) rho^4; snr_cumulative = sqrt(cumsum snr_per_bin^2) over the bins whose upper edge is at
most snr.Lmax; BB_res_ratio = BB_res_mean / BB_lens_mean; A_res = sum over every bin of /delensing of
BB_res_mean / the same sum of BB_lens_mean (A_lens^res: 1 = nothing removed); spurious = mean TB_noise /
mean TB_lens; spurious_flag: some bin whose lower edge is below l_cut has abs(spurious) > n_sigma
spurious_err (:func:`deepcmb.evaluation.metrics.delensing_metrics`); errors by a delete-a-group
jackknife over ``jackknife`` groups of maps.

``summary.json`` (non-finite numbers are ``null``; lists run over the bins of /bins)::

    sims_file            absolute path of the simulation file
    created, git_revision    of the report (UTC ISO 8601; git commit of deepcmb)
    methods              the labels evaluated
    n_maps               maps evaluated (rows common to every reconstruction)
    bins                 {"edges", "L", "n_modes"}; e_bins likewise when a method has an E map
    noise_p_uk_arcmin    polarization noise of each level j of the simulation file
    cosmologies          [{"index": c, "params": {P: value}, "n_maps": maps evaluated}]
    results              {label: {group: {"n_maps", "rho2", "rho2_err", "n_eff", "n_eff_err",
                          "transfer", "transfer_err", "snr_cumulative" (float: at the last bin below
                          snr.Lmax), "snr_cumulative_err", with an E map "E_rho2" and
                          "E_rho2_err" (= 2 |E_rho| E_rho_err), and for a reconstruction with
                          --uncertainty "coverage_1sigma", "coverage_1sigma_err", "coverage_2sigma",
                          "coverage_2sigma_err", "mode_coverage_1sigma", "mode_coverage_2sigma" (lists),
                          "ood_score_median", "ood_outside"}}}
    theory               {"clkk": {group: [...]}, "n0_<EST>": {"noise<j>": [...]},
                          "n_iterative": {"noise<j>": [...]} (if theory.iterative)}
    truth                true; false without truth (an observation file): results then hold, per method,
                          {"all": {"n_maps", "auto_mean", "rho": {b: [...]}, "rho_err": {b: [...]}}},
                          and there is no cosmology_dependence
    delensing            {"skipped": why} when the metric was not measured (no Q_lensed, U_lensed in the
                          simulation file, an observation file, a non-periodic patch, or
                          delensing.enabled false); else {"bins", "cmb_band": [lmin, lmax] of the
                          Wiener-filtered E, "l_cut", "n_sigma", "wiener_filtered": labels whose kappa was
                          Wiener-filtered before lensing the template, "results": {label: {group:
                          {"n_maps", "A_res", "A_res_err", "BB_lens_mean", "BB_res_mean", "BB_res_ratio",
                          "BB_res_ratio_err", "spurious", "spurious_err", "spurious_flag"}}} (lists over
                          the bins of "bins" here), "spurious_flagged": ["<label>/<group>", ...] the
                          groups whose spurious_flag is true}
    cosmology_dependence {label: {"cosmo<c>": {"amplitude", "amplitude_err", "theory_amplitude",
                          "n_maps"}}}: per cosmology, pooled over noise levels, the inverse-variance
                          weighted mean over bins below snr.Lmax of auto_mean_c / auto_mean_all, with
                          its error from the map scatter, and its expectation
                          (T^2 C_c + N) / (T^2 C_all + N) with T and N = auto_mean - T^2 truth_mean
                          of the group 'all' (see :func:`deepcmb.evaluation.metrics.cosmology_amplitude`)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..geometry import FlatSkyGeometry
from .files import H5View, atomic_h5, plain, text, write_json
from .sims import geometry

FORMAT = "deepcmb.evaluation"
FORMAT_VERSION = 1

_KAPPA_SUMMARY = ("rho2", "rho2_err", "n_eff", "n_eff_err", "transfer", "transfer_err")
_COVERAGE_SUMMARY = ("coverage_1sigma", "coverage_1sigma_err", "coverage_2sigma", "coverage_2sigma_err",
                     "mode_coverage_1sigma", "mode_coverage_2sigma", "ood_score_median", "ood_outside")
_DELENSING_SUMMARY = ("A_res", "A_res_err", "BB_lens_mean", "BB_res_mean", "BB_res_ratio", "BB_res_ratio_err",
                      "spurious", "spurious_err", "spurious_flag")


def write_report(path: str | Path, ev: dict) -> None:
    """Write ``report.h5`` from an evaluation (see :func:`deepcmb.evaluation.stage.evaluate`).

    The file goes to ``PATH.tmp`` and is renamed when complete.
    """
    with atomic_h5(path) as f:
        f.attrs.update(ev["attrs"])
        for name in ("bins", "e_bins", "meta", "truth"):
            _datasets(f, name, ev[name])
        _datasets(f, "cosmology", {"clkk": ev["cosmology"]["clkk"]})
        _datasets(f, "cosmology/params", ev["cosmology"]["params"])
        inst = ev["instrument"]
        _datasets(f, "instrument", {k: v for k, v in inst.items() if k != "beam_fwhm_arcmin"})
        f["instrument"].attrs["beam_fwhm_arcmin"] = inst["beam_fwhm_arcmin"]
        theory = {f"n0_{k}": v for k, v in ev["theory"]["n0"].items()}
        if ev["theory"]["n_iterative"] is not None:
            theory["n_iterative"] = ev["theory"]["n_iterative"]
        _datasets(f, "theory", theory)
        d = ev["delensing"]
        if "skipped" in d:
            f.create_group("delensing").attrs["skipped"] = d["skipped"]
        else:
            _datasets(f, "delensing", d["bins"]).attrs.update(
                cmb_lmin=d["cmb_band"][0], cmb_lmax=d["cmb_band"][1], l_cut=d["l_cut"], n_sigma=d["n_sigma"])
        for label, m in ev["methods"].items():
            g = f.create_group(f"methods/{label}")
            g.attrs.update(m["attrs"])
            _datasets(g, "per_map", m["per_map"])
            for name, stats in m["groups"].items():
                sub = _datasets(g, f"groups/{name}", stats)
                info = ev["groups"][name]
                sub.attrs.update(cosmology_index=info["cosmology_index"], noise_index=info["noise_index"],
                                 n_maps=len(info["index"]))
        ex = ev["examples"]
        g = _datasets(f, "examples", {k: ex[k] for k in ("index", "cosmology_index", "noise_index")})
        for key, maps in ex["maps"].items():
            g.create_dataset(key, data=maps)
        for label, maps in ex["methods"].items():
            _datasets(g, label, maps)


def _datasets(parent, name, arrays):
    """Create group ``name`` under ``parent`` (if needed) holding ``arrays``; skip when ``arrays`` is None."""
    if arrays is None:
        return None
    g = parent.require_group(name)
    for key, value in arrays.items():
        if value is not None:
            g.create_dataset(key, data=np.asarray(value))
    return g


def summary(ev: dict) -> dict:
    """The ``summary.json`` content of an evaluation (a JSON-ready dict, NaN as None)."""
    if ev["truth"] is None:
        return _comparison_summary(ev)
    last = ev["snr_last_bin"]
    results = {}
    for label, m in ev["methods"].items():
        results[label] = {}
        for name, s in m["groups"].items():
            r = {"n_maps": len(ev["groups"][name]["index"])}
            r.update({k: s[k] for k in _KAPPA_SUMMARY})
            r.update({k: s[k] for k in _COVERAGE_SUMMARY if k in s})
            r["snr_cumulative"] = s["snr_cumulative"][last]
            r["snr_cumulative_err"] = s["snr_cumulative_err"][last]
            if "E_rho" in s:
                r["E_rho2"] = s["E_rho"] ** 2
                r["E_rho2_err"] = 2 * np.abs(s["E_rho"]) * s["E_rho_err"]
            results[label][name] = r
    theory = {"clkk": {name: g["clkk_theory"] for name, g in ev["groups"].items()}}
    out = _common_summary(ev, results, theory)
    out["truth"] = True
    out["delensing"] = _delensing_summary(ev)
    out["cosmology_dependence"] = {label: {f"cosmo{c}": d for c, d in m["cosmology_dependence"].items()}
                                   for label, m in ev["methods"].items()}
    if ev["e_bins"] is not None:
        out["e_bins"] = dict(ev["e_bins"])
    return plain(out)


def _comparison_summary(ev: dict) -> dict:
    """The ``summary.json`` content of an evaluation without truth."""
    results = {}
    for label, m in ev["methods"].items():
        s = m["groups"]["all"]
        others = [b for b in ev["methods"] if b != label]
        results[label] = {"all": {"n_maps": len(ev["meta"]["index"]), "auto_mean": s["auto_mean"],
                                  "rho": {b: s[f"rho_{b}"] for b in others},
                                  "rho_err": {b: s[f"rho_{b}_err"] for b in others}}}
    out = _common_summary(ev, results, {"clkk": {"all": ev["cosmology"]["clkk"][0]}})
    out["truth"] = False
    out["delensing"] = _delensing_summary(ev)
    return plain(out)


def _delensing_summary(ev: dict) -> dict:
    """The ``delensing`` entry of ``summary.json``: why it was skipped, or its settings and results."""
    d = ev["delensing"]
    if "skipped" in d:
        return {"skipped": d["skipped"]}
    results, flagged = {}, []
    for label, m in ev["methods"].items():
        results[label] = {}
        for name, s in m["groups"].items():
            results[label][name] = {"n_maps": len(ev["groups"][name]["index"]),
                                    **{k: s[k] for k in _DELENSING_SUMMARY}}
            if s["spurious_flag"]:
                flagged.append(f"{label}/{name}")
    return {"bins": dict(d["bins"]), "cmb_band": list(d["cmb_band"]), "l_cut": d["l_cut"], "n_sigma": d["n_sigma"],
            "wiener_filtered": [label for label, m in ev["methods"].items() if m["attrs"]["delensing_wiener"]],
            "results": results, "spurious_flagged": flagged}


def _common_summary(ev: dict, results: dict, theory: dict) -> dict:
    """The keys of ``summary.json`` shared with and without truth."""
    a = ev["attrs"]
    levels = range(len(ev["instrument"]["noise_p_uk_arcmin"]))
    for est, n0 in ev["theory"]["n0"].items():
        theory[f"n0_{est}"] = {f"noise{j}": n0[j] for j in levels}
    if ev["theory"]["n_iterative"] is not None:
        theory["n_iterative"] = {f"noise{j}": ev["theory"]["n_iterative"][j] for j in levels}
    params = ev["cosmology"]["params"]
    n_cosmo = len(ev["cosmology"]["clkk"])
    cosmo_idx = ev["meta"]["cosmology_index"]
    return {
        "sims_file": a["sims_file"], "created": a["created"], "git_revision": a["git_revision"],
        "methods": list(ev["methods"]), "n_maps": len(ev["meta"]["index"]),
        "bins": dict(ev["bins"]),
        "noise_p_uk_arcmin": ev["instrument"]["noise_p_uk_arcmin"],
        "cosmologies": [{"index": c, "params": {p: v[c] for p, v in params.items()},
                         "n_maps": int(np.sum(cosmo_idx == c))} for c in range(n_cosmo)],
        "results": results, "theory": theory,
    }


def write_summary(path: str | Path, ev: dict) -> None:
    """Write ``summary.json`` (to ``PATH.tmp``, then renamed)."""
    write_json(path, summary(ev))


class Report(H5View):
    """An evaluation report opened read-only (a context manager): the one reader of ``report.h5``.

    Every accessor names its dataset in the layout above; a dataset that is missing raises
    :class:`~deepcmb.errors.InputError` naming the file and the dataset, optional content (an E head,
    the iterative-noise theory, example maps) is tested first (:meth:`e_methods`, :meth:`n_iterative`,
    :meth:`n_examples`). Accessors that return an array take the keyword checks of
    :meth:`~deepcmb.io.files.H5View.array` (``dtype``, ``ndim``, ``shape``, ``finite``).

    Parameters
    ----------
    path : str or Path
        ``report.h5`` of ``deepcmb evaluate`` (``format = 'deepcmb.evaluation'``).

    Attributes
    ----------
    path : Path
    methods : list of str
        Labels of the evaluated reconstructions, in the report's order (the root attribute
        ``methods``, else the members of ``/methods``).
    has_truth : bool
        Whether the methods were evaluated against a truth (root attribute ``truth``; False for an
        observation file, whose report lacks the truth-based datasets).

    Raises
    ------
    InputError
        If the file is missing, not an evaluation report, or has no method.
    """

    def __init__(self, path: str | Path):
        super().__init__(path, FORMAT, "evaluation report")
        try:
            if not len(self.keys("methods")):
                raise InputError(f"{self.path}: no /methods in the report")
            names = self._f.attrs["methods"] if "methods" in self._f.attrs else self.keys("methods")
            self.methods = [text(m) for m in np.atleast_1d(names)]
            self.has_truth = bool(self._f.attrs.get("truth", True))
        except InputError:
            self.close()
            raise

    def require_truth(self, what: str) -> None:
        """Refuse a report without truth (of an observation file) for ``what`` needs the truth."""
        if not self.has_truth:
            raise InputError(f"{self.path}: evaluated without truth (an observation file); {what} needs a "
                             "report against simulations")

    def geometry(self) -> FlatSkyGeometry:
        """Geometry of the evaluated maps (root attributes ``shape`` and ``pixel_arcmin``)."""
        try:
            return geometry(self._f)
        except KeyError as exc:
            raise InputError(f"{self.path}: missing root attribute {exc}") from None

    def edges(self, e: bool = False, **check: Any) -> np.ndarray:
        """Bin edges, shape (nb + 1,): of the kappa spectra, or of the E spectra when ``e``."""
        return self.array(("e_bins" if e else "bins") + "/edges", **check)

    def centres(self, e: bool = False, **check: Any) -> np.ndarray:
        """Mode-weighted bin centres L, shape (nb,): of the kappa spectra, or of the E spectra when ``e``."""
        return self.array(("e_bins" if e else "bins") + "/L", **check)

    def n_modes(self, **check: Any) -> np.ndarray:
        """Fourier modes per map of each kappa bin (l and -l counted separately), shape (nb,)."""
        return self.array("bins/n_modes", **check)

    def meta(self, name: str, **check: Any) -> np.ndarray:
        """Per-map ``'index'`` (row in the simulation file), ``'cosmology_index'`` or ``'noise_index'``,
        shape (n,)."""
        return self.array(f"meta/{name}", **check)

    def params(self) -> dict:
        """Every cosmological parameter stored: name -> values of the cosmologies, shape (n_cosmo,)."""
        return {name: self.param(name) for name in self.keys("cosmology/params")}

    def param(self, name: str, **check: Any) -> np.ndarray:
        """Values of cosmological parameter ``name`` for each cosmology, shape (n_cosmo,)."""
        return self.array(f"cosmology/params/{name}", **check)

    def clkk(self, **check: Any) -> np.ndarray:
        """Theory C_L^kk of each cosmology binned on the modes of the kappa bins, shape (n_cosmo, nb)."""
        return self.array("cosmology/clkk", **check)

    @property
    def noise_p(self) -> np.ndarray:
        """Polarization noise of each level in µK-arcmin, shape (n_levels,)."""
        return np.atleast_1d(self.array("instrument/noise_p_uk_arcmin")).astype(float)

    @property
    def n_levels(self) -> int:
        """Number of noise levels."""
        return len(self.noise_p)

    def truth(self, name: str = "kappa_auto", **check: Any) -> np.ndarray:
        """Per-map power of the truth: ``'kappa_auto'`` (n, nb) or ``'E_auto'`` (n, nbe)."""
        return self.array(f"truth/{name}", **check)

    def kind(self, label: str) -> str:
        """The reconstruction method of ``label``: ``'nn'``, ``'qe'``, or ``''`` when not recorded."""
        return str(text(self._f[f"methods/{label}"].attrs.get("method", ""))) if self.has(f"methods/{label}") else ""

    def estimator_of(self, label: str) -> str | None:
        """The QE estimator of a method (its ``estimator`` attribute), or None for a network."""
        where = f"methods/{label}"
        return text(self._f[where].attrs.get("estimator")) if self.has(where) else None

    def per_map(self, label: str, name: str, **check: Any) -> np.ndarray:
        """Per-map spectrum ``name`` of method ``label``: ``'auto'``, ``'cross'`` (n, nb) or ``'E_auto'``,
        ``'E_cross'``, ``'E_resid'`` (n, nbe)."""
        return self.array(f"methods/{label}/per_map/{name}", **check)

    def group(self, label: str, group: str, name: str) -> np.ndarray:
        """Dataset ``name`` of the statistics group ``group`` of method ``label``, shape (nb,) or (nbe,)."""
        return self.array(f"methods/{label}/groups/{group}/{name}")

    def n_maps(self, label: str, group: str) -> int:
        """Number of maps averaged in a statistics group."""
        return int(self.attr("n_maps", f"methods/{label}/groups/{group}"))

    def e_methods(self) -> list:
        """Labels of the methods with an unlensed-E head (those whose groups carry ``E_rho``)."""
        return [m for m in self.methods if self.has(f"methods/{m}/groups/all/E_rho")]

    def estimators(self) -> list:
        """QE estimators with an analytic N0 in ``/theory`` (``n0_<EST>``), in file order."""
        return [k[3:] for k in self.keys("theory") if k.startswith("n0_")]

    def n0(self, estimator: str, **check: Any) -> np.ndarray:
        """Analytic kappa N0 of a QE estimator at each noise level (sr), shape (n_levels, nb)."""
        if not self.has(f"theory/n0_{estimator}"):
            raise InputError(f"{self.path}: missing dataset /theory/n0_{estimator}, the analytic N0 of the "
                             f"{estimator} QE (add {estimator} to evaluate.theory.qe_estimators)")
        return self.array(f"theory/n0_{estimator}", **check)

    def n_iterative(self) -> np.ndarray | None:
        """Iterative-limit kappa noise at each noise level (sr), shape (n_levels, nb); None if not computed."""
        return self.array("theory/n_iterative") if self.has("theory/n_iterative") else None

    def delensing_skipped(self) -> str | None:
        """Why the report has no delensing metric (``/delensing`` attribute ``skipped``, or a report written
        before the metric existed); None when it has one."""
        if self.has("delensing/edges"):
            return None
        if self.has("delensing"):
            return str(text(self._f["delensing"].attrs.get("skipped", "no delensing bins")))
        return "the report predates the delensing metric"

    def delensing_centres(self, **check: Any) -> np.ndarray:
        """Mode-weighted centres of the B-mode bins of the delensing metric, shape (nbd,)."""
        return self.array("delensing/L", **check)

    def n_examples(self) -> int:
        """Number of example maps stored (0 when the report has none)."""
        return len(self.array("examples/index")) if self.has("examples/index") else 0

    def example(self, name: str, label: str | None = None) -> np.ndarray:
        """Example maps, shape (k, ny, nx): field ``name`` of the simulations (``'Q'``, ``'U'``, ``'kappa'``,
        ``'E_unlensed'``, ...), or of method ``label``'s reconstruction; ``'index'`` gives their rows (k,)."""
        return self.array(f"examples/{name}" if label is None else f"examples/{label}/{name}")

    def cosmologies(self, level: int) -> tuple:
        """Cosmology indices with maps at noise level ``level`` and their map counts.

        Returns
        -------
        index : ndarray of int, shape (k,)
        counts : ndarray of int, shape (k,)
        """
        cosmo = self.meta("cosmology_index")
        noise = self.meta("noise_index")
        return np.unique(cosmo[noise == level], return_counts=True)

    def theory_clkk(self, level: int) -> np.ndarray:
        """Binned theory C_L^kk (sr) averaged over the maps of a noise level, shape (nb,).

        The pooled groups mix cosmologies, so their theory is the map-weighted mean of
        ``/cosmology/clkk`` over the maps' cosmologies (as in the report's n_eff).
        """
        index, counts = self.cosmologies(level)
        return counts @ self.clkk()[index] / counts.sum()
