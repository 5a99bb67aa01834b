"""Power-spectrum figures of one noise level: kappa spectra, their cosmology dependence, E-head spectra.

Measurements are points with the error of the mean (scatter over maps / sqrt(n_maps)); theory
curves are lines. Sizes: ``spectra`` is ``line`` (700 x 500 px), ``cosmology`` and ``E_spectra``
are ``wide`` (1200 x 500 px); see :mod:`deepcmb.figures.style`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib
import numpy as np

from .performance import level_title, theory_noises
from .style import THEORY, legend_below, log_multipoles, method_colours, new_figure, offsets, positive

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from numpy.typing import ArrayLike

    from ..io.report import Report

MAX_COSMOLOGIES = 5
"""At most this many cosmologies are drawn in the cosmology figure, spread over their C^kk amplitude."""


def _mean_error(report, label, group, name):
    """Mean of a group statistic ``<name>_mean`` and its error ``<name>_std / sqrt(n_maps)``."""
    n = report.n_maps(label, group)
    return report.group(label, group, f"{name}_mean"), report.group(label, group, f"{name}_std") / np.sqrt(n)


def plot_spectra(report: Report, level: int) -> Figure:
    """Binned C_L^kk: theory, mean truth power, each method's auto and cross spectra, noise theory."""
    fig = new_figure("line")
    ax = fig.add_subplot()
    L = report.centres()
    group = f"noise{level}"
    ax.plot(L, report.theory_clkk(level), color=THEORY, lw=1.5, label=r"$C_L^{\kappa\kappa}$ (theory)")
    truth, err = _mean_error(report, report.methods[0], group, "truth")
    ax.errorbar(L, positive(truth), yerr=err, fmt="o", mfc="none", ms=5, color=THEORY, capsize=2,
                label=r"true $\kappa$ auto")
    for label, dx in zip(report.methods, offsets(len(report.methods), spread=0.02)):
        colour = method_colours(report.methods)[label]
        auto, err = _mean_error(report, label, group, "auto")
        ax.errorbar(L * dx, positive(auto), yerr=err, fmt="o", ms=4, color=colour, capsize=2,
                    label=rf"{label} $\hat\kappa\times\hat\kappa$")
        cross, err = _mean_error(report, label, group, "cross")
        ax.errorbar(L * dx, positive(cross), yerr=err, fmt="s", mfc="none", ms=4, color=colour, capsize=2,
                    label=rf"{label} $\hat\kappa\times\kappa$")
    for name, symbol, noise, style in theory_noises(report, level):
        ax.plot(L, positive(noise), label=f"{name} theory ${symbol}$", **style)
    log_multipoles(ax)
    ax.set_yscale("log")
    ax.set_xlabel(r"multipole $L$")
    ax.set_ylabel(r"$C_L^{\kappa\kappa}$, $N_L$ [sr]")
    ax.set_title(level_title(report, level))
    legend_below(ax, fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def shown_cosmologies(report: Report, level: int) -> np.ndarray:
    """Cosmologies drawn in the cosmology figure: up to :data:`MAX_COSMOLOGIES`, spread in C^kk amplitude.

    Returns
    -------
    ndarray of int
        Cosmology indices, from the weakest to the strongest lensing power.
    """
    index, _ = report.cosmologies(level)
    order = index[np.argsort(report.clkk()[index].sum(axis=1))]
    picks = np.unique(np.round(np.linspace(0, len(order) - 1, min(MAX_COSMOLOGIES, len(order)))).astype(int))
    return order[picks]


def _cosmology_label(report, c):
    """``'cosmo c (P=v, ...)'`` naming up to two parameters that vary between the report's cosmologies."""
    params = report.params()
    varying = [name for name, v in params.items() if np.ptp(v) > 0][:2]
    values = ", ".join(f"{name}={params[name][c]:.3g}" for name in varying)
    return f"cosmo {c}" + (f" ({values})" if values else "")


def robust_ylim(values: ArrayLike, errors: ArrayLike, lines: Sequence[ArrayLike], low: float = 5.0, high: float = 95.0,
                pad: float = 0.08) -> tuple[float, float]:
    """A y range that ignores outlying points: the ``low``-``high`` percentiles of the points -+ errors.

    Parameters
    ----------
    values, errors : array_like
        Points and their errors (non-finite ones ignored).
    lines : sequence of array_like
        Curves that are always inside the range (theory), at least one.
    low, high : float
        Percentiles of ``values - errors`` and ``values + errors`` that bound the range.
    pad : float
        Margin on each side, as a fraction of the range.

    Returns
    -------
    (float, float)
        Points beyond it are clipped by the axes.
    """
    values, errors = np.ravel(values), np.ravel(errors)
    ok = np.isfinite(values) & np.isfinite(errors)
    ends = []
    if ok.any():
        ends = [np.percentile(values[ok] - errors[ok], low), np.percentile(values[ok] + errors[ok], high)]
    ends = np.concatenate([ends, *(np.ravel(line) for line in lines)])
    lo, hi = np.nanmin(ends), np.nanmax(ends)
    margin = pad * (hi - lo) if hi > lo else 0.1 * max(abs(hi), 1.0)
    return lo - margin, hi + margin


def plot_cosmology(report: Report, level: int) -> Figure:
    """Per-cosmology kappa power of each method, debiased and transfer-normalised, against its theory C^kk.

    Points: (C_hat_c - N) / T^2 with T = transfer and N = auto_mean - T^2 truth_mean of the pooled
    group of the level, so a method that follows the cosmology lands on the theory line of each
    one. Points and lines are divided by the level's mean theory C^kk
    (:meth:`deepcmb.io.report.Report.theory_clkk`), so each cosmology sits at its lensing amplitude
    relative to the mean. Each cosmology's points and theory line share one colour; each panel has its
    own y range (:func:`robust_ylim`), so one noisy method does not flatten the others.
    """
    fig = new_figure("wide")
    axes = fig.subplots(1, len(report.methods), squeeze=False)[0]
    L = report.centres()
    clkk = report.clkk()
    mean = report.theory_clkk(level)
    shown = shown_cosmologies(report, level)
    colours = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, len(shown)))
    pooled = f"noise{level}"
    entries = {}
    for ax, label in zip(axes, report.methods):
        transfer = report.group(label, pooled, "transfer")
        noise = report.group(label, pooled, "auto_mean") - transfer ** 2 * report.group(label, pooled, "truth_mean")
        points, errors = [], []
        for c, colour, dx in zip(shown, colours, offsets(len(shown), spread=0.02)):
            auto, err = _mean_error(report, label, f"cosmo{c}_noise{level}", "auto")
            points.append((auto - noise) / transfer ** 2 / mean)
            errors.append(err / transfer ** 2 / mean)
            name = _cosmology_label(report, c)
            bars = ax.errorbar(L * dx, points[-1], yerr=errors[-1], fmt="o", ms=4, capsize=2, color=colour, label=name)
            (line,) = ax.plot(L, clkk[c] / mean, color=colour, lw=1.2, label=f"{name} theory")
            entries[int(c)] = ((line, bars), name)
        ax.set_ylim(*robust_ylim(points, errors, clkk[shown] / mean))
        log_multipoles(ax)
        ax.set_xlabel(r"multipole $L$")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(r"$[(\hat C_L - N_L) / T_L^2] \, / \, \bar C_L^{\kappa\kappa}$")
    handles, names = zip(*(entries[c] for c in sorted(entries)))  # legend in cosmology-index order
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 3), fontsize=8,
               title=r"points: measured; lines: theory $C_L^{\kappa\kappa}$ of the same cosmology",
               title_fontsize=8)
    fig.suptitle(level_title(report, level))
    return fig


