"""Figure sizes, colours and the Agg canvas shared by every figure.

Figures are :class:`matplotlib.figure.Figure` objects on their own Agg canvas: nothing here touches
pyplot or matplotlib's global backend, so importing :mod:`deepcmb.figures` is free of side effects.

Sizes (inches at :data:`DPI` = 100, so PNG pixels = 100 x inches):

=========  ===========  ==========  =============================================
kind       inches       PNG pixels  figures
=========  ===========  ==========  =============================================
``line``   7 x 5        700 x 500   spectra, rho, noise, transfer, snr
``wide``   12 x 5       1200 x 500  cosmology, E_spectra
``maps``   12 x 6       1200 x 600  maps_kappa, maps_E
``corner`` 7 x 7        700 x 700   posteriors
=========  ===========  ==========  =============================================
"""

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

DPI = 100
SIZES = {"line": (7.0, 5.0), "wide": (12.0, 5.0), "maps": (12.0, 6.0), "corner": (7.0, 7.0)}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
THEORY = "black"
ITERATIVE_STYLE = {"color": "0.35", "ls": ":", "lw": 1.8}
N0_LINESTYLE = "--"


def new_figure(kind):
    """A blank figure of a documented size (see the module table) on an Agg canvas.

    Parameters
    ----------
    kind : {'line', 'wide', 'maps', 'corner'}

    Returns
    -------
    matplotlib.figure.Figure
        With constrained layout.
    """
    fig = Figure(figsize=SIZES[kind], dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def size_px(kind):
    """PNG size ``(width, height)`` in pixels of a figure kind."""
    w, h = SIZES[kind]
    return int(round(w * DPI)), int(round(h * DPI))


def method_colours(methods):
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


def n0_colour(report, estimator):
    """Colour of the analytic N0 of a QE estimator: that of the report's method using it, else black."""
    for label in report.methods:
        if report.estimator_of(label) == estimator:
            return report.colours[label]
    return THEORY


def offsets(n, spread=0.012):
    """Multiplicative L offsets that keep the error bars of ``n`` methods apart, shape (n,)."""
    return 1.0 + spread * (np.arange(n) - (n - 1) / 2)


def log_multipoles(ax):
    """Log-scale multipole (x) axis with plain-number ticks at 1, 2, 5 x 10^n (100, 200, 500, 1000, ...)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def positive(values):
    """A copy with non-positive entries replaced by NaN (for log axes)."""
    values = np.asarray(values, dtype=float)
    return np.where(values > 0, values, np.nan)


def save(fig, folder, stem, formats):
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
