"""Cosmological parameters from reconstructed lensing spectra (the ``deepcmb params`` stage).

Reads an evaluation report, calibrates each method's response and noise (and their dependence on the
sampled parameters) on the maps of calibration cosmologies, and samples the posterior of ``Alens`` and
CAMB parameters for the held-out test cosmologies with emcee.

Pure numerics: :mod:`~deepcmb.params.emulator` (binned :math:`C^{\\kappa\\kappa}_b(\\theta)`),
:mod:`~deepcmb.params.calibration` (transfer and noise), :mod:`~deepcmb.params.likelihood` (Gaussian
band-power likelihood, derived amplitude), :mod:`~deepcmb.params.sampling` (emcee). Input, summary
and orchestration: :mod:`~deepcmb.params.report` (the band powers taken from the report),
:mod:`~deepcmb.params.output` (``summary.json``), :mod:`~deepcmb.params.stage`,
:mod:`~deepcmb.params.cli`. The files are read and written by :mod:`deepcmb.io.report` and
:mod:`deepcmb.io.chains`.
"""

from .schema import SCHEMA, resolve_config
from .stage import run_params

__all__ = ["SCHEMA", "resolve_config", "run_params"]
