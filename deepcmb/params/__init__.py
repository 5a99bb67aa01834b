"""Cosmological parameters from reconstructed lensing spectra (the ``deepcmb params`` stage).

Reads an evaluation report, calibrates each method's response and noise (and their dependence on the
sampled parameters) on the maps of calibration cosmologies, and samples the posterior of ``Alens`` and
CAMB parameters for the held-out test cosmologies with emcee.

Pure numerics: :mod:`~deepcmb.params.emulator` (binned :math:`C^{\\kappa\\kappa}_b(\\theta)`),
:mod:`~deepcmb.params.calibration` (transfer and noise), :mod:`~deepcmb.params.likelihood` (Gaussian
band-power likelihood, derived amplitude), :mod:`~deepcmb.params.sampling` (emcee). I/O and
orchestration: :mod:`~deepcmb.params.report`, :mod:`~deepcmb.params.output`,
:mod:`~deepcmb.params.stage`, :mod:`~deepcmb.params.cli`.
"""

from .schema import SCHEMA, resolve_config
from .stage import run_params

__all__ = ["SCHEMA", "resolve_config", "run_params"]
