"""Theory curves the reconstructions are compared with: analytic QE N0 and the iterative limit.

Both use the fiducial (Planck 2018) spectra, as a quadratic estimator on data would, and the beam
and noise of each noise level of the simulation file. The QE N0 is averaged over exactly the
Fourier modes of the evaluation bins on the maps' own grid, so it compares with the binned
effective noise without binning bias; the iterative limit is a theory calculation on a large grid
(:func:`deepcmb.qe.iterative_noise`), evaluated at the bins' mode-weighted centres.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError
from ..progress import track
from ..qe import QuadraticEstimator, iterative_noise
from ..qe.estimators import parse_estimator

if TYPE_CHECKING:
    from ..cosmology import CMBSpectra
    from ..geometry import FlatSkyGeometry
    from ..sample import Instrument

log = logging.getLogger(__name__)


def estimator_labels(names: list[str | Sequence[str]]) -> list[str]:
    """Canonical labels (e.g. ``'EB'``, ``'MV_POL'``) of ``evaluate.theory.qe_estimators``, in order, without
    repeats."""
    labels = []
    for name in names:
        try:
            label = parse_estimator(name)[0]
        except ConfigError as exc:
            raise ConfigError(f"evaluate.theory.qe_estimators: {exc}") from None
        if label not in labels:
            labels.append(label)
    return labels


def qe_n0(geom: FlatSkyGeometry, spectra: CMBSpectra, instruments: Sequence[Instrument], labels: Sequence[str],
          edges: np.ndarray, lmin: float, lmax: float) -> dict[str, np.ndarray]:
    """Binned analytic N0 of the kappa estimate of each QE, at each noise level.

    Parameters
    ----------
    geom : FlatSkyGeometry
        Geometry of the evaluated maps.
    spectra : CMBSpectra
        Fiducial spectra of the filters and the response.
    instruments : list of Instrument
        One per noise level (beam FWHM in arcmin, noise depths in µK-arcmin).
    labels : list of str
        Canonical estimator labels (:func:`estimator_labels`).
    edges : ndarray, shape (nbin + 1,)
        L bin edges.
    lmin, lmax : float
        CMB multipoles used by the filters.

    Returns
    -------
    dict
        Label -> ndarray of shape ``(n_levels, nbin)``: :math:`N^{(0)}_L` of kappa (sr), mode-averaged
        in each bin.
    """
    out = {}
    for label in labels:
        rows = []
        for inst in instruments:
            try:
                qe = QuadraticEstimator(geom, spectra, inst, label, lmin=lmin, lmax=lmax, Lmin=edges[0], Lmax=edges[-1])
            except ConfigError as exc:
                raise ConfigError(f"evaluate.theory (qe_lmin, qe_lmax): {exc}") from None
            rows.append(qe.n0_binned(edges))
        out[label] = np.stack(rows)
    return out


def iterative_kappa_noise(spectra: CMBSpectra, instruments: Sequence[Instrument], L: np.ndarray, lmin: float,
                          lmax: float, progress: bool = False) -> np.ndarray:
    """Kappa noise of the iterative polarization estimator (EE + delensed EB) at each noise level.

    Parameters
    ----------
    spectra : CMBSpectra
        Fiducial spectra.
    instruments : list of Instrument
        One per noise level.
    L : ndarray, shape (nbin,)
        Multipoles at which to evaluate (the bins' centres); values above ``lmax`` give NaN.
    lmin, lmax : float
        CMB multipoles of the filters.
    progress : bool
        Show a progress bar (a few seconds per level).

    Returns
    -------
    ndarray, shape (n_levels, nbin)
        :math:`N^{\\kappa\\kappa}_L = [L(L+1)]^2 N^{\\phi\\phi, {\\rm iter}}_L / 4` (sr).
    """
    L = np.asarray(L, dtype=float)
    ok = (L > 0) & (L <= lmax)
    out = np.full((len(instruments), L.size), np.nan)
    if not ok.any():
        return out
    for j, inst in enumerate(track(instruments, "iterative limit", "level", enabled=progress, leave=False,
                                   log=log)):
        try:
            res = iterative_noise(spectra, inst, lmin=lmin, lmax=lmax, L=L[ok])
        except ConfigError as exc:
            raise ConfigError(f"evaluate.theory (qe_lmin, qe_lmax): {exc}") from None
        out[j, ok] = (res["L"] * (res["L"] + 1)) ** 2 * res["n_iter"] / 4.0
    return out
