"""Figures of the evaluation report and the parameter chains (``deepcmb figures``).

Public API
----------
run_figures
    report.h5 (and chains.h5) -> a folder of PNG/PDF figures with ``index.json`` (captions, files).
plan_figures
    The figures an open report supports (stems, captions, draw functions).
SCHEMA
    The ``figures:`` section of an evaluate config (``formats``), resolved with
    ``deepcmb.config.resolve(section, SCHEMA, "figures.")`` and passed to run_figures as keywords.
SIZES, DPI
    Figure sizes in inches per fixed-size kind, and the PNG resolution (PNG pixels = 100 x inches).

Figures (file stem: content; PNG size in pixels, ``m`` = number of methods drawn):

==============  ======================  ==============================================================
``maps_kappa``  1200 x (430 + 175 m)    example Q, U, true kappa, each method's kappa and residual,
                                        low-passed to L <= Lmax of the analysis bins
``maps_E``      1200 x (430 + 175 m)    example Q, U, true unlensed E, each E-head method's E, residual
``spectra``     700 x 500               C_L^kk theory, truth, auto and cross spectra, N0 curves
``rho``         700 x 500               rho_L^2 per method vs C/(C+N0) and C/(C+N_iter)
``noise``       700 x 500               N_eff per method vs analytic N0 and iterative limit (log y)
``transfer``    700 x 500               transfer function per method
``snr``         700 x 500               cumulative S/N of the lensing amplitude per map
``cosmology``   1200 x 500              per-cosmology debiased, transfer-normalised power vs theory
``delensing``   700 x 500               residual lensing-B power C^BB_res / C^BB_lens per bin of each
                                        method's template, A_lens^res in the legend
``E_spectra``   1200 x 500              E head: rho_l and residual power
``posteriors``  700 x 700               corner plot per test cosmology, all methods, truth marked,
                                        values outside the flat prior shaded
==============  ======================  ==============================================================

The figures read ``report.h5`` and ``chains.h5`` through :class:`deepcmb.io.report.Report` and
:class:`deepcmb.io.chains.Chains`. Per-level figures get the suffix ``_noise<j>`` when the report has several noise levels, posteriors
``_cosmo<c>`` when there are several test cosmologies. Every figure is a
:class:`matplotlib.figure.Figure` on its own Agg canvas; pyplot is never imported.
"""

from .stage import SCHEMA, plan_figures, run_figures
from .style import DPI, SIZES

__all__ = ["run_figures", "plan_figures", "SCHEMA", "SIZES", "DPI"]
