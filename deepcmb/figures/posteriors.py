"""Posterior figures of ``deepcmb params``: a corner plot per test cosmology, all methods overlaid.

Diagonal: 1-d marginal densities (histograms of the flattened chain, each scaled to a peak of 1).
Below it: 2-d marginals as 68 % and 95 % credible contours (highest-density levels of a lightly
smoothed 2-d histogram). The cosmology's true parameters are marked in black (dotted lines, star);
values outside the flat prior are shaded grey, so a marginal piled up at a prior edge is not read as
a measurement.
Colours are those of the methods in the report; a QE's N0-only fit is dashed. Size: ``corner``
(700 x 700 px, see :mod:`deepcmb.figures.style`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from scipy.ndimage import gaussian_filter

from ..errors import InputError
from .style import THEORY, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..io.chains import Chains

PARAM_LABELS = {
    "Alens": (r"$A_{\rm lens}$", 1.0),
    "As": (r"$10^9 A_s$", 1e9),
    "H0": (r"$H_0$ [km s$^{-1}$ Mpc$^{-1}$]", 1.0),
    "ombh2": (r"$\Omega_b h^2$", 1.0),
    "omch2": (r"$\Omega_c h^2$", 1.0),
    "ns": (r"$n_s$", 1.0),
    "tau": (r"$\tau$", 1.0),
    "mnu": (r"$\sum m_\nu$ [eV]", 1.0),
}
"""Axis label and display scale of each CAMB parameter (others are shown by name, unscaled)."""

LEVELS = (0.68, 0.95)
_BINS = 40
_EXCLUDED = "0.88"


def _label_scale(name):
    return PARAM_LABELS.get(name, (name, 1.0))


def density_levels(density: np.ndarray, masses: Sequence[float] = LEVELS) -> np.ndarray:
    """Density thresholds enclosing the given probability masses of a 2-d histogram.

    Parameters
    ----------
    density : ndarray
        Non-negative histogram (any normalisation).
    masses : sequence of float
        Enclosed probabilities, e.g. (0.68, 0.95).

    Returns
    -------
    ndarray
        One threshold per mass, in increasing order of threshold (decreasing mass), suitable as
        contour levels: the region ``density >= threshold`` holds that mass.
    """
    flat = np.sort(density.ravel())[::-1]
    cumulative = np.cumsum(flat) / flat.sum()
    thresholds = [flat[min(np.searchsorted(cumulative, m), flat.size - 1)] for m in masses]
    return np.sort(thresholds)


def _ranges(samples, truth):
    """Plot range of each parameter: the 0.5-99.5 % span of every chain's samples, and the truth."""
    lo = np.min([np.percentile(s, 0.5, axis=0) for s in samples], axis=0)
    hi = np.max([np.percentile(s, 99.5, axis=0) for s in samples], axis=0)
    lo, hi = np.minimum(lo, truth), np.maximum(hi, truth)
    pad = 0.05 * np.where(hi > lo, hi - lo, np.abs(hi) + 1.0)
    return np.stack([lo - pad, hi + pad], axis=1)


def _contours(ax, x, y, xr, yr, style):
    hist, xe, ye = np.histogram2d(x, y, bins=_BINS, range=[xr, yr])
    hist = gaussian_filter(hist, 1.0)
    levels = density_levels(hist)
    if hist.max() > 0 and np.all(np.diff(levels) > 0):
        xc, yc = (xe[1:] + xe[:-1]) / 2, (ye[1:] + ye[:-1]) / 2
        ax.contour(xc, yc, hist.T, levels=levels, colors=[style["color"]], linestyles=[style["ls"]],
                   linewidths=[1.0, 1.6])


def _load(chains, cosmo):
    """Samples (display units) of every fit of a cosmology, the parameter names, the scaled truth and prior.

    The prior bounds, shape (ndim, 2), are those of the first fit (every fit of a run shares them).
    """
    fits = chains.fits(cosmo)
    _, names, truth = chains.samples(fits[0][1])
    lower, upper = chains.prior(fits[0][1])
    samples = []
    for label, where, debias in fits:
        s, other, _ = chains.samples(where)
        if other != names:
            raise InputError(f"{chains.path}: /{where} samples {other}, /{fits[0][1]} samples {names}; one "
                             "corner plot needs the same parameters")
        samples.append((label, debias, s))
    scale = np.array([_label_scale(n)[1] for n in names])
    prior = np.stack([lower, upper], axis=1) * scale[:, None]
    return [(label, debias, s * scale) for label, debias, s in samples], names, truth * scale, prior


