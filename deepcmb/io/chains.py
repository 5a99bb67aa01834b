"""The parameter chains of ``deepcmb params``: ``OUT/chains.h5`` and ``OUT/summary.json``, their layout,
the writer of ``chains.h5`` (:func:`write_chains`) and its reader (:class:`Chains`).

``chains.h5`` (``format = 'deepcmb.params'``, ``format_version = 2``)::

    /                         attrs: provenance (deepcmb_version, git_revision, software, stage, created, config),
                                     format, format_version, report_file, parameters (sampled names),
                                     calibration_cosmologies (reference first), noise_index, test_cosmologies
    /bins/edges (nb+1,), /bins/L (nb,)        the bands fitted
    /calibration/<label>/transfer (nb,)       T_b at the reference cosmology
    /calibration/<label>/noise (nb,)          N_b at the reference cosmology, used by the calibrated fit (sr)
    /calibration/<label>/n0, noise_residual   QE only: analytic N0 and N_b - N0 (N1 + ...)
    /calibration/<label>/transfer_gradient, transfer_gradient_err (ndim, nb)
                                              dT_b/dtheta_i per unit of each sampled parameter, and its
                                              standard error (several calibration cosmologies only)
    /calibration/<label>/noise_gradient, noise_gradient_err (ndim, nb)   dN_b/dtheta_i (sr per unit), likewise
                           attrs: method, n_maps (reference), cosmologies, n_maps_per_cosmology,
                                  parameter_names, theta_ref; with gradients also fit_dof and the linear
                                  fits' chi2 summed over bands, fit_chi2_transfer, fit_chi2_noise, and
                                  smooth_dof, smooth_chi2_transfer, smooth_chi2_noise (ndim,): chi2 of the
                                  per-band gradients about their smoothed log-response
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
     "priors": {P: [low, high]}, "calibration_cosmologies": [...], "test_cosmologies": [...], "noise_index",
     "bins": {"edges": [...], "L": [...]},
     "calibration": {label: {"method", "n_maps", "cosmologies": [...], "transfer": [...], "noise": [...],
                             "n0": [...], "noise_residual": [...] (QE),
                             "gradients": {P: {"transfer", "transfer_err", "noise", "noise_err": [...],
                                               "dlnT_dlnP", "dlnT_dlnP_err", "dlnN_dlnP", "dlnN_dlnP_err"}},
                             "gradient_smoothing": {"degree", "chi2_transfer": {P: x}, "chi2_noise": {P: x}, "dof"},
                             "linear_fit": {"chi2_transfer", "chi2_noise", "dof"}  (several cosmologies)}},
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

``dlnT_dlnP`` (``dlnN_dlnP``) is the mean over bands of :math:`P_{\\rm ref}\\, \\partial_P T_b / T_b`, the
measured logarithmic response of the method's transfer (noise) to parameter P, with its standard error.
The gradients are smoothed across bands (:func:`deepcmb.params.calibration.smoothing_projection`);
``gradient_smoothing`` gives the polynomial degree (null when not smoothed) and the chi2 of the per-band
gradients about the smoothed ones, ``dof`` degrees of freedom each.
``pull = (mean - truth) / std``; ``within_2sigma``: every sampled parameter and the derived amplitude
have ``|pull| <= 2``; ``prior_std_ratio``: posterior std over the flat prior's (range / sqrt 12), near 1
for a parameter the data do not constrain. Non-finite numbers are written as null.

The content of ``summary.json`` is computed and written by :func:`deepcmb.params.output.write_summary`.
``chains.h5`` is written to ``OUT/chains.h5.tmp`` and renamed when complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ..provenance import provenance_attrs
from .files import H5View, atomic_h5, text
from .report import Report

if TYPE_CHECKING:
    from ..params.report import ReportSpectra
    from ..params.stage import Plan

FORMAT = "deepcmb.params"
FORMAT_VERSION = 2

RESERVED = ("bins", "calibration")
"""Top-level groups of ``chains.h5`` that are not a method's chains (a method label may not take them)."""


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
        g.attrs.update(derived_name=fit.derived["name"], derived_definition=fit.derived["definition"],
                       derived_truth=fit.derived["truth"], derived_exponents=fit.derived["exponents"])


def write_chains(path: str | Path, cfg: dict, report: ReportSpectra, plan: Plan, edges: np.ndarray, calibrations: dict,
                 fits: list) -> None:
    """Write ``chains.h5`` (layout in the module docstring) via a temporary file.

    Parameters
    ----------
    path : str or Path
    cfg : dict
        The resolved ``params:`` section (stored as provenance; ``sample`` and ``noise_index`` used).
    report : deepcmb.params.report.ReportSpectra
        The report fitted (its path, bin centres and each method's kind).
    plan : deepcmb.params.stage.Plan
        Bands, calibration and test cosmologies.
    edges : ndarray, shape (nb + 1,)
        Edges of the bands fitted.
    calibrations : dict
        Label -> the method's :class:`~deepcmb.params.calibration.Calibration` objects: the calibrated
        one, then for a QE the analytic-N0 one.
    fits : list of deepcmb.params.stage.Fit
    """
    with atomic_h5(path) as f:
        f.attrs.update(provenance_attrs(cfg, "params"))
        f.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, report_file=str(report.path.resolve()),
                       parameters=list(cfg["sample"]),
                       calibration_cosmologies=np.array(plan.calibration, dtype=np.int64),
                       noise_index=cfg["noise_index"], test_cosmologies=np.array(plan.tests, dtype=np.int64))
        f["bins/edges"] = edges
        f["bins/L"] = report.L[plan.bins]
        for label, cals in calibrations.items():
            g = f.create_group(f"calibration/{label}")
            _calibration_datasets(g, report.methods[label].method, cals, plan, cfg["sample"])
        for fit in fits:
            name = f"{fit.label}/cosmo{fit.cosmology}" + ("/n0_only" if fit.debias == "n0" else "")
            _fit_group(f.require_group(name), fit)


