"""The quadratic estimator on masked maps with a noise map: C^-1 filter, simulated mean field, Monte Carlo
response and N0.

With a mask :math:`M` and an inverse-variance map :math:`\\mathrm{ivar}_P` the polarization estimators
(EE, EB, MV_POL) take the inverse-variance filtered fields of :mod:`deepcmb.qe.cinv` instead of the
diagonal filters, and are normalised with the analytic response :math:`R_L` of the isotropic filters at
the mean inverse noise of the observed pixels (:class:`MaskedQE`). The mask breaks statistical isotropy:

**Mean field.** The unnormalised estimate of an unlensed sky does not vanish on average; it responds to
the holes and edges of the mask and to the noise map (Hanson et al. 2011; Namikawa, Hanson & Takahashi
2013). For each distinct mask and noise map it is the average of the estimate over :math:`N_{\\rm MF}`
simulations with the same mask and noise map (deepcmb's own simulator at the fiducial spectra),

.. math:: \\bar\\kappa^{\\rm MF}(\\mathbf{L}) = \\frac{1}{N_{\\rm MF}} \\sum_{s} \\hat\\kappa_s(\\mathbf{L}),

and is subtracted (it adds :math:`N^{(0)} / N_{\\rm MF}` of noise to each map).

**Response.** The analytic normalisation ignores the mask; its error is measured on :math:`N_R`
simulations with the mask and noise map of the data (simulation :math:`s` takes those of the data's
mask :math:`s \\bmod` the number of masks), in bins of :math:`L`, over the observed region,

.. math:: R^{\\rm MC}_b = \\frac{\\sum_s C_b[M(\\hat\\kappa_s - \\bar\\kappa^{\\rm MF}),\\, M \\kappa_s]}
          {\\sum_s C_b[M \\kappa_s,\\, M \\kappa_s]},

with :math:`C_b[a, b]` the binned cross-spectrum, as in the Monte Carlo correction of the Planck 2018
lensing analysis (Planck 2018 VIII, Sec. 2.3). Its error follows from the scatter of
:math:`C_b[\\ldots] - R^{\\rm MC}_b C_b[M\\kappa_s, M\\kappa_s]` over the simulations; the estimate is
divided by :math:`R^{\\rm MC}_b` where :math:`R^{\\rm MC}_b / \\sigma(R^{\\rm MC}_b)` reaches the
threshold, and left at the analytic response elsewhere.

**N0.** The reconstruction noise over the observed region is measured on the same simulations,
:math:`N_b = \\langle C_b[M(\\hat\\kappa - \\kappa), M(\\hat\\kappa - \\kappa)] \\rangle / w_2`, with the mask
moments :math:`w_n = \\langle M^n \\rangle` (pixel mean) that normalise pseudo-spectra of masked maps
(Hivon et al. 2002).

References
----------
Hanson, Challinor, Efstathiou & Bielewicz (2011), PRD 83, 043005; Namikawa, Hanson & Takahashi (2013),
MNRAS 431, 609; Planck 2018 results VIII (2020), A&A 641, A8; Hivon et al. (2002), ApJ 567, 2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..binning import binned_auto_spectrum, binned_cross_spectrum
from ..errors import ConfigError, InputError
from ..io.maps import read_weights, weight_groups
from ..sample import FlatSimulator, Instrument, convolve_beam, sample_rng
from ..survey import box_cut, padded_box
from .cinv import CinvFilter
from .engine import to_map
from .estimators import fields_needed
from .quadratic import BAND, QuadraticEstimator

if TYPE_CHECKING:
    from ..cosmology import CMBSpectra
    from ..geometry import FlatSkyGeometry


def observed_cross(geom: FlatSkyGeometry, a: np.ndarray, b: np.ndarray, mask: np.ndarray,
                   edges: np.ndarray) -> np.ndarray:
    """Binned cross-spectrum of ``a`` and ``b`` over the observed region: :math:`C_b[M a, M b] / w_2`.

    Parameters
    ----------
    geom : FlatSkyGeometry
    a, b : ndarray, shape (N, ny, nx) or (ny, nx)
    mask : ndarray, shape (N, ny, nx) or (ny, nx)
        The mask :math:`M` of each map, in [0, 1].
    edges : ndarray
        Bin edges in L.

    Returns
    -------
    ndarray, shape (N, nbin) or (nbin,)
        Pseudo-spectrum corrected by the mask's :math:`w_2 = \\langle M^2 \\rangle` of each map (sr for
        dimensionless maps).
    """
    w2 = np.mean(np.asarray(mask, dtype=float) ** 2, axis=(-2, -1))
    return binned_cross_spectrum(geom, mask * a, mask * b, edges) / np.asarray(w2)[..., None]


def response_correction(cross: np.ndarray, auto: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Monte Carlo response :math:`R^{\\rm MC}_b` and its error from per-simulation spectra.

    Parameters
    ----------
    cross : ndarray, shape (n_sims, nbin)
        :math:`C_b[M\\hat\\kappa_s, M\\kappa_s]` of each simulation.
    auto : ndarray, shape (n_sims, nbin)
        :math:`C_b[M\\kappa_s, M\\kappa_s]`.

    Returns
    -------
    r : ndarray, shape (nbin,)
        :math:`\\sum_s C_b[\\hat\\kappa_s, \\kappa_s] / \\sum_s C_b[\\kappa_s, \\kappa_s]`.
    error : ndarray, shape (nbin,)
        Its standard error, :math:`\\sqrt{n\\, {\\rm var}_s(c_s - r a_s)} / \\sum_s a_s` (inf for fewer
        than two simulations).
    """
    cross, auto = np.atleast_2d(cross), np.atleast_2d(auto)
    n = cross.shape[0]
    total = auto.sum(axis=0)
    r = cross.sum(axis=0) / total
    if n < 2:
        return r, np.full_like(r, np.inf)
    return r, np.sqrt(n * np.var(cross - r * auto, axis=0, ddof=1)) / total