def _shade_outside(span, limits, bounds):
    """Shade the part of an axis range outside the prior bounds (``span`` is axvspan or axhspan)."""
    lo, hi = limits
    if lo < bounds[0]:
        span(lo, bounds[0], color=_EXCLUDED, lw=0, zorder=0)
    if bounds[1] < hi:
        span(bounds[1], hi, color=_EXCLUDED, lw=0, zorder=0)


def _style(label, debias, colours):
    """Legend name and line style of a fit: solid for the calibrated debias, dashed for N0 only."""
    if debias == "n0":
        return f"{label} (N0-only debias)", {"color": colours[label], "ls": "--"}
    return label, {"color": colours[label], "ls": "-"}


def plot_posteriors(chains: Chains, cosmo: int, colours: dict[str, str]) -> Figure:
    """Corner plot of the posteriors of one test cosmology, every method with a chain for it overlaid.

    A QE's N0-only fit (``n0_only``, which ignores N1 and is expected biased high in the lensing
    amplitude) is drawn dashed in the colour of its method.

    Parameters
    ----------
    chains : deepcmb.io.chains.Chains
    cosmo : int
        Test-cosmology index.
    colours : dict
        Method label -> colour (the report's).

    Returns
    -------
    matplotlib.figure.Figure
    """
    fits, names, truth, prior = _load(chains, cosmo)
    ranges = _ranges([s for _, _, s in fits], truth)
    labels = [_label_scale(n)[0] for n in names]
    ndim = len(names)
    fig = new_figure("corner")
    axes = fig.subplots(ndim, ndim, squeeze=False)
    for i, j in zip(*np.triu_indices(ndim, 1)):
        axes[i, j].set_visible(False)
    for i in range(ndim):
        diag = axes[i, i]
        for label, debias, s in fits:
            _, style = _style(label, debias, colours)
            hist, edges = np.histogram(s[:, i], bins=_BINS, range=ranges[i])
            diag.stairs(hist / max(hist.max(), 1), edges, lw=1.5, **style)
        diag.axvline(truth[i], color=THEORY, lw=0.8, ls=":")
        _shade_outside(diag.axvspan, ranges[i], prior[i])
        diag.set(xlim=ranges[i], ylim=(0, 1.1), yticks=[])
        for j in range(i):
            ax = axes[i, j]
            for label, debias, s in fits:
                _contours(ax, s[:, j], s[:, i], ranges[j], ranges[i], _style(label, debias, colours)[1])
            ax.axvline(truth[j], color=THEORY, lw=0.8, ls=":")
            ax.axhline(truth[i], color=THEORY, lw=0.8, ls=":")
            ax.plot(truth[j], truth[i], "*", color=THEORY, ms=9)
            _shade_outside(ax.axvspan, ranges[j], prior[j])
            _shade_outside(ax.axhspan, ranges[i], prior[i])
            ax.set(xlim=ranges[j], ylim=ranges[i])
            if j:
                ax.set_yticklabels([])
            else:
                ax.set_ylabel(labels[i])
    for j in range(ndim):
        axes[-1, j].set_xlabel(labels[j])
        for i in range(j, ndim - 1):
            axes[i, j].set_xticklabels([])
    axes[0, 0].set_ylabel("marginal density (peak 1)")
    handles = []
    for label, debias, _ in fits:
        name, style = _style(label, debias, colours)
        handles.append(Line2D([], [], lw=1.5, label=name, **style))
    handles.append(Line2D([], [], color=THEORY, ls=":", marker="*", label="truth"))
    handles.append(Patch(color=_EXCLUDED, label="outside prior"))
    # the empty upper triangle holds the legend; a single panel places it where the data are not
    target, where = (fig, "upper right") if ndim > 1 else (axes[0, 0], "best")
    target.legend(handles=handles, loc=where, title=f"cosmology {cosmo}, 68/95 %")
    return fig
