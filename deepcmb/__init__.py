"""deepcmb: CMB lensing reconstruction with deep learning.

The library is organised by stage. Physics and numerics are pure functions on numpy arrays
(:mod:`deepcmb.geometry`, :mod:`deepcmb.flatsky`, :mod:`deepcmb.curvedsky`, :mod:`deepcmb.binning`,
:mod:`deepcmb.cosmology`); configuration, HDF5 I/O, parallel execution and the command line sit at
the edges (:mod:`deepcmb.config`, :mod:`deepcmb.io.sims`, :mod:`deepcmb.executor`, :mod:`deepcmb.cli`).
"""

__version__ = "0.1.0"