def plot_E_spectra(report: Report, level: int) -> Figure:
    """E head: cross-correlation rho_l with the true unlensed E, and the residual power against the truth."""
    fig = new_figure("wide")
    ax_rho, ax_cl = fig.subplots(1, 2)
    ell = report.centres(e=True)
    group = f"noise{level}"
    methods = report.e_methods()
    ax_cl.plot(ell, positive(report.group(methods[0], group, "E_truth_mean")), "o", mfc="none", color=THEORY,
               label=r"true unlensed $E$")
    for label, dx in zip(methods, offsets(len(methods))):
        colour = method_colours(report.methods)[label]
        ax_rho.errorbar(ell * dx, report.group(label, group, "E_rho"), yerr=report.group(label, group, "E_rho_err"),
                        fmt="o", ms=4, capsize=2, color=colour, label=label)
        resid, err = _mean_error(report, label, group, "E_resid")
        ax_cl.errorbar(ell * dx, positive(resid), yerr=err, fmt="s", ms=4, capsize=2, color=colour,
                       label=rf"{label} residual $\hat E - E$")
    ax_rho.axhline(1.0, color=THEORY, lw=1.0)
    ax_rho.set_ylabel(r"cross-correlation $\rho_\ell$ of $\hat E$ with $E$")
    log_multipoles(ax_cl)
    ax_cl.set_yscale("log")
    ax_cl.set_ylabel(r"$C_\ell^{EE}$ [$\mu$K$^2$ sr]")
    for ax in (ax_rho, ax_cl):
        ax.set_xlabel(r"multipole $\ell$")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("unlensed $E$ head, " + level_title(report, level))
    return fig
