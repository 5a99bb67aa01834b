"""Figure sizes, colours and the Agg canvas shared by every figure.

Figures are :class:`matplotlib.figure.Figure` objects on their own Agg canvas: nothing here touches
pyplot or matplotlib's global backend, so importing :mod:`deepcmb.figures` is free of side effects.

Sizes (inches at :data:`DPI` = 100, so PNG pixels = 100 x inches):

==========  ========================  ======================  ==================================
kind        inches                    PNG pixels              figures
==========  ========================  ======================  ==================================
``line``    7 x 5                     700 x 500               spectra, rho, noise, transfer, snr,
                                                              delensing
``wide``    12 x 5                    1200 x 500              cosmology, E_spectra
``maps``    12 x (0.8 + 1.75 rows)    1200 x (80 + 175 rows)  maps_kappa, maps_E
``corner``  7 x 7                     700 x 700               posteriors
==========  ========================  ======================  ==================================

A maps figure has ``rows`` = 2 + its number of methods (see :func:`maps_size`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.legend import Legend

    from ..io.report import Report

DPI = 100
SIZES = {"line": (7.0, 5.0), "wide": (12.0, 5.0), "corner": (7.0, 7.0)}
"""Size ``(width, height)`` in inches of each fixed-size figure kind (``maps`` grows, see :func:`maps_size`)."""
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
THEORY = "black"
ITERATIVE_STYLE = {"color": "0.35", "ls": ":", "lw": 1.8}
N0_LINESTYLE = "--"


def maps_size(rows: int) -> tuple[float, float]:
    """Size ``(width, height)`` in inches of a maps figure: 12 x (0.8 + 1.75 rows).

    Parameters
    ----------
    rows : int
        Rows of map panels: observed Q/U, truth, and one per method.
    """
    return 12.0, 0.8 + 1.75 * rows


def new_figure(kind: str, rows: int | None = None) -> Figure:
    """A blank figure of a documented size (see the module table) on an Agg canvas.

    Parameters
    ----------
    kind : {'line', 'wide', 'maps', 'corner'}
    rows : int, optional
        Rows of map panels; only (and required) for ``'maps'``.

    Returns
    -------
    matplotlib.figure.Figure
        With constrained layout.
    """
    size = maps_size(rows) if kind == "maps" else SIZES[kind]
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def method_colours(methods: Sequence[str]) -> dict[str, str]:
    """One colour per method label, fixed by the label's position in the report's method list.

    Parameters
    ----------
    methods : sequence of str

    Returns
    -------
    dict
        label -> colour; every figure of one report uses the same mapping.
    """
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}


def n0_colour(report: Report, estimator: str) -> str:
    """Colour of the analytic N0 of a QE estimator: that of the report's method using it, else black."""
    for label, colour in method_colours(report.methods).items():
        if report.estimator_of(label) == estimator:
            return colour
    return THEORY


def offsets(n: int, spread: float = 0.012) -> np.ndarray:
    """Multiplicative L offsets that keep the error bars of ``n`` methods apart, shape (n,)."""
    return 1.0 + spread * (np.arange(n) - (n - 1) / 2)


class _MultipoleLocator(LogLocator):
    """Log ticks at 1, 2, 5 x 10^n, and also at 3 and 7 x 10^n when the axis spans at most 1.5 decades."""

    def tick_values(self, vmin: float, vmax: float) -> np.ndarray:
        narrow = 0 < vmin and 0 < vmax and abs(np.log10(vmax / vmin)) <= 1.5
        self.set_params(subs=(1.0, 2.0, 3.0, 5.0, 7.0) if narrow else (1.0, 2.0, 5.0))
        return super().tick_values(vmin, vmax)


def log_multipoles(ax: Axes) -> None:
    """Log-scale multipole (x) axis with plain-number ticks (200, 300, 500, 700, 1000, ... over a narrow range)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(_MultipoleLocator(base=10))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def legend_below(ax: Axes, ncol: int = 3, fontsize: float = 8) -> Legend:
    """The legend of an axes' labelled artists, placed below the axes (outside the data), ``ncol`` columns."""
    handles, labels = ax.get_legend_handles_labels()
    return ax.figure.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=fontsize)


def positive(values: np.ndarray) -> np.ndarray:
    """A copy with non-positive entries replaced by NaN (for log axes)."""
    values = np.asarray(values, dtype=float)
    return np.where(values > 0, values, np.nan)


def save(fig: Figure, folder: str | Path, stem: str, formats: Sequence[str]) -> list[Path]:
    """Write a figure in each format (PNG at :data:`DPI`, vector PDF/SVG) without resizing it.

    The constrained layout is solved once, by the first format, and then frozen, so every file of a
    figure has the same layout (and the layout is not solved again per format).

    Returns
    -------
    list of Path
    """
    paths = []
    for fmt in formats:
        path = Path(folder) / f"{stem}.{fmt}"
        fig.savefig(path, format=fmt, dpi=DPI)
        fig.set_layout_engine("none")
        paths.append(path)
    return paths
