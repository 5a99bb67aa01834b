"""Settings of the MAP estimator and of its stage, with their defaults (no heavy imports).

:data:`ESTIMATOR_SCHEMA` configures :class:`~deepcmb.iterative.MapEstimator`; :data:`SCHEMA` adds what
only the ``deepcmb reconstruct --method map`` stage needs (``run.map`` of a preset).
"""

from __future__ import annotations

from ..config import Int, Number
from ..qe.quadratic import BAND, EMBEDDING_PAD

ESTIMATOR_SCHEMA = {
    "lmin": Number(BAND["lmin"], min=0, doc="lowest CMB multipole of the data used (as the QE's filters)"),
    "lmax": Number(BAND["lmax"], gt=0, doc="highest CMB multipole of the data used (as the QE's filters)"),
    "Lmin": Number(BAND["Lmin"], min=0, doc="lowest lensing multipole written"),
    "Lmax": Number(BAND["Lmax"], gt=0, doc="highest lensing multipole estimated and written"),
    "lmax_cmb": Number(None, gt=0, nullable=True, doc="band limit of the unlensed E (null: the Nyquist multipole, "
                                                      "as simulated)"),
    "max_iterations": Int(20, min=0, doc="quasi-Newton steps at most"),
    "tol": Number(0.01, gt=0, doc="stop when the gradient has fallen below tol x its value at the QE start"),
    "cg_tol": Number(1e-5, gt=0, lt=1, doc="relative residual of each Wiener filter (conjugate gradients)"),
    "cg_max_iterations": Int(1000, min=1, doc="conjugate-gradient iterations at most per Wiener filter (a step whose "
                                              "filter does not converge is shortened)"),
    "history": Int(8, min=1, doc="L-BFGS memory (steps)"),
    "nufft_epsilon": Number(1e-7, gt=2e-13, lt=1e-2, doc="relative accuracy of the lensing NUFFTs"),
    "pad": Number(EMBEDDING_PAD, gt=1, doc="non-periodic maps: side of the periodic grid they are embedded in "
                                           "(unobserved outside the map) over the map's"),
    "mean_field_maps": Int(32, min=0, doc="masked or non-periodic maps: simulations of the mean field of the "
                                          "gradient per mask and noise map (0: none, the joint MAP)"),
    "mc_seed": Int(0, min=0, doc="root seed of the mean-field simulations"),
}
"""Settings of :class:`~deepcmb.iterative.MapEstimator` with their defaults."""

SCHEMA = {
    **ESTIMATOR_SCHEMA,
    "maps_per_task": Int(8, min=1, doc="maps reconstructed per task (a worker process or Dask task)"),
}
"""Settings of the ``deepcmb reconstruct --method map`` stage with their defaults."""
