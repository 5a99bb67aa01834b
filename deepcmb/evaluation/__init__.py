"""Evaluation of lensing reconstructions against the simulation truth (``deepcmb evaluate``).

Public API
----------
run_evaluate
    The stage: a simulation file and reconstructions -> ``OUT/report.h5`` and ``OUT/summary.json``.
SCHEMA
    The ``evaluate:`` config section with its defaults.
metrics
    Pure figures of merit from binned per-map spectra: cross-correlation coefficient, effective
    noise, transfer function, S/N, jackknife errors, cosmology dependence, and the residual lensing-B
    power of a delensing template (templates: :mod:`deepcmb.delensing`).

Layout, writers and reader of the outputs: :mod:`deepcmb.io.report`. Theory curves (analytic QE N0,
iterative limit): :mod:`deepcmb.evaluation.theory`. The results table of several evaluations (the
``results`` stage of ``deepcmb run``) is :mod:`deepcmb.results`.
"""

from . import metrics
from .stage import SCHEMA, run_evaluate

__all__ = ["run_evaluate", "SCHEMA", "metrics"]
