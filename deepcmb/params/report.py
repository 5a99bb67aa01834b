"""Read the parts of an evaluation report (``report.h5`` of ``deepcmb evaluate``) the params stage uses.

Only these are read::

    /                    attrs format = 'deepcmb.evaluation', shape (ny, nx), pixel_arcmin
    /bins/edges (nb+1,), /bins/L (nb,)
    /meta/cosmology_index (n,), /meta/noise_index (n,)
    /cosmology/params/<P> (n_cosmo,)   every P of deepcmb.cosmology.PARAM_NAMES
    /cosmology/clkk (n_cosmo, nb)      binned theory (cross-checked against CAMB)
    /truth/kappa_auto (n, nb)
    /methods/<label>/ attrs method ('nn' | 'qe'), estimator (qe)
    /methods/<label>/per_map/auto, /methods/<label>/per_map/cross (n, nb)
    /theory/n0_<estimator> (n_levels, nb)   for methods with method = 'qe'
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cosmology import PARAM_NAMES
from ..errors import InputError
from ..evaluation.report import FORMAT
from ..geometry import FlatSkyGeometry
from ..io.files import open_checked


@dataclass(frozen=True)
class MethodSpectra:
    """Per-map band powers of one reconstruction method.

    Attributes
    ----------
    label : str
    method : str
        ``'nn'`` or ``'qe'``.
    auto, cross : ndarray, shape (n, nb)
        :math:`\\hat C_b` and :math:`C_b^{\\hat\\kappa\\kappa}` of every map (sr).
    n0 : ndarray or None, shape (n_levels, nb)
        Analytic kappa N0 of the estimator at each noise level (quadratic estimators only).
    """

    label: str
    method: str
    auto: np.ndarray
    cross: np.ndarray
    n0: np.ndarray = None


@dataclass(frozen=True)
class Report:
    """What the params stage reads from an evaluation report.

    Attributes
    ----------
    path : Path
    geom : FlatSkyGeometry
        Geometry of the evaluated maps.
    edges : ndarray, shape (nb + 1,)
    L : ndarray, shape (nb,)
        Mode-weighted band centres.
    cosmology_index, noise_index : ndarray of int, shape (n,)
    params : dict
        Parameter name -> ``(n_cosmo,)`` values.
    clkk : ndarray, shape (n_cosmo, nb)
        Binned theory convergence power of each cosmology.
    truth : ndarray, shape (n, nb)
        Per-map band powers of the true kappa.
    methods : dict
        Label -> :class:`MethodSpectra`, in the report's order.
    """

    path: Path
    geom: FlatSkyGeometry
    edges: np.ndarray
    L: np.ndarray
    cosmology_index: np.ndarray
    noise_index: np.ndarray
    params: dict
    clkk: np.ndarray
    truth: np.ndarray
    methods: dict

    @property
    def n_cosmologies(self):
        return self.clkk.shape[0]

    def cosmology(self, c):
        """Full parameter set of cosmology ``c``."""
        return {name: float(self.params[name][c]) for name in PARAM_NAMES}

    def rows(self, cosmology, noise):
        """Indices of the evaluated maps of one cosmology at one noise level, shape ``(k,)``."""
        return np.flatnonzero((self.cosmology_index == cosmology) & (self.noise_index == noise))


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def _read(f, path, name, ndim, shape=None):
    if name not in f:
        raise InputError(f"{path}: missing dataset /{name}")
    d = np.asarray(f[name][()], dtype=float)
    if d.ndim != ndim or (shape is not None and d.shape != shape):
        want = shape if shape is not None else f"{ndim} dimensions"
        raise InputError(f"{path}: /{name} has shape {d.shape}, expected {want}")
    if not np.all(np.isfinite(d)):
        raise InputError(f"{path}: /{name} holds non-finite values")
    return d


def read_report(path, methods=None):
    """Read an evaluation report.

    Parameters
    ----------
    path : str or Path
    methods : list of str, optional
        Labels to read; default all methods of the report.

    Returns
    -------
    Report

    Raises
    ------
    InputError
        If the file is missing, not an evaluation report, lacks a dataset, or a label is unknown.
    """
    path = Path(path)
    with open_checked(path, FORMAT, "evaluation report") as f:
        try:
            geom = FlatSkyGeometry(tuple(int(n) for n in f.attrs["shape"]), float(f.attrs["pixel_arcmin"]))
        except KeyError as exc:
            raise InputError(f"{path}: missing root attribute {exc}") from None
        edges = _read(f, path, "bins/edges", 1)
        nb = edges.size - 1
        L = _read(f, path, "bins/L", 1, (nb,))
        cosmo = _read(f, path, "meta/cosmology_index", 1).astype(np.int64)
        n = cosmo.size
        noise = _read(f, path, "meta/noise_index", 1, (n,)).astype(np.int64)
        params = {p: _read(f, path, f"cosmology/params/{p}", 1) for p in PARAM_NAMES}
        n_cosmo = params[PARAM_NAMES[0]].size
        clkk = _read(f, path, "cosmology/clkk", 2, (n_cosmo, nb))
        truth = _read(f, path, "truth/kappa_auto", 2, (n, nb))
        if "methods" not in f or not len(f["methods"]):
            raise InputError(f"{path}: no /methods in the report")
        available = [_text(m) for m in f.attrs.get("methods", list(f["methods"]))]
        labels = available if methods is None else list(methods)
        read = {}
        for label in labels:
            if label not in f["methods"]:
                raise InputError(f"params.methods: {label!r} is not a method of {path} (it has {', '.join(available)})")
            g = f["methods"][label]
            kind = _text(g.attrs.get("method", ""))
            auto = _read(f, path, f"methods/{label}/per_map/auto", 2, (n, nb))
            cross = _read(f, path, f"methods/{label}/per_map/cross", 2, (n, nb))
            n0 = None
            if kind == "qe":
                est = _text(g.attrs.get("estimator", ""))
                if not est:
                    raise InputError(f"{path}: /methods/{label} is a QE without an estimator attribute")
                if f"theory/n0_{est}" not in f:
                    raise InputError(f"{path}: missing dataset /theory/n0_{est}, the N0 of method {label!r} "
                                     f"(add {est} to evaluate.theory.qe_estimators)")
                n0 = _read(f, path, f"theory/n0_{est}", 2)
                if n0.shape[1] != nb:
                    raise InputError(f"{path}: /theory/n0_{est} has {n0.shape[1]} bins, expected {nb}")
            read[label] = MethodSpectra(label, kind, auto, cross, n0)
    if n and (cosmo.min() < 0 or cosmo.max() >= n_cosmo):
        raise InputError(f"{path}: /meta/cosmology_index refers to cosmologies outside 0..{n_cosmo - 1}")
    return Report(path, geom, edges, L, cosmo, noise, params, clkk, truth, read)