def on_grid(geom: FlatSkyGeometry, edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A binned function of L on the rfft grid: the value of the bin of each mode (the nearest bin outside)."""
    index = np.clip(np.digitize(geom.ell(), edges) - 1, 0, len(edges) - 2)
    return np.asarray(values)[index]


class MaskedQE:
    """A polarization quadratic estimator of masked maps with a noise map, by :math:`C^{-1}` filtering.

    Parameters
    ----------
    geom : FlatSkyGeometry
        The maps' geometry.
    spectra : CMBSpectra
        Fiducial spectra (filters, weights, response; the prior of the :math:`C^{-1}` filter).
    instrument : Instrument
        Beam of the maps, and the polarization noise of the isotropic filters behind the analytic
        response (the mean inverse noise of the observed pixels, :func:`effective_noise`).
    estimator : str
        ``'EE'``, ``'EB'`` or ``'MV_POL'`` (estimators reading only Q and U).
    lmin, lmax, Lmin, Lmax : float
        Multipole band of the filters and of the output (:data:`deepcmb.qe.BAND`).
    periodic : bool
        Whether the maps are periodic; if not, they are embedded in a periodic grid ``pad`` times
        larger per side (:func:`deepcmb.survey.padded_box`), unobserved outside the map.
    pad : float
        Side of that grid over the map's, > 1.
    cg_tol, cg_maxiter
        Conjugate-gradient tolerance and iteration limit of the filter.
    precision : {'single', 'double'}
        Arithmetic of the estimate.

    Attributes
    ----------
    box : FlatSkyGeometry
        The periodic grid the filter and the estimate run on.
    qe : QuadraticEstimator
        The isotropic estimator on ``box`` (legs, analytic normalisation).
    cinv : CinvFilter
    """

    def __init__(self, geom: FlatSkyGeometry, spectra: CMBSpectra, instrument: Instrument, estimator: str,
                 lmin: float = BAND["lmin"], lmax: float = BAND["lmax"], Lmin: float = BAND["Lmin"],
                 Lmax: float = BAND["Lmax"], *, periodic: bool, pad: float, cg_tol: float, cg_maxiter: int,
                 precision: str = "double"):
        self.geom = geom
        self.box = geom if periodic else padded_box(geom, pad)
        self.cut = box_cut(self.box.shape, geom.shape)
        self.qe = QuadraticEstimator(self.box, spectra, instrument, estimator, lmin=lmin, lmax=lmax, Lmin=Lmin,
                                     Lmax=Lmax, precision=precision)
        if set(fields_needed(self.qe.names)) - {"Q", "U"}:
            raise ConfigError(f"qe.estimator: {self.qe.label} reads temperature; on masked maps only the "
                              "polarization estimators EE, EB and MV_POL are available")
        self.cinv = CinvFilter(self.box, spectra.lensed, instrument.beam_fwhm_arcmin, self.qe.lmin, self.qe.lmax,
                               cg_tol, cg_maxiter)
        L = self.box.ell()
        self._kappa_of_phi = np.where(self.qe.band, 0.5 * L**2, 0.0)
        self._phi_of_kappa = np.where(self.qe.band, 2.0 / np.where(L > 0, L, 1.0) ** 2, 0.0)

    def embed(self, m: np.ndarray) -> np.ndarray:
        """Maps ``(..., ny, nx)`` placed at the centre of zero maps of the grid ``box``."""
        out = np.zeros(np.shape(m)[:-2] + self.box.shape)
        out[(Ellipsis,) + self.cut] = m
        return out

    def kappa_fourier(self, q: np.ndarray, u: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, int]:
        """Normalised (analytic response) kappa estimate of one map, on the rfft grid of ``box``.

        Parameters
        ----------
        q, u : ndarray, shape ``geom.shape``
            Observed maps, µK.
        weight : ndarray, shape ``geom.shape``
            Inverse noise :math:`M\\, \\mathrm{ivar}_P`, 1/µK².

        Returns
        -------
        kappa : ndarray, complex, shape ``box.fourier_shape()``
        iterations : int
            Conjugate-gradient iterations of the filter.
        """
        f = self.cinv.filter(self.embed(np.stack([q, u])), self.embed(weight))
        phi = self.qe.plan.filtered({"E": f.E[None], "B": f.B[None]})[0]
        return phi * self._kappa_of_phi, f.iterations

    def to_maps(self, kappa: np.ndarray) -> dict[str, np.ndarray]:
        """``kappa`` and ``phi`` maps (``geom.shape``, dimensionless and rad²) of kappa modes on ``box``."""
        maps = to_map(self.box, np.stack([kappa, kappa * self._phi_of_kappa]))
        return {"kappa": maps[0][self.cut], "phi": maps[1][self.cut]}


def effective_noise(pixel_arcmin: float, weights: np.ndarray) -> float:
    """Polarization depth (µK-arcmin) of the mean inverse noise over the observed pixels (``weights > 0``)."""
    w = np.asarray(weights, dtype=float)
    return float(pixel_arcmin / np.sqrt(w[w > 0].mean()))


@dataclass(frozen=True)
class LevelWeights:
    """The weights of the maps of one noise level of a file (:func:`level_weights`).

    Attributes
    ----------
    rows : ndarray of int
        The level's maps.
    mask, ivar : ndarray, shape (len(rows), ny, nx)
        Their masks and inverse noise variances (1/µK², :func:`deepcmb.io.maps.read_weights`).
    first, group : ndarray of int
        The first map of each distinct mask and noise map, and the group of every map
        (:func:`deepcmb.io.maps.weight_groups`).
    instrument : Instrument
        The level's beam, with the polarization noise of the mean inverse noise of the observed pixels
        (:func:`effective_noise`): the isotropic filters' noise.
    """

    rows: np.ndarray
    mask: np.ndarray
    ivar: np.ndarray
    first: np.ndarray
    group: np.ndarray
    instrument: Instrument


def level_weights(source, level: int) -> LevelWeights:
    """Read the masks and noise maps of one noise level of an open file (:func:`deepcmb.io.maps.open_maps`).

    Raises
    ------
    InputError
        If a map has no observed pixel (mask x ivar_p zero everywhere), or as
        :func:`~deepcmb.io.maps.read_weights`.
    """
    rows = np.flatnonzero(source.noise_index == level)
    mask, ivar = read_weights(source, rows)
    blind = np.flatnonzero(~np.any(mask * ivar > 0, axis=(1, 2)))
    if blind.size:
        raise InputError(f"{source.path}: map {rows[blind[0]]} has no observed pixel (mask x ivar_p is zero "
                         f"everywhere; {blind.size} such maps): leave such patches out")
    first, group = weight_groups(mask, ivar)
    inst = source.instruments()[level]
    mean = Instrument(inst.beam_fwhm_arcmin, inst.noise_t_uk_arcmin, effective_noise(source.pixel_arcmin, mask * ivar))
    return LevelWeights(rows, mask, ivar, first, group, mean)


class Simulations:
    """Monte Carlo maps with a given mask and noise map, for the mean field and the response.

    The sky (lensed Q, U and kappa at the fiducial spectra) is simulated on the periodic grid of the
    estimator, convolved with the beam and cut to the map; the noise is drawn per pixel with variance
    :math:`1/\\mathrm{ivar}_P` (zero where it is zero). Simulation ``index`` uses the streams of
    :func:`deepcmb.sample.sample_rng` with root ``seed``.

    Parameters
    ----------
    mqe : MaskedQE
    spectra : CMBSpectra
    instrument : Instrument
        Beam of the maps.
    seed : int
    """

    def __init__(self, mqe: MaskedQE, spectra: CMBSpectra, instrument: Instrument, seed: int):
        self.mqe, self.instrument, self.seed = mqe, instrument, int(seed)
        self._sim = FlatSimulator(mqe.box, spectra, instrument)

    def sky(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Beam-convolved lensed Q, U (µK, shape ``(2,) + box.shape``) and kappa (``box.shape``) of simulation
        ``index`` on the whole periodic grid, before the cut and the noise."""
        s = self._sim.sample(self.seed, index, ("Q_lensed", "U_lensed", "kappa"))
        return convolve_beam(self.mqe.box, np.stack([s["Q_lensed"], s["U_lensed"]]), self.instrument), s["kappa"]

    def draw(self, index: int, ivar: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Observed ``q, u`` (µK) and true ``kappa`` of simulation ``index``, each of shape ``geom.shape``."""
        qu, kappa = self.sky(index)
        qu = qu[(slice(None),) + self.mqe.cut]
        rms = np.where(ivar > 0, 1.0 / np.sqrt(np.where(ivar > 0, ivar, 1.0)), 0.0)
        qu = qu + sample_rng(self.seed, index, "noise").standard_normal(qu.shape) * rms
        return qu[0], qu[1], kappa[self.mqe.cut]


@dataclass(frozen=True)
class MonteCarlo:
    """Mean fields, Monte Carlo response and N0 of a :class:`MaskedQE` for some masks and noise maps.

    Attributes
    ----------
    mean_fields : ndarray, complex, shape (n_masks,) + ``box.fourier_shape()``
        Mean-field kappa modes of each mask and noise map (analytic normalisation).
    edges : ndarray, shape (nbin + 1,)
        L bin edges of the response.
    response : ndarray, shape (nbin,)
        :math:`R^{\\rm MC}_b` (module docstring).
    error : ndarray, shape (nbin,)
        Its standard error.
    applied : ndarray of bool, shape (nbin,)
        Bins where :math:`R^{\\rm MC}_b / \\sigma` reaches the threshold and the estimate is divided by it.
    n0 : ndarray, shape (nbin,)
        Reconstruction noise over the observed region after the correction (sr).
    iterations : ndarray of int, shape (n_sims,)
        Conjugate-gradient iterations of every simulation.
    """

    mean_fields: np.ndarray
    edges: np.ndarray
    response: np.ndarray
    error: np.ndarray
    applied: np.ndarray
    n0: np.ndarray
    iterations: np.ndarray

    def response_grid(self, geom: FlatSkyGeometry) -> np.ndarray:
        """The response the analytically normalised estimate is divided by, on the rfft grid of ``geom``:
        :math:`R^{\\rm MC}_b` in the applied bins, 1 elsewhere."""
        return on_grid(geom, self.edges, np.where(self.applied, self.response, 1.0))

    def correct(self, mqe: MaskedQE, kappa: np.ndarray, group: int) -> dict[str, np.ndarray]:
        """``kappa``, ``phi`` and ``kappa_mean_field`` maps of the estimate ``kappa`` (modes on ``mqe.box``)
        of a map with mask ``group``: mean field subtracted, divided by the response."""
        r = self.response_grid(mqe.box)
        mf = self.mean_fields[group] / r
        out = mqe.to_maps(kappa / r - mf)
        out["kappa_mean_field"] = mqe.to_maps(mf)["kappa"]
        return out


def monte_carlo(mqe: MaskedQE, sims: Simulations, masks: np.ndarray, ivars: np.ndarray, n_mean_field: int,
                n_response: int, edges: np.ndarray, min_snr: float, first_index: int = 0,
                progress: Callable[[int], object] | None = None) -> MonteCarlo:
    """Simulate the mean field of every mask and the response and N0 over all of them.

    Parameters
    ----------
    mqe : MaskedQE
    sims : Simulations
    masks, ivars : ndarray, shape (n_masks, ny, nx)
        The distinct masks (in [0, 1]) and inverse noise variance maps (1/µK²) of the data.
    n_mean_field : int
        Simulations per mean field.
    n_response : int
        Simulations of the response and N0 (simulation ``s`` has mask ``s % n_masks``).
    edges : ndarray
        L bin edges of the response.
    min_snr : float
        The response is applied in the bins where :math:`R^{\\rm MC}_b / \\sigma(R^{\\rm MC}_b)` is at least this.
    first_index : int
        Index of the first simulation (:class:`Simulations`): the response simulations are
        ``first_index + s``, then ``n_mean_field`` simulations per mask.
    progress : callable, optional
        Called with 1 after each simulation (e.g. a progress bar's ``update``).

    Returns
    -------
    MonteCarlo
    """
    n_masks = len(masks)
    iterations = []
    mean_fields = np.empty((n_masks,) + mqe.box.fourier_shape(), dtype=complex)
    for g in range(n_masks):
        start = first_index + n_response + g * n_mean_field
        total = np.zeros(mqe.box.fourier_shape(), dtype=complex)
        for index in range(start, start + n_mean_field):
            q, u, _ = sims.draw(index, ivars[g])
            kappa, its = mqe.kappa_fourier(q, u, masks[g] * ivars[g])
            total += kappa
            iterations.append(its)
            if progress:
                progress(1)
        mean_fields[g] = total / n_mean_field
    estimates, truths = [], []
    for s in range(n_response):
        g = s % n_masks
        q, u, truth = sims.draw(first_index + s, ivars[g])
        kappa, its = mqe.kappa_fourier(q, u, masks[g] * ivars[g])
        estimates.append(kappa - mean_fields[g])
        truths.append(truth)
        iterations.append(its)
        if progress:
            progress(1)
    group = np.arange(n_response) % n_masks
    mask_of = masks[group]
    truths = np.stack(truths)
    raw = np.stack([mqe.to_maps(k)["kappa"] for k in estimates])
    response, error = response_correction(observed_cross(mqe.geom, raw, truths, mask_of, edges),
                                          observed_cross(mqe.geom, truths, truths, mask_of, edges))
    with np.errstate(divide="ignore", invalid="ignore"):
        applied = (response > 0) & (response / error >= min_snr)
    edges = np.asarray(edges, dtype=float)
    r = on_grid(mqe.box, edges, np.where(applied, response, 1.0))
    residual = np.stack([mqe.to_maps(k / r)["kappa"] for k in estimates]) - truths
    n0 = observed_cross(mqe.geom, residual, residual, mask_of, edges).mean(axis=0)
    return MonteCarlo(mean_fields, edges, response, error, applied, n0, np.asarray(iterations))
