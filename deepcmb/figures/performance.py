"""Reconstruction-quality figures of one noise level: rho_L^2, effective noise, transfer, S/N, delensing.

Each function draws the statistics group ``noise<level>`` of every method of the report (points
with jackknife error bars, one colour per method) against the theory stored in the report (lines:
the analytic QE N0 of each estimator dashed, the iterative limit dotted). The theory C_L^kk of a
noise level is the map-weighted mean over its cosmologies
(:meth:`deepcmb.io.report.Report.theory_clkk`). Sizes: ``line`` (700 x 500 px, see
:mod:`deepcmb.figures.style`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .style import (ITERATIVE_STYLE, N0_LINESTYLE, THEORY, legend_below, log_multipoles, method_colours, n0_colour,
                    new_figure, offsets, positive)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..io.report import Report

_POINTS = {"fmt": "o", "ms": 4, "capsize": 2, "lw": 1.2}


def level_title(report: Report, level: int) -> str:
    """Axes title naming the noise level, e.g. ``'Delta_P = 1 uK-arcmin'`` in mathtext."""
    return rf"$\Delta_P$ = {report.noise_p[level]:g} $\mu$K-arcmin"


def theory_noises(report: Report, level: int) -> list[tuple[str, str, np.ndarray, dict]]:
    """The theory noise curves of a level.

    Returns
    -------
    list of (name, symbol, noise, style)
        ``name`` (e.g. ``'QE EB'``), mathtext ``symbol`` of the noise, ``noise`` N_L [sr] shape (nb,),
        and the line style: each analytic N0 dashed in the colour of the method using that estimator,
        the iterative limit dotted grey.
    """
    curves = [(f"QE {est}", r"N^{(0)}_L", report.n0(est)[level],
               {"color": n0_colour(report, est), "ls": N0_LINESTYLE, "lw": 1.5}) for est in report.estimators()]
    n_iterative = report.n_iterative()
    if n_iterative is not None:
        curves.append(("iterative limit", r"N^{\rm iter}_L", n_iterative[level], ITERATIVE_STYLE))
    return curves


def _methods(report, level, name, err=None):
    """Yield ``(label, colour, L offset factor, values, errors)`` of dataset ``name`` for every method."""
    group, colours = f"noise{level}", method_colours(report.methods)
    for label, dx in zip(report.methods, offsets(len(report.methods))):
        values = report.group(label, group, name)
        errors = report.group(label, group, err) if err else None
        yield label, colours[label], dx, values, errors


def _finish(ax, report, level):
    ax.set_xlabel(r"multipole $L$")
    ax.set_title(level_title(report, level))
    legend_below(ax)
    ax.grid(alpha=0.3)


def plot_rho(report: Report, level: int) -> Figure:
    """``rho_L^2 = (C^{k hat k})^2 / (C^{k hat k hat} C^{kk})`` per method against C/(C+N) of the theories.

    Errors: ``2 |rho| sigma_rho`` from the jackknife sigma_rho of the report.
    """
    fig = new_figure("line")
    ax = fig.add_subplot()
    L = report.centres()
    group = f"noise{level}"
    for label, colour, dx, rho2, _ in _methods(report, level, "rho2"):
        err = 2 * np.abs(report.group(label, group, "rho")) * report.group(label, group, "rho_err")
        ax.errorbar(L * dx, rho2, yerr=err, color=colour, label=label, **_POINTS)
    clkk = report.theory_clkk(level)
    for name, symbol, noise, style in theory_noises(report, level):
        ax.plot(L, clkk / (clkk + noise), label=f"{name} theory $C/(C+{symbol})$", **style)
    ax.set_ylabel(r"cross-correlation $\rho_L^2$")
    ax.set_ylim(0, 1.05)
    _finish(ax, report, level)
    return fig


def plot_noise(report: Report, level: int) -> Figure:
    """Effective noise N_eff = C^kk (1/rho^2 - 1) per method against the analytic N0 and iterative limit."""
    fig = new_figure("line")
    ax = fig.add_subplot()
    L = report.centres()
    for label, colour, dx, n_eff, err in _methods(report, level, "n_eff", "n_eff_err"):
        ax.errorbar(L * dx, positive(n_eff), yerr=err, color=colour, label=f"{label} $N^{{\\rm eff}}_L$",
                    **_POINTS)
    ax.plot(L, report.theory_clkk(level), color=THEORY, lw=1.5, label=r"signal $C_L^{\kappa\kappa}$ (theory)")
    for name, symbol, noise, style in theory_noises(report, level):
        ax.plot(L, positive(noise), label=f"{name} theory ${symbol}$", **style)
    log_multipoles(ax)
    ax.set_yscale("log")
    ax.set_ylabel(r"lensing noise $N_L$ [sr]")
    _finish(ax, report, level)
    return fig


def plot_transfer(report: Report, level: int) -> Figure:
    """Transfer function T_L = C^{k hat k} / C^{kk} per method (1 for an unbiased estimator)."""
    fig = new_figure("line")
    ax = fig.add_subplot()
    L = report.centres()
    for label, colour, dx, transfer, err in _methods(report, level, "transfer", "transfer_err"):
        ax.errorbar(L * dx, transfer, yerr=err, color=colour, label=label, **_POINTS)
    ax.axhline(1.0, color=THEORY, lw=1.0, label="unbiased")
    ax.set_ylabel(r"transfer $T_L = C_L^{\hat\kappa\kappa} / C_L^{\kappa\kappa}$")
    _finish(ax, report, level)
    return fig


def plot_snr(report: Report, level: int) -> Figure:
    """Cumulative S/N of the lensing amplitude per map, against the theory C/(C+N) of each noise curve.

    Theory: sqrt(cumsum((n_modes / 2) (C/(C+N))^2)) over the bins where the report's S/N is defined
    (up to its ``snr.Lmax``), the Gaussian form the report uses for the measurement.
    """
    fig = new_figure("line")
    ax = fig.add_subplot()
    L = report.centres()
    defined = np.zeros(L.shape, dtype=bool)
    for label, colour, dx, snr, err in _methods(report, level, "snr_cumulative", "snr_cumulative_err"):
        ax.errorbar(L * dx, snr, yerr=err, color=colour, label=label, **_POINTS)
        defined |= np.isfinite(snr)
    clkk = report.theory_clkk(level)
    half_modes = report.n_modes() / 2
    for name, _, noise, style in theory_noises(report, level):
        per_bin = np.where(defined, half_modes * (clkk / (clkk + noise)) ** 2, 0.0)
        ax.plot(L[defined], np.sqrt(np.cumsum(per_bin))[defined], label=f"{name} theory", **style)
    ax.set_ylabel(r"cumulative $S/N$ of $A_{\rm lens}$ (one map, $\leq L$)")
    ax.set_ylim(bottom=0)
    _finish(ax, report, level)
    return fig


def plot_delensing(report: Report, level: int) -> Figure:
    """Residual lensing-B power after subtracting each method's template, ``C^BB_res / C^BB_lens`` per bin.

    Points with jackknife errors (``BB_res_ratio`` of the group ``noise<level>``), one colour per method,
    :math:`A^{\\rm res}_{\\rm lens}` with its error in the legend; the line at one is no delensing.
    """
    fig = new_figure("line")
    ax = fig.add_subplot()
    L = report.delensing_centres()
    group = f"noise{level}"
    for label, colour, dx, ratio, err in _methods(report, level, "BB_res_ratio", "BB_res_ratio_err"):
        a_res, a_err = report.group(label, group, "A_res"), report.group(label, group, "A_res_err")
        ax.errorbar(L * dx, ratio, yerr=err, color=colour, label=rf"{label}: $A^{{\rm res}}_{{\rm lens}}$ = "
                    f"{float(a_res):.3f} $\\pm$ {float(a_err):.3f}", **_POINTS)
    ax.axhline(1.0, color=THEORY, lw=1.0, label="no delensing")
    ax.set_ylabel(r"residual lensing $B$: $C_\ell^{BB, \rm res} / C_\ell^{BB, \rm lens}$")
    ax.set_ylim(bottom=0)
    ax.set_xlabel(r"multipole $\ell$")
    ax.set_title(level_title(report, level))
    legend_below(ax, ncol=2)
    ax.grid(alpha=0.3)
    return fig
