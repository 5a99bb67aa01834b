"""Example-map figures: the inputs, the truth, and each method's reconstruction and residual.

One row per example map of the report (``/examples``, at most :data:`MAX_EXAMPLES`), labelled with
its row in the simulation file and its noise level. A reconstruction and its residual share the
colour scale of the truth, so a residual's contrast shows its size. Size: ``maps`` (1200 x 600 px,
see :mod:`deepcmb.figures.style`). Pixel ``(iy, ix)`` is drawn at ``(x, y) = (ix, iy) * pixel``.
"""

import numpy as np

from .style import new_figure

MAX_EXAMPLES = 3
"""At most this many example maps (rows) are drawn."""

_CMAP = "RdBu_r"


def _row_labels(report, rows):
    """``'map <row>, Delta_P = <noise>'`` for each example row (noise level looked up in /meta)."""
    level = dict(zip(report.array("meta/index").tolist(), report.array("meta/noise_index").tolist()))
    return [f"map {r}" + (f"\n$\\Delta_P$={report.noise_p[level[r]]:g}" if r in level else "") for r in rows]


def _grid(report, titles, labels):
    """A figure with one row per example and one column per title; returns the figure and axes."""
    fig = new_figure("maps")
    axes = fig.subplots(len(labels), len(titles), squeeze=False)
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, label in zip(axes[:, 0], labels):
        ax.set_ylabel(label, fontsize=8)
    pixel = float(report.attr("pixel_arcmin"))
    ny, nx = (int(n) for n in report.attr("shape"))
    corner = axes[-1, 0]
    corner.set_xticks([0, nx * pixel / 60])
    corner.set_yticks([0, ny * pixel / 60])
    corner.set_xlabel("x [deg]", fontsize=8)
    corner.set_ylabel(labels[-1] + "\ny [deg]", fontsize=8)
    return fig, axes, [0, nx * pixel / 60, 0, ny * pixel / 60]


def _show(ax, image, limit, extent):
    """Draw a map with a symmetric colour scale +-limit; returns the image."""
    return ax.imshow(image, origin="lower", cmap=_CMAP, vmin=-limit, vmax=limit, extent=extent,
                     interpolation="nearest")


def _limit(*maps):
    """Colour-scale limit: the 99.5th percentile of |map| (a tiny floor keeps empty maps drawable)."""
    return max(float(np.percentile(np.abs(np.concatenate([m.ravel() for m in maps])), 99.5)), 1e-30)


def plot_maps_kappa(report):
    """Observed Q and U [µK], true kappa, and each method's kappa hat and kappa hat - kappa."""
    rows = report.array("examples/index")[:MAX_EXAMPLES]
    k = len(rows)
    q, u, kappa = (report.array(f"examples/{name}")[:k] for name in ("Q", "U", "kappa"))
    recs = {label: report.array(f"examples/{label}/kappa")[:k] for label in report.methods}
    titles = ["observed Q", "observed U", r"true $\kappa$"]
    for label in report.methods:
        titles += [rf"{label} $\hat\kappa$", rf"{label} $\hat\kappa-\kappa$"]
    fig, axes, extent = _grid(report, titles, _row_labels(report, rows))
    for i in range(k):
        pol = _limit(q[i], u[i])
        _show(axes[i, 0], q[i], pol, extent)
        image = _show(axes[i, 1], u[i], pol, extent)
        fig.colorbar(image, ax=axes[i, :2], label=r"$Q, U$ [$\mu$K]", shrink=0.9)
        lim = _limit(kappa[i])
        image = _show(axes[i, 2], kappa[i], lim, extent)
        for j, label in enumerate(report.methods):
            _show(axes[i, 3 + 2 * j], recs[label][i], lim, extent)
            _show(axes[i, 4 + 2 * j], recs[label][i] - kappa[i], lim, extent)
        fig.colorbar(image, ax=axes[i, 2:], label=r"$\kappa$", shrink=0.9)
    return fig


def plot_maps_E(report):
    """True unlensed E [µK], and each E-head method's E hat and E hat - E."""
    rows = report.array("examples/index")[:MAX_EXAMPLES]
    k = len(rows)
    methods = report.e_methods()
    truth = report.array("examples/E_unlensed")[:k]
    recs = {label: report.array(f"examples/{label}/E_unlensed")[:k] for label in methods}
    titles = [r"true unlensed $E$"]
    for label in methods:
        titles += [rf"{label} $\hat E$", rf"{label} $\hat E - E$"]
    fig, axes, extent = _grid(report, titles, _row_labels(report, rows))
    for i in range(k):
        lim = _limit(truth[i])
        image = _show(axes[i, 0], truth[i], lim, extent)
        for j, label in enumerate(methods):
            _show(axes[i, 1 + 2 * j], recs[label][i], lim, extent)
            _show(axes[i, 2 + 2 * j], recs[label][i] - truth[i], lim, extent)
        fig.colorbar(image, ax=axes[i, :], label=r"$E$ [$\mu$K]", shrink=0.9)
    return fig
