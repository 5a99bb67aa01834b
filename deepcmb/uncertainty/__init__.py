"""Per-map uncertainties of lensing reconstructions, calibrated on simulations, and their coverage.

:mod:`~deepcmb.uncertainty.modes` (the Gaussian posterior per Fourier mode), :mod:`~deepcmb.uncertainty.window`
(its variance per pixel on masked and non-periodic maps), :mod:`~deepcmb.uncertainty.ood`
(how unlike the calibration maps an input is), :mod:`~deepcmb.uncertainty.coverage` (how often the truth
lies within the intervals), :mod:`~deepcmb.uncertainty.stage` (``deepcmb calibrate`` and
``deepcmb reconstruct ... --uncertainty``).
"""

from .stage import posterior_samples, run_calibrate

__all__ = ["posterior_samples", "run_calibrate"]
