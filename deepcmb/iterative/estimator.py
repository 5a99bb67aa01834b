"""The iterative MAP lensing estimator: quasi-Newton steps on the posterior of phi, from the QE.

:class:`MapEstimator` maximises :math:`\\mathcal{J}(\\phi)` of :mod:`deepcmb.iterative.posterior` by
L-BFGS (Nocedal & Wright 2006, Alg. 7.4) whose starting inverse curvature is the isotropic
:math:`(1/C^{\\phi\\phi}_L + 1/N^{(0)}_L)^{-1}`, with :math:`N^{(0)}` the analytic noise of the
minimum-variance polarization QE (EE + EB) on the same band; the first point is that QE's
Wiener-filtered estimate. A step that does not raise :math:`\\mathcal{J}` (or whose Wiener filter does not converge) is halved
(at most a few times). The iterations stop when the gradient, measured in the starting metric, has fallen below
``tol`` times its value at the QE start, or after ``max_iterations``.

On masked maps, maps with a noise map and non-periodic maps (embedded at the centre of a periodic grid
``pad`` times larger per side, unobserved outside the map) the data model takes the pixel weights
:math:`N^{-1} = M\\, {\\rm ivar}_P`, the iterations start from :math:`\\phi = 0` (the QE start assumes
white noise; the first step is its Wiener-filtered form with the simulated mean field removed) and the
gradient's mean field (:mod:`deepcmb.iterative.meanfield`) is subtracted.

References
----------
Carron & Lewis (2017), arXiv:1704.08230, Sec. 3 (L-BFGS from the QE with the isotropic curvature);
Nocedal & Wright (2006), Numerical Optimization, 2nd ed., Sec. 7.2.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..config import resolve
from ..errors import ConfigError, ConvergenceError, InputError
from ..geometry import FlatSkyGeometry, interp_spectrum
from ..qe import QuadraticEstimator
from ..io.maps import weight_groups
from ..sample import Instrument
from ..survey import box_cut, padded_box
from .meanfield import gradient_mean_field
from .operators import PolarizationModel
from .posterior import LensingPosterior
from .settings import ESTIMATOR_SCHEMA

_MAX_HALVINGS = 4
_PROBE = 1e-3


@dataclass(frozen=True)
class MapResult:
    """One map's MAP reconstruction.

    Attributes
    ----------
    phi, kappa : ndarray, shape ``geom.shape``
        The MAP lensing potential (rad²) and convergence :math:`\\kappa = -\\nabla^2\\phi / 2`, modes
        ``Lmin <= L <= Lmax``; a posterior mode, so filtered like a Wiener filter (not unbiased).
    e_delensed : ndarray, shape ``geom.shape``
        Wiener-filtered unlensed E at the MAP potential, µK.
    b_delensed : ndarray, shape ``geom.shape``
        B-mode map of the data minus the lensed, beam-convolved Wiener-filtered E (the lensing B
        template removed), µK; with pixel weights, of that residual set to zero where the weight is.
    iterations : int
        Quasi-Newton steps taken.
    gradient_ratio : float
        Final gradient norm over the norm at the QE start (starting metric).
    converged : bool
        ``gradient_ratio < tol``.
    cg_iterations : int
        Conjugate-gradient iterations in all.
    objective : float
        Final :math:`\\mathcal{J}` minus its value at the start (>= 0).
    """

    phi: np.ndarray
    kappa: np.ndarray
    e_delensed: np.ndarray
    b_delensed: np.ndarray
    iterations: int
    gradient_ratio: float
    converged: bool
    cg_iterations: int
    objective: float


class MapEstimator:
    """Iterative MAP estimator of the lensing potential from flat-sky Q, U maps.

    Parameters
    ----------
    geom : FlatSkyGeometry
        The maps' patch.
    spectra : CMBSpectra
        Fiducial spectra: the unlensed EE is the prior of E, ``clpp`` the prior of phi; the QE start uses
        the lensed spectra.
    instrument : Instrument-like
        ``beam_fwhm_arcmin`` and ``noise_p_uk_arcmin`` (> 0) of the maps.
    settings : mapping, optional
        Over :data:`~deepcmb.iterative.settings.ESTIMATOR_SCHEMA`: the data band ``lmin, lmax`` and output
        band ``Lmin, Lmax`` (default: the QE's, :data:`deepcmb.qe.BAND`), ``lmax_cmb`` (band limit of the
        unlensed E), ``max_iterations`` and ``tol`` (relative gradient) stop the steps, ``cg_tol`` (each
        Wiener filter's relative residual), ``history`` (L-BFGS memory), ``nufft_epsilon``; for
        weighted maps ``pad``, ``mean_field_maps`` and ``mc_seed`` (:meth:`mean_field`).
    nthreads : int
        Threads for the NUFFTs and FFTs.
    periodic : bool
        Whether the maps are periodic; if not, every map is embedded in a periodic grid ``pad`` times larger
        per side (:func:`deepcmb.survey.padded_box`) and weighted (white noise inside, none outside).

    Attributes
    ----------
    box : FlatSkyGeometry
        The periodic grid the operators act on (``geom`` itself for periodic maps).
    """

    def __init__(self, geom: FlatSkyGeometry, spectra, instrument, settings: Mapping | None = None, nthreads: int = 1,
                 periodic: bool = True):
        cfg = resolve(dict(settings or {}), ESTIMATOR_SCHEMA, "map.")
        self.geom, self.settings, self.nthreads, self.periodic = geom, cfg, nthreads, bool(periodic)
        self.box = geom if periodic else padded_box(geom, cfg["pad"])
        self.cut = box_cut(self.box.shape, geom.shape)
        geom = self.box
        instrument = instrument if isinstance(instrument, Instrument) else Instrument(**instrument)
        if instrument.noise_p_uk_arcmin <= 0:
            raise ConfigError("map: the MAP estimator needs noisy maps (noise_p_uk_arcmin > 0)")
        self.instrument = instrument
        self.qe = QuadraticEstimator(geom, spectra, instrument, "MV_POL", lmin=cfg["lmin"], lmax=cfg["lmax"],
                                     Lmin=cfg["Lmin"], Lmax=cfg["Lmax"], nthreads=nthreads)
        self.model = PolarizationModel(geom, spectra.unlensed_cl("EE"), instrument.beam_fwhm_arcmin,
                                       instrument.noise_p_uk_arcmin, self.qe.lmin, self.qe.lmax, cfg["lmax_cmb"],
                                       cfg["nufft_epsilon"], nthreads)
        L = geom.ell()
        lx, ly = geom.lxly()
        inside = (np.abs(lx) < geom.ell_nyquist) & (np.abs(ly) < geom.ell_nyquist)
        self.phi_band = (L > 0) & (L <= cfg["Lmax"]) & inside
        self.clpp_grid = np.where(self.phi_band, interp_spectrum(spectra.clpp, L), 0.0)
        self.phi_band &= self.clpp_grid > 0
        self.output_band = self.phi_band & (L >= cfg["Lmin"])
        info = np.where(self.qe.band, 1.0 / np.where(self.qe.band, self.qe.n0_phi, 1.0), 0.0)
        inv_c = np.divide(1.0, self.clpp_grid, out=np.zeros_like(self.clpp_grid), where=self.phi_band)
        self.curvature = np.where(self.phi_band, inv_c + info, 1.0)
        self.start_filter = np.where(self.phi_band, info / self.curvature, 0.0)
        self._kappa_of_phi = 0.5 * L**2

    def start(self, pol: np.ndarray) -> np.ndarray:
        """QE start: the Wiener-filtered MV_POL estimate's phi modes (rfft grid, rad²)."""
        est = self.qe.estimate({"Q": pol.real, "U": pol.imag})
        return self.box.map2fourier(est["phi"]) * self.start_filter

    def embed(self, m: np.ndarray) -> np.ndarray:
        """A map of shape ``geom.shape`` at the centre of a zero map of the grid ``box``."""
        out = np.zeros(self.box.shape, dtype=np.result_type(m, float))
        out[self.cut] = m
        return out

    def _on_patch(self, name: str, m: np.ndarray) -> np.ndarray:
        m = np.asarray(m, dtype=float)
        if m.shape != self.geom.shape:
            raise InputError(f"map: expected {name} of shape {self.geom.shape}, got {m.shape}")
        return m

    def weight(self, ivar: np.ndarray | None = None, mask: np.ndarray | None = None) -> np.ndarray | None:
        """The inverse noise the data model takes on ``box``, :math:`M\\, {\\rm ivar}_P` (µK⁻² per pixel) embedded;
        None for periodic maps with white noise and no mask.

        Parameters
        ----------
        ivar : ndarray, shape ``geom.shape``, optional
            Inverse noise variance of each of Q and U (µK⁻², zero where unobserved); default the white noise
            of the instrument.
        mask : ndarray, shape ``geom.shape``, optional
            Mask in [0, 1] (an apodised one down-weights the pixels of its taper); default ones.
        """
        if ivar is None and mask is None and self.periodic:
            return None
        w = np.full(self.geom.shape, 1.0 / self.model.sigma2) if ivar is None else self._on_patch("ivar", ivar)
        return self.embed(w if mask is None else w * self._on_patch("mask", mask))

    def mean_field(self, ivar: np.ndarray | None = None, mask: np.ndarray | None = None,
                   first_index: int = 0) -> np.ndarray | None:
        """The gradient's mean field for maps of inverse noise ``ivar`` and ``mask`` (:meth:`weight`), from
        ``mean_field_maps`` simulations with streams ``mc_seed`` starting at ``first_index``
        (:func:`~deepcmb.iterative.meanfield.gradient_mean_field`; the simulated noise is that of ``ivar``);
        None where there is none to subtract (periodic maps with white noise and no mask, or
        ``mean_field_maps = 0``).
        """
        cfg = self.settings
        weight = self.weight(ivar, mask)
        if weight is None or cfg["mean_field_maps"] == 0:
            return None
        self.model.set_noise(weight)
        noise = None if ivar is None else self.embed(self._on_patch("ivar", ivar))
        return gradient_mean_field(self.model, self.clpp_grid, cfg["mean_field_maps"], cfg["mc_seed"], first_index,
                                   cfg["cg_tol"], cfg["cg_max_iterations"], noise_ivar=noise)

    def estimate(self, q: np.ndarray, u: np.ndarray, ivar: np.ndarray | None = None, mask: np.ndarray | None = None,
                 mean_field: np.ndarray | None = None) -> MapResult:
        """MAP reconstruction of one pair of Q, U maps (µK, shape ``geom.shape``).

        Parameters
        ----------
        q, u : ndarray, shape ``geom.shape``
            Observed maps, µK (any value where the weight is zero).
        ivar, mask : ndarray, shape ``geom.shape``, optional
            Inverse noise variance of each of Q and U per pixel (µK⁻², zero where unobserved) and mask; the
            data model then takes the weights :math:`M\\, {\\rm ivar}_P` (:meth:`weight`) and the iterations
            start from phi = 0 (the QE start assumes white noise).
        mean_field : ndarray, optional
            The gradient's mean field for these weights (:meth:`mean_field`), subtracted at every step;
            default none (the joint MAP).
        """
        q, u = np.asarray(q, dtype=float), np.asarray(u, dtype=float)
        if q.shape != self.geom.shape or u.shape != self.geom.shape:
            raise InputError(f"map: expected Q, U maps of shape {self.geom.shape}, got {q.shape}, {u.shape}")
        cfg = self.settings
        weight = self.weight(ivar, mask)
        pol = self.embed(q + 1j * u)
        self.model.set_noise(weight)
        post = LensingPosterior(self.model, pol, self.clpp_grid, cfg["cg_tol"], cfg["cg_max_iterations"],
                                mean_field=mean_field)
        phi = self.start(pol) if weight is None else np.zeros(self.box.fourier_shape(), dtype=complex)
        point = post.evaluate(phi)
        first = point.value
        cg_total = point.cg_iterations
        g0 = self._norm(post, point.gradient)
        memory: deque = deque(maxlen=cfg["history"])
        ratio = 1.0 if g0 > 0 else 0.0
        it = 0
        while ratio >= cfg["tol"] and it < cfg["max_iterations"]:
            direction = self._direction(post, point.gradient, memory)
            step, trial = 1.0, None
            if not memory:  # no curvature learnt yet: a Newton step along the direction, its curvature
                probe = post.evaluate(phi + _PROBE * direction)  # measured by a short finite difference
                cg_total += probe.cg_iterations
                curv = post.inner(direction, point.gradient - probe.gradient) / _PROBE
                if curv > 0:
                    step = min(1.0, post.inner(point.gradient, direction) / curv)
            for _ in range(_MAX_HALVINGS + 1):
                try:
                    trial = post.evaluate(phi + step * direction)
                except ConvergenceError:  # a step so long that the deflection is unlike the data's
                    cg_total += cfg["cg_max_iterations"]
                else:
                    cg_total += trial.cg_iterations
                    if trial.value > point.value:
                        break
                step *= 0.5
            else:
                break  # no ascent along the direction: converged as far as this objective can tell
            s, y = step * direction, point.gradient - trial.gradient
            if post.inner(s, y) > 0:
                memory.append((s, y))
            phi, point = phi + s, trial
            it += 1
            ratio = self._norm(post, point.gradient) / g0
        box, cut = self.box, self.cut
        phi_out = np.where(self.output_band, phi, 0.0)
        residual = point.residual if weight is None else np.where(weight > 0, point.residual, 0.0)
        b_modes = box.qu2eb(residual.real, residual.imag)[1]
        return MapResult(
            phi=box.fourier2map(phi_out)[cut], kappa=box.fourier2map(phi_out * self._kappa_of_phi)[cut],
            e_delensed=point.e_wf[cut], b_delensed=box.fourier2map(b_modes)[cut], iterations=it,
            gradient_ratio=float(ratio),
            converged=bool(ratio < cfg["tol"]), cg_iterations=cg_total, objective=float(point.value - first))

    def _norm(self, post: LensingPosterior, grad: np.ndarray) -> float:
        return float(np.sqrt(max(post.inner(grad, grad / self.curvature), 0.0)))

    def _direction(self, post: LensingPosterior, grad: np.ndarray, memory: deque) -> np.ndarray:
        """L-BFGS two-loop recursion: the approximate inverse Hessian (of -J) times the gradient of J."""
        q = grad.copy()
        alphas = []
        for s, y in reversed(memory):
            rho = 1.0 / post.inner(y, s)
            a = rho * post.inner(s, q)
            q = q - a * y
            alphas.append((rho, a))
        r = q / self.curvature
        if memory:  # the scaling of the starting curvature learnt from the last step (Nocedal & Wright Eq. 7.20)
            s, y = memory[-1]
            r = r * post.inner(s, y) / post.inner(y, y / self.curvature)
        for (s, y), (rho, a) in zip(memory, reversed(alphas)):
            b = rho * post.inner(y, r)
            r = r + (a - b) * s
        return np.where(self.phi_band, r, 0.0)


def reconstruct_map(geom: FlatSkyGeometry, maps: Mapping[str, np.ndarray], spectra, instrument,
                    settings: Mapping | None = None, nthreads: int = 1, periodic: bool = True) -> dict:
    """MAP-reconstruct the lensing of flat-sky polarization maps.

    Parameters
    ----------
    geom : FlatSkyGeometry
        The maps' patch.
    maps : mapping
        ``'Q', 'U'`` -> observed maps in µK, each ``(ny, nx)`` or ``(N, ny, nx)``; optionally ``'mask'`` (in
        [0, 1]) and ``'ivar_p'`` (inverse noise variance of each of Q and U, 1/µK²) of the same shape, as in
        an observation file. With either, or with ``periodic=False``, the data model takes the pixel weights
        ``mask * ivar_p`` (``ivar_p`` defaults to the instrument's white noise) and a gradient mean field is
        simulated for each distinct weight map (:meth:`MapEstimator.mean_field`).
    spectra : CMBSpectra
        Fiducial spectra (priors of E and phi; the QE start).
    instrument : Instrument-like
        Beam FWHM (arcmin) and polarization noise (µK-arcmin, > 0).
    settings : mapping, optional
        Over :data:`~deepcmb.iterative.settings.ESTIMATOR_SCHEMA` (see :class:`MapEstimator`).
    nthreads : int
        Threads for the NUFFTs and FFTs.
    periodic : bool
        Whether the maps are periodic (:class:`MapEstimator`).

    Returns
    -------
    dict
        ``kappa``, ``phi``, ``E_delensed``, ``B_delensed``: maps of the input's shape (see :class:`MapResult`);
        ``iterations``, ``converged``, ``gradient_ratio``, ``cg_iterations``: per map (scalars for one map).

    Examples
    --------
    >>> out = reconstruct_map(geom, {"Q": q, "U": u}, spectra, Instrument(1.0, 0.71, 1.0))
    >>> out["kappa"].shape == q.shape
    True
    """
    if "Q" not in maps or "U" not in maps:
        raise InputError(f"map: needs maps 'Q' and 'U', got {', '.join(maps) or 'none'}")
    q, u = np.asarray(maps["Q"], dtype=float), np.asarray(maps["U"], dtype=float)
    single = q.ndim == 2
    q, u = (q[None], u[None]) if single else (q, u)
    if q.shape != u.shape or q.ndim != 3:
        raise InputError(f"map: Q and U must be (ny, nx) or (N, ny, nx) of one shape, got {q.shape}, {u.shape}")
    est = MapEstimator(geom, spectra, instrument, settings, nthreads=nthreads, periodic=periodic)
    if "mask" in maps or "ivar_p" in maps or not periodic:
        mask = np.broadcast_to(np.asarray(maps.get("mask", 1.0), dtype=float), q.shape)
        ivar = np.broadcast_to(np.asarray(maps.get("ivar_p", 1.0 / est.model.sigma2), dtype=float), q.shape)
        first, group = weight_groups(mask, ivar)
        mean_fields = [est.mean_field(ivar[i], mask[i], first_index=k * est.settings["mean_field_maps"])
                       for k, i in enumerate(first)]
        results = [est.estimate(q[i], u[i], ivar[i], mask[i], mean_fields[group[i]]) for i in range(len(q))]
    else:
        results = [est.estimate(qi, ui) for qi, ui in zip(q, u)]
    maps, stats = stack_results(results)
    out = {**maps, **stats}
    return {k: v[0] for k, v in out.items()} if single else out


MAPS = {"kappa": "kappa", "phi": "phi", "E_delensed": "e_delensed", "B_delensed": "b_delensed"}
"""Map written -> attribute of :class:`MapResult`."""

STATS = {"iterations": np.int32, "converged": bool, "gradient_ratio": np.float64, "cg_iterations": np.int64}
"""Per-map statistic of :class:`MapResult` -> its dtype."""


def stack_results(results: list[MapResult]) -> tuple[dict, dict]:
    """The maps (name of :data:`MAPS` -> ``(k, ny, nx)``) and statistics (:data:`STATS` -> ``(k,)``) of
    ``k`` results."""
    maps = {name: np.stack([getattr(r, attr) for r in results]) for name, attr in MAPS.items()}
    stats = {name: np.array([getattr(r, name) for r in results], dtype=t) for name, t in STATS.items()}
    return maps, stats
