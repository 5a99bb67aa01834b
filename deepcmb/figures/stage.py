"""The ``deepcmb figures`` stage: an evaluation report (and parameter chains) -> every figure + index.json.

The figures read ``report.h5`` of ``deepcmb evaluate`` and, when given, ``chains.h5`` of ``deepcmb
params``; they never open the simulations or the reconstructions and recompute nothing but plotting
arithmetic. Content the inputs lack is skipped (no E head: no ``maps_E``/``E_spectra``; no chains:
no ``posteriors``; one cosmology: no ``cosmology``; no ``/examples``: no map figures; no delensing
metric: no ``delensing``); a dataset a drawn figure needs and the report lacks raises
:class:`~deepcmb.errors.InputError` naming both.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from ..config import REQUIRED, ListOf, OneOf, resolve
from ..io.chains import Chains, check_same_bins
from ..io.files import atomic_folder, check_output_folder, write_json
from ..io.report import Report
from ..progress import track
from ..provenance import provenance_attrs
from . import maps, performance, posteriors, spectra
from .style import DPI, method_colours, save

log = logging.getLogger(__name__)

FORMATS = ("png", "pdf", "svg")
INDEX_FORMAT = "deepcmb.figures"

SCHEMA = {"formats": ListOf(OneOf(REQUIRED, *FORMATS), ["png", "pdf"], min_len=1, doc="files written per figure")}
"""Schema of the ``figures:`` section of an evaluate config (the config of :func:`run_figures`)."""

_LEVEL_FIGURES = (
    ("spectra", spectra.plot_spectra,
     "Binned kappa power: theory C_L^kk (line), mean true-kappa power and each method's auto and cross "
     "spectra (points, error of the mean), analytic QE N0 and iterative limit (lines)"),
    ("rho", performance.plot_rho,
     "Cross-correlation rho_L^2 of each method with the true kappa (points, jackknife errors) against "
     "C/(C+N) for the analytic QE N0 and the iterative limit (lines)"),
    ("noise", performance.plot_noise,
     "Effective noise N_eff = C^kk (1/rho^2 - 1) of each method (points, jackknife errors) against the "
     "analytic QE N0 and the iterative limit (lines), log scale"),
    ("transfer", performance.plot_transfer,
     "Transfer function T_L = C^(kappa_hat kappa) / C^(kappa kappa) of each method (points, jackknife errors)"),
    ("snr", performance.plot_snr,
     "Cumulative S/N of the lensing amplitude per map (points, jackknife errors) against the Gaussian "
     "forecast for each theory noise curve (lines)"),
)


@dataclass(frozen=True)
class FigureJob:
    """One figure to draw: its file stem, one-line caption and a no-argument function returning it."""

    stem: str
    caption: str
    draw: Callable


def plan_figures(report: Report, chains: Chains | None = None) -> list[FigureJob]:
    """The figures an open report (and chains) supports, in drawing order.

    Parameters
    ----------
    report : deepcmb.io.report.Report
    chains : deepcmb.io.chains.Chains, optional

    Returns
    -------
    list of FigureJob
        Stems: ``maps_kappa``, ``maps_E``, then per noise level ``spectra``, ``rho``, ``noise``,
        ``transfer``, ``snr``, ``cosmology``, ``delensing``, ``E_spectra`` (suffix ``_noise<j>`` when
        the report has several levels), then ``posteriors`` (suffix ``_cosmo<c>`` when there are
        several test cosmologies).
    """
    e_methods = report.e_methods()
    jobs = []
    if report.n_examples():
        lmax = maps.display_lmax(report)
        jobs.append(FigureJob(
            "maps_kappa", "Example maps: observed Q and U, true kappa, and each method's kappa and residual; "
            f"maps low-passed to L <= Lmax of the analysis bins (Lmax = {lmax:g}, cosine roll-off to zero at "
            f"{1 + maps.ROLLOFF:g} Lmax); truth, reconstructions and residuals share one colour scale",
            partial(maps.plot_maps_kappa, report)))
        if e_methods:
            jobs.append(FigureJob("maps_E", "Example maps: observed Q and U, true unlensed E, and each E-head "
                                  "method's E and residual; truth, reconstructions and residuals share one "
                                  "colour scale", partial(maps.plot_maps_E, report)))
    for level in range(report.n_levels):
        jobs += _level_jobs(report, level, e_methods)
    if chains is not None:
        colours = method_colours(report.methods + [m for m in chains.labels if m not in report.methods])
        cosmologies = chains.cosmologies()
        for c in cosmologies:
            jobs.append(FigureJob(
                "posteriors" + (f"_cosmo{c}" if len(cosmologies) > 1 else ""),
                f"Posteriors of test cosmology {c}: 1-d marginals and 68/95 % contours of every method, "
                "truth marked, values outside the flat prior shaded",
                partial(posteriors.plot_posteriors, chains, c, colours)))
    return jobs


def _level_jobs(report, level, e_methods):
    """The figures of one noise level (none if the report holds no maps at that level)."""
    cosmologies, counts = report.cosmologies(level)
    if not counts.sum():
        return []
    suffix = f"_noise{level}" if report.n_levels > 1 else ""
    where = f", at Delta_P = {report.noise_p[level]:g} uK-arcmin."
    jobs = [FigureJob(stem + suffix, caption + where, partial(draw, report, level))
            for stem, draw, caption in _LEVEL_FIGURES]
    if len(cosmologies) > 1:
        jobs.append(FigureJob(
            "cosmology" + suffix,
            "Per-cosmology kappa power of each method, debiased and transfer-normalised with the pooled "
            "transfer and noise (points), against each cosmology's theory C^kk (lines of the same colour), both "
            f"relative to the mean theory; at most {spectra.MAX_COSMOLOGIES} cosmologies spread in amplitude; "
            "each panel's y range spans the 5-95 % of its points -+ errors, so outliers may be clipped" + where,
            partial(spectra.plot_cosmology, report, level)))
    if report.delensing_skipped() is None:
        jobs.append(FigureJob(
            "delensing" + suffix,
            "Delensing: residual lensing-B power C^BB_res / C^BB_lens per bin after subtracting each method's "
            "lensing-B template (the Wiener-filtered E of the data remapped by the method's phi; points, "
            "jackknife errors), and its sum over the bins A_lens^res; one is no delensing" + where,
            partial(performance.plot_delensing, report, level)))
    if e_methods:
        jobs.append(FigureJob("E_spectra" + suffix, "Unlensed-E head: cross-correlation rho_l of E_hat with the "
                              "true E, and residual power against the true E power" + where,
                              partial(spectra.plot_E_spectra, report, level)))
    return jobs


def _is_figure_folder(path):
    try:
        return json.loads((path / "index.json").read_text()).get("format") == INDEX_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def run_figures(config: dict | None, inputs: dict, out: str | Path, *, overwrite: bool = False,
                progress: bool = True) -> Path:
    """Draw every figure a report (and chains) supports into a folder, with ``index.json``.

    Parameters
    ----------
    config : dict or None
        The ``figures:`` section (:data:`SCHEMA`): ``formats``, the files written per figure from
        ``png, pdf, svg``. PNGs are 100 dpi at the sizes of :mod:`deepcmb.figures.style`.
    inputs : dict
        ``report``: ``report.h5`` of ``deepcmb evaluate``; ``chains`` (optional): ``chains.h5`` of
        ``deepcmb params`` (adds the posterior figures), whose bins must be the report's.
    out : str or Path
        Output folder (created; a folder that is not empty is replaced only with ``overwrite`` and
        only if it holds the figures of an earlier run: other folders are never deleted).
    overwrite : bool
        Replace a folder holding the figures of an earlier run.
    progress : bool
        Show a progress bar.

    Returns
    -------
    Path
        The folder, holding the figure files ``OUT/<stem>.<format>`` and ``OUT/index.json``, which holds ``format``
        (``'deepcmb.figures'``), the input paths ``report`` and ``chains``, the provenance
        (``deepcmb_version``, ``git_revision``, ``stage``, ``created``, ``config``) and ``figures``:
        each stem -> ``caption``, ``files`` and ``size_px`` (PNG width, height).

    Notes
    -----
    Figures are drawn into ``OUT.tmp`` and the folder is renamed to ``OUT`` when all are done, so
    ``OUT`` never holds a partial set.
    """
    formats = resolve(config, SCHEMA, prefix="figures.")["formats"]
    report, chains = inputs["report"], inputs.get("chains")
    out = check_output_folder(out, overwrite, holds=_is_figure_folder, what="figures",
                              foreign="folder holds files that are not deepcmb figures; choose a new or empty folder")
    with atomic_folder(out) as tmp:
        index = {}
        with Report(report) as rep, (Chains(chains) if chains is not None else nullcontext()) as ch:
            rep.require_truth("drawing figures")
            if ch is not None:
                check_same_bins(rep, ch)
            for job in track(plan_figures(rep, ch), "figures", "figure", enabled=progress, log=log):
                fig = job.draw()
                files = save(fig, tmp, job.stem, formats)
                width, height = (int(round(v * DPI)) for v in fig.get_size_inches())
                index[job.stem] = {"caption": job.caption, "files": [p.name for p in files],
                                   "size_px": [width, height]}
        paths = {"report": str(Path(report).resolve()),
                 "chains": str(Path(chains).resolve()) if chains is not None else None}
        meta = {"format": INDEX_FORMAT, **paths, **provenance_attrs({**paths, "formats": list(formats)}, "figures"),
                "figures": index}
        write_json(tmp / "index.json", meta)
    return out
