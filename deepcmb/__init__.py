"""deepcmb: CMB lensing reconstruction with deep learning.

The library is organised by stage. Physics and numerics are pure functions on numpy arrays
(:mod:`deepcmb.geometry`, :mod:`deepcmb.flatsky`, :mod:`deepcmb.curvedsky`, :mod:`deepcmb.binning`,
:mod:`deepcmb.cosmology`); configuration, HDF5 I/O, parallel execution and the command line sit at
the edges (:mod:`deepcmb.config`, :mod:`deepcmb.io.sims`, :mod:`deepcmb.executor`, :mod:`deepcmb.cli`).
The notebook API (:mod:`deepcmb.api`: ``simulate``, ``read_maps``, ``qe``, ``load_network``, ``metrics``,
``posterior``) is importable from here.
"""

__version__ = "0.1.0"

_API = ("Maps", "Network", "load_network", "metrics", "posterior", "qe", "read_maps", "simulate")
"""Names of :mod:`deepcmb.api` available from the top level, imported on first use (``import deepcmb``
stays light: the command line starts without numpy's heavier neighbours, Keras or CAMB)."""

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'deepcmb' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
