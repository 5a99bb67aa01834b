"""Example-map figures: the inputs, the truth, and each method's reconstruction and residual.

Layout: one column pair per example map of the report (``/examples``, at most :data:`MAX_EXAMPLES`),
headed by its row in the simulation file and its noise level; one row of observed Q and U, one row of
the truth, then one row per method with its reconstruction (left) and residual (right). The figure
grows by one row per method (size: :func:`deepcmb.figures.style.maps_size`). Q and U share one colour
scale; the truth, every reconstruction and every residual share another (set by the truth of all
drawn examples), so a residual's contrast shows its size. Pixel ``(iy, ix)`` is drawn at
``(x, y) = (ix, iy) * pixel``.

The kappa maps are shown low-passed (:func:`lowpass`) to the multipoles of the report's analysis bins:
a quadratic estimator keeps modes far beyond them, where its noise is large and would swamp the
display, and the true kappa's small scales would dominate it too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .style import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..geometry import FlatSkyGeometry
    from ..io.report import Report

MAX_EXAMPLES = 3
"""At most this many example maps (column pairs) are drawn."""

ROLLOFF = 0.2
"""Width of the cosine roll-off of :func:`lowpass` above Lmax, as a fraction of Lmax."""

_CMAP = "RdBu_r"
_GAP = 0.12


def lowpass(geom: FlatSkyGeometry, maps: np.ndarray, lmax: float, rolloff: float = ROLLOFF) -> np.ndarray:
    """Low-pass maps with a smooth Fourier filter that keeps every multipole up to ``lmax``.

    .. math:: F(L) = 1 \\ (L \\le L_{\\max}), \\quad
              \\tfrac12 \\left[1 + \\cos\\left(\\pi \\frac{L - L_{\\max}}{r L_{\\max}}\\right)\\right]
              \\ (L_{\\max} < L < (1 + r) L_{\\max}), \\quad 0 \\ \\text{beyond}.

    Parameters
    ----------
    geom : deepcmb.geometry.FlatSkyGeometry
    maps : ndarray, shape (..., ny, nx)
    lmax : float
        Highest multipole kept unchanged.
    rolloff : float
        Width r of the roll-off as a fraction of ``lmax``.

    Returns
    -------
    ndarray, shape (..., ny, nx)
    """
    x = np.clip((geom.ell() - lmax) / (rolloff * lmax), 0.0, 1.0)
    return geom.fourier2map(geom.map2fourier(maps) * (0.5 * (1.0 + np.cos(np.pi * x))))


def display_lmax(report: Report) -> float:
    """The multipole the kappa maps are low-passed to: the last edge of the report's ``/bins/edges``."""
    return float(report.edges()[-1])


def _headers(report, rows):
    """``'map <row>, Delta_P = <noise>'`` for each example row (noise level looked up in /meta)."""
    level = dict(zip(report.meta("index").tolist(), report.meta("noise_index").tolist()))
    return [f"map {r}" + (rf", $\Delta_P$={report.noise_p[level[r]]:g}" if r in level else "") for r in rows]


def _show(ax, image, limit, extent):
    """Draw a map with a symmetric colour scale +-limit; returns the image."""
    return ax.imshow(image, origin="lower", cmap=_CMAP, vmin=-limit, vmax=limit, extent=extent,
                     interpolation="nearest")


def _limit(*maps):
    """Colour-scale limit: the 99.5th percentile of |map| (a tiny floor keeps empty maps drawable)."""
    return max(float(np.percentile(np.abs(np.concatenate([np.ravel(m) for m in maps])), 99.5)), 1e-30)


def _draw(report, truth, recs, names):
    """The maps figure of one field.

    Parameters
    ----------
    truth : ndarray, shape (k, ny, nx)
        The true field of the k examples, as displayed.
    recs : dict
        Method label -> its reconstructions of the k examples, shape (k, ny, nx), as displayed.
    names : dict
        Mathtext ``truth``, ``hat``, ``resid`` titles and the colour-bar label ``unit``.
    """
    k = len(truth)
    rows = report.example("index")[:k]
    q, u = (report.example(name)[:k] for name in ("Q", "U"))
    labels = ["observed", "truth", *recs]
    fig = new_figure("maps", rows=len(labels))
    # column pairs of the examples, kept apart by narrow empty columns
    grid = fig.subplots(len(labels), 3 * k - 1, squeeze=False, width_ratios=([1, 1, _GAP] * k)[:-1])
    for ax in grid[:, 2::3].flat:
        ax.remove()
    axes = np.delete(grid, np.s_[2::3], axis=1)
    geom = report.geometry()
    ny, nx = geom.shape
    side = geom.pixel_arcmin / 60
    extent = [0, nx * side, 0, ny * side]
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    pol, lim = _limit(q, u), _limit(truth)
    for i, header in enumerate(_headers(report, rows)):
        left, right = axes[:, 2 * i], axes[:, 2 * i + 1]
        qu = _show(left[0], q[i], pol, extent)
        _show(right[0], u[i], pol, extent)
        left[0].set_title(f"{header}\nobserved $Q$", fontsize=9)
        right[0].set_title(f"{header}\nobserved $U$", fontsize=9)
        field = _show(left[1], truth[i], lim, extent)
        left[1].set_title(names["truth"], fontsize=9)
        right[1].set_axis_off()
        for j, label in enumerate(recs):
            _show(left[2 + j], recs[label][i], lim, extent)
            _show(right[2 + j], recs[label][i] - truth[i], lim, extent)
        left[2].set_title(names["hat"], fontsize=9)
        right[2].set_title(names["resid"], fontsize=9)
    for ax, label in zip(axes[:, 0], labels):
        ax.set_ylabel(label, fontsize=9)
    corner = axes[-1, 0]
    corner.set_xticks([0, extent[1]])
    corner.set_yticks([0, extent[3]])
    corner.set_xlabel("x [deg]", fontsize=8)
    corner.set_ylabel(labels[-1] + "\ny [deg]", fontsize=9)
    fig.colorbar(qu, ax=axes[0, :], label=r"$Q, U$ [$\mu$K]", shrink=0.8)
    fig.colorbar(field, ax=axes[1:, :], label=names["unit"], shrink=0.8)
    return fig


def plot_maps_kappa(report: Report) -> Figure:
    """Observed Q and U [µK], true kappa, and each method's kappa hat and kappa hat - kappa.

    Every kappa map is low-passed to the last edge of the analysis bins (:func:`lowpass`,
    :func:`display_lmax`); the residual is that of the low-passed maps.
    """
    k = min(MAX_EXAMPLES, report.n_examples())
    geom = report.geometry()
    lmax = display_lmax(report)
    truth = lowpass(geom, report.example("kappa")[:k], lmax)
    recs = {label: lowpass(geom, report.example("kappa", label)[:k], lmax) for label in report.methods}
    names = {"truth": r"true $\kappa$", "hat": r"$\hat\kappa$", "resid": r"$\hat\kappa-\kappa$",
             "unit": rf"$\kappa$ (low-passed to $L \leq {lmax:g}$)"}
    return _draw(report, truth, recs, names)


def plot_maps_E(report: Report) -> Figure:
    """Observed Q and U [µK], true unlensed E [µK], and each E-head method's E hat and E hat - E."""
    k = min(MAX_EXAMPLES, report.n_examples())
    recs = {label: report.example("E_unlensed", label)[:k] for label in report.e_methods()}
    names = {"truth": r"true unlensed $E$", "hat": r"$\hat E$", "resid": r"$\hat E - E$", "unit": r"$E$ [$\mu$K]"}
    return _draw(report, report.example("E_unlensed")[:k], recs, names)
