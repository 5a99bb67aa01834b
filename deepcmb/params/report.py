"""What the params stage takes from an evaluation report: per-map band powers, checked.

The report is read through :class:`deepcmb.io.report.Report` (its layout is documented there). The
params stage needs the geometry, the kappa bins, each map's cosmology and noise level, the parameters
and binned theory of every cosmology, the per-map power of the true kappa, each method's per-map auto
and cross spectra and, for a quadratic estimator, the analytic N0 of its estimator; every array must
be finite and of the expected shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cosmology import PARAM_NAMES
from ..errors import InputError
from ..geometry import FlatSkyGeometry
from ..io.report import Report


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
class ReportSpectra:
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
    def n_cosmologies(self) -> int:
        return self.clkk.shape[0]

    def cosmology(self, c: int) -> dict[str, float]:
        """Full parameter set of cosmology ``c``."""
        return {name: float(self.params[name][c]) for name in PARAM_NAMES}

    def rows(self, cosmology: int, noise: int) -> np.ndarray:
        """Indices of the evaluated maps of one cosmology at one noise level, shape ``(k,)``."""
        return np.flatnonzero((self.cosmology_index == cosmology) & (self.noise_index == noise))


def read_report(path: str | Path, methods: Sequence[str] | None = None) -> ReportSpectra:
    """Read the band powers of an evaluation report.

    Parameters
    ----------
    path : str or Path
    methods : list of str, optional
        Labels to read; default all methods of the report.

    Returns
    -------
    ReportSpectra

    Raises
    ------
    InputError
        If the file is missing, not an evaluation report, lacks a dataset, holds non-finite values or
        arrays of the wrong shape, or a label is unknown.
    """
    path = Path(path)
    checked = {"dtype": float, "finite": True}
    with Report(path) as rep:
        rep.require_truth("the parameter fit")
        geom = rep.geometry()
        edges = rep.edges(ndim=1, **checked)
        nb = edges.size - 1
        L = rep.centres(shape=(nb,), **checked)
        cosmo = rep.meta("cosmology_index", ndim=1, **checked).astype(np.int64)
        n = cosmo.size
        noise = rep.meta("noise_index", shape=(n,), **checked).astype(np.int64)
        params = {p: rep.param(p, ndim=1, **checked) for p in PARAM_NAMES}
        n_cosmo = params[PARAM_NAMES[0]].size
        clkk = rep.clkk(shape=(n_cosmo, nb), **checked)
        truth = rep.truth("kappa_auto", shape=(n, nb), **checked)
        labels = rep.methods if methods is None else list(methods)
        read = {}
        for label in labels:
            if label not in rep.methods:
                raise InputError(f"params.methods: {label!r} is not a method of {path} "
                                 f"(it has {', '.join(rep.methods)})")
            kind = rep.kind(label)
            auto = rep.per_map(label, "auto", shape=(n, nb), **checked)
            cross = rep.per_map(label, "cross", shape=(n, nb), **checked)
            n0 = None
            if kind == "qe":
                est = rep.estimator_of(label)
                if not est:
                    raise InputError(f"{path}: method {label!r} is a QE without an estimator attribute")
                n0 = rep.n0(est, ndim=2, **checked)
                if n0.shape[1] != nb:
                    raise InputError(f"{path}: the N0 of {est} has {n0.shape[1]} bins, expected {nb}")
            read[label] = MethodSpectra(label, kind, auto, cross, n0)
    if n and (cosmo.min() < 0 or cosmo.max() >= n_cosmo):
        raise InputError(f"{path}: the maps' cosmology index refers to cosmologies outside 0..{n_cosmo - 1}")
    return ReportSpectra(path, geom, edges, L, cosmo, noise, params, clkk, truth, read)
