"""The benchmark figure: effective noise relative to the MV_POL QE's analytic N0, per test set and noise level.

Drawn by the ``results`` stage of ``deepcmb run`` from ``results/results.json`` alone
(:mod:`deepcmb.results`). Below one, a method beats the analytic QE noise; the dotted line
is the iterative limit. Panels of one row (one test set) share their y-range; rows do not, so a set
far from N0 (the curved-sky patches) does not flatten the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .style import DPI, ITERATIVE_STYLE, log_multipoles, method_colours

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PANEL = (4.0, 3.2)
"""Size in inches of one panel; the figure has one column per noise level, one row per test set."""


def plot_results(results: dict) -> Figure:
    """``N_eff / N0_MV_POL`` of every method, one panel per test set (rows) and noise level (columns).

    Parameters
    ----------
    results : dict
        As written to ``results.json``.

    Returns
    -------
    matplotlib.figure.Figure
        ``(4 x columns) x (0.6 + 3.2 x rows)`` inches at :data:`~deepcmb.figures.style.DPI`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sets = results["sets"]
    ncol = max(len(tables) for tables in sets.values())
    fig = Figure(figsize=(PANEL[0] * ncol, 0.6 + PANEL[1] * len(sets)), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(sets), ncol, squeeze=False, sharey="row")
    methods = list(dict.fromkeys(m for tables in sets.values() for t in tables for m in t["methods"]))
    colours = method_colours(methods)
    for row, (tag, tables) in enumerate(sets.items()):
        for col in range(ncol):
            ax = axes[row, col]
            if col >= len(tables) or "n0_mv_pol" not in tables[col]["theory"]:
                ax.set_visible(False)
                continue
            t = tables[col]
            L, n0 = np.asarray(t["L"]), np.asarray(t["theory"]["n0_mv_pol"])
            for m, v in t["methods"].items():
                ax.errorbar(L, np.asarray(v["n_eff"]) / n0, yerr=np.asarray(v["n_eff_err"]) / n0, marker="o", ms=3,
                            color=colours[m], label=m)
            if "n_iterative" in t["theory"]:
                ax.plot(L, np.asarray(t["theory"]["n_iterative"]) / n0, label="iterative limit", **ITERATIVE_STYLE)
            ax.axhline(1.0, color="black", lw=0.8)
            log_multipoles(ax)
            ax.set_title(f"{tag}: {t['noise_p_uk_arcmin']:g} uK-arcmin", fontsize=9)
            if row == len(sets) - 1:
                ax.set_xlabel("L")
            if col == 0:
                ax.set_ylabel("N_eff / N0 (MV_POL QE)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8)
    return fig