def _calibration_datasets(g, method, cals, plan, names):
    cal = cals[0]
    g["transfer"] = cal.transfer
    g["noise"] = cal.noise
    g.attrs.update(method=method, n_maps=cal.n_maps, cosmologies=np.array(plan.calibration, dtype=np.int64),
                   n_maps_per_cosmology=np.array([r.size for r in plan.calibration_rows], dtype=np.int64),
                   parameter_names=list(names), theta_ref=cal.theta_ref)
    if method == "qe":
        g["n0"] = cals[1].noise
        g["noise_residual"] = cal.noise - cals[1].noise
    if cal.fitted:
        t_err, n_err = cal.gradient_errors()
        g["transfer_gradient"], g["transfer_gradient_err"] = cal.transfer_gradient, t_err
        g["noise_gradient"], g["noise_gradient_err"] = cal.noise_gradient, n_err
        g.attrs.update(fit_dof=cal.fit_dof, fit_chi2_transfer=float(cal.fit_chi2_transfer.sum()),
                       fit_chi2_noise=float(cal.fit_chi2_noise.sum()), smooth_dof=cal.smooth_dof,
                       smooth_chi2_transfer=cal.smooth_chi2_transfer, smooth_chi2_noise=cal.smooth_chi2_noise)


class Chains(H5View):
    """Parameter chains of ``deepcmb params`` opened read-only (a context manager).

    Parameters
    ----------
    path : str or Path
        ``chains.h5`` (``format = 'deepcmb.params'``).

    Attributes
    ----------
    labels : list of str
        Methods with chains (the root groups other than ``calibration`` and ``bins``).
    """

    def __init__(self, path: str | Path):
        super().__init__(path, FORMAT, "parameter-chains")
        self.labels = [k for k in self.keys("/") if k not in RESERVED]

    def edges(self) -> np.ndarray:
        """Edges of the bands fitted, shape (nb + 1,)."""
        return self.array("bins/edges")

    def cosmologies(self) -> list:
        """Sorted test-cosmology indices with a chain for at least one method."""
        found = {int(k[5:]) for label in self.labels for k in self.keys(label) if k.startswith("cosmo")}
        return sorted(found)

    def fits(self, cosmo: int) -> list:
        """The chains of one test cosmology.

        Returns
        -------
        list of (label, where, debias)
            Method label, HDF5 group of the chain and which noise debias it used: ``'calibrated'``
            for ``<label>/cosmo<c>``, ``'n0'`` for the N0-only fit ``<label>/cosmo<c>/n0_only`` that
            QE methods add.
        """
        found = []
        for label in self.labels:
            where = f"{label}/cosmo{cosmo}"
            if self.has(where):
                found.append((label, where, "calibrated"))
            if self.has(f"{where}/n0_only"):
                found.append((label, f"{where}/n0_only", "n0"))
        return found

    def samples(self, where: str) -> tuple:
        """Flattened posterior samples of the chain in group ``where``, its parameter names and true values.

        Returns
        -------
        samples : ndarray, shape (steps * walkers, ndim)
        names : list of str
        truth : ndarray, shape (ndim,)
        """
        chain = self.array(f"{where}/chain")
        names = [text(n) for n in np.atleast_1d(self.attr("param_names", where))]
        truth = np.atleast_1d(np.asarray(self.attr("truth", where), dtype=float))
        return chain.reshape(-1, chain.shape[-1]), names, truth

    def prior(self, where: str) -> tuple:
        """Bounds of the flat prior of the chain in group ``where``: ``(lower, upper)``, each shape (ndim,)."""
        return tuple(np.atleast_1d(np.asarray(self.attr(name, where), dtype=float))
                     for name in ("prior_lower", "prior_upper"))


def check_same_bins(report: Report, chains: Chains) -> None:
    """Refuse chains whose band powers were not binned like the report (made from another report).

    The chains may use a subset of the report's bins (their L range), so every edge of theirs must be
    one of the report's edges.
    """
    ours, theirs = report.edges(), chains.edges()
    if not np.all(np.isclose(theirs[:, None], ours[None, :], rtol=1e-9, atol=0).any(axis=1)):
        raise InputError(f"{chains.path}: /bins/edges differ from those of {report.path}; "
                         "the chains were made from another evaluation report")
