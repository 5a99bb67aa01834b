"""Flat-sky lensing reconstruction with the quadratic estimators: setup once, estimate many maps.

:class:`QuadraticEstimator` builds the filters, the normalisation of each declared estimator, the
full Gaussian N0 covariance between them and the minimum-variance (MV) weights; calling
:meth:`QuadraticEstimator.estimate` on maps then costs a few dozen FFTs. :func:`reconstruct_qe` is
the one-call form used by ``deepcmb reconstruct --method qe``.

Minimum-variance combination (Hu & Okamoto 2002, Eqs. 22-23), per Fourier mode :math:`\\mathbf{L}`:

.. math:: \\hat\\phi^{\\rm MV} = \\sum_\\alpha w_\\alpha \\hat\\phi_\\alpha, \\qquad
          w_\\alpha = \\frac{\\sum_\\beta (\\mathbf{N}^{-1})_{\\alpha\\beta}}{\\sum_{\\beta\\gamma}
          (\\mathbf{N}^{-1})_{\\beta\\gamma}}, \\qquad N^{(0),\\rm MV} = \\Big[\\sum_{\\alpha\\beta}
          (\\mathbf{N}^{-1})_{\\alpha\\beta}\\Big]^{-1},

with :math:`\\mathbf{N}` the normalised N0 covariance of the individual estimators.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError, InputError
from ..geometry import interp_spectrum
from ..binning import bin_centres, bin_theory, linear_bins
from . import engine
from .apodization import check_window, window_moment
from .engine import EstimatePlan, FourierFactors, to_fourier, to_map
from .estimators import fields_needed, parse_estimator
from .filtering import as_map_stack, grid_spectra, inverse_variance_filters

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from ..cosmology import CMBSpectra
    from ..geometry import FlatSkyGeometry
    from ..sample import Instrument


BAND = {"lmin": 300.0, "lmax": 3500.0, "Lmin": 20.0, "Lmax": 3500.0}
"""Default multipole band of every quadratic estimator (the choice of ResUNet-CMB): CMB multipoles
``lmin <= l <= lmax`` in the filters, lensing multipoles ``Lmin <= L <= Lmax`` in the output."""

EMBEDDING_PAD = 2.0
"""Default side of the periodic grid a non-periodic map is embedded in (unobserved outside the map) over the
map's side, for the filters of the QE and of MAP on masked maps."""


def _lensed(spectra):
    try:
        return np.asarray(spectra.lensed, dtype=float), np.asarray(spectra.clpp, dtype=float)
    except AttributeError:
        raise ConfigError("spectra: expected a CMBSpectra (with .lensed and .clpp)") from None


class QuadraticEstimator:
    """A flat-sky lensing quadratic estimator (single or minimum-variance), set up for one geometry.

    Parameters
    ----------
    geom : FlatSkyGeometry
        Map geometry (e.g. 128 x 128 pixels of 2.34375 arcmin).
    spectra : CMBSpectra
        Fiducial spectra: ``.lensed`` (4, lmax + 1) ``TT, EE, BB, TE`` in µK² give the weights and
        the signal part of the filters; ``.gradient`` the response (see ``response``); ``.clpp`` is
        the lensing power of the Wiener filter.
    instrument : Instrument-like
        ``beam_fwhm_arcmin`` (Gaussian FWHM, arcmin) and ``noise_t_uk_arcmin``,
        ``noise_p_uk_arcmin`` (white-noise depths, µK-arcmin) of the maps; the maps are
        beam-deconvolved by the filters.
    estimator : str or sequence of str
        ``'TT', 'TE', 'EE', 'EB', 'TB'``, ``'MV'`` (all five, temperature + polarization) or
        ``'MV_POL'`` / ``'pol'`` (EE + EB); or a list of names to combine. Case-insensitive.
    lmin, lmax : float
        CMB multipole range of the filters (default :data:`BAND`: 300 <= l <= 3500, as in ResUNet-CMB);
        ``lmax`` must be below the grid's Nyquist multipole.
    Lmin, Lmax : float
        Lensing multipole range of the output (default :data:`BAND`: 20 <= L <= 3500); modes outside are
        set to zero (and N0 to inf).
    response : {'gradient', 'lensed'} or ndarray, shape (4, lmax + 1)
        Spectra in the response (normalisation): the lensed gradient spectra (``spectra.gradient``,
        from the same CAMB run; default), the lensed spectra (Hu & Okamoto's form; the TT
        normalisation is then ~2% high for CMB multipoles to 3500, see
        :class:`~deepcmb.cosmology.CMBSpectra`), or explicit spectra.
        The weights always use the lensed spectra (or ``weight_cls``).
    mv_covariance : {'full', 'diagonal'}
        MV weights from the full N0 covariance between estimators (default), or from its diagonal
        only; ``'diagonal'`` neglects the cross-estimator noise, so its reported N0 is approximate
        (a warning says so and :attr:`mv_covariance` records it).
    weight_cls : ndarray, shape (4, lmax + 1), optional
        Spectra used in the weights instead of ``spectra.lensed``.
    total_cls : ndarray, shape (4, lmax + 1), optional
        Signal spectra of the filters' total power instead of ``spectra.lensed``.
    nthreads : int
        Threads for the FFTs.
    precision : {'double', 'single'}
        Arithmetic of the map estimate (setup, normalisation and N0 are always double); single
        precision is about twice as fast, with relative errors ~1e-6.

    Attributes
    ----------
    label : str
        Canonical estimator label; :attr:`names` the individual estimators it combines.
    responses : ndarray, shape (n, ny, nx//2+1)
        Normalisation kernels :math:`R_\\alpha(\\mathbf{L})` of the individual estimators.
    n0_covariance : ndarray, shape (n, n, ny, nx//2+1)
        Normalised Gaussian N0 covariance :math:`N^{(0)}_{\\alpha\\beta}(\\mathbf{L})` of the
        individual phi estimates (sr); inf outside the output band.
    weights : ndarray, shape (n, ny, nx//2+1)
        MV weights (sum to 1 in the output band).
    n0_phi, n0_kappa : ndarray, shape (ny, nx//2+1)
        N0 of the (combined) phi and kappa estimates on the rfft grid (sr); inf outside the band.
    band : ndarray of bool
        Output modes ``Lmin <= |L| <= Lmax`` with a positive response.

    References
    ----------
    Hu & Okamoto (2002), ApJ 574, 566.
    """

    def __init__(self, geom, spectra, instrument, estimator="EB", lmin=BAND["lmin"], lmax=BAND["lmax"],
                 Lmin=BAND["Lmin"], Lmax=BAND["Lmax"], response="gradient", mv_covariance="full", weight_cls=None, total_cls=None, nthreads=1,
                 precision="double"):
        self.geom = geom
        self.label, self.names = parse_estimator(estimator)
        lensed, clpp = _lensed(spectra)
        if mv_covariance not in ("full", "diagonal"):
            raise ConfigError(f"qe.mv_covariance: expected 'full' or 'diagonal', got {mv_covariance!r}")
        try:
            Lmin, Lmax = float(Lmin), float(Lmax)
        except (TypeError, ValueError):
            raise ConfigError(f"qe.Lmin/qe.Lmax: expected numbers, got {Lmin!r}, {Lmax!r}") from None
        if not (0 <= Lmin < Lmax):
            raise ConfigError(f"qe.Lmin/qe.Lmax: need 0 <= Lmin < Lmax, got {Lmin:g}, {Lmax:g}")
        self.Lmin, self.Lmax = Lmin, Lmax
        self.filters = inverse_variance_filters(geom, lensed, instrument, lmin, lmax, total_cls=total_cls)
        self.lmin, self.lmax = self.filters.lmin, self.filters.lmax
        if isinstance(response, str):
            if response == "gradient":
                response_cls = np.asarray(spectra.gradient, dtype=float)
            elif response == "lensed":
                response_cls = lensed
            else:
                raise ConfigError(f"qe.response: expected 'gradient', 'lensed' or an array, got {response!r}")
            self.response_kind = response
        else:
            response_cls, self.response_kind = np.asarray(response, dtype=float), "custom"
        wcls = grid_spectra(geom, lensed if weight_cls is None else weight_cls)
        rcls = grid_spectra(geom, response_cls)
        self.factors = FourierFactors(geom, self.filters, wcls, rcls, nthreads=nthreads)
        self.responses = np.stack([engine.response(self.factors, n) for n in self.names])

        L = geom.ell()
        lx, ly = geom.lxly()
        inside = (np.abs(lx) < geom.ell_nyquist) & (np.abs(ly) < geom.ell_nyquist)  # no Nyquist row/column
        self.band = (L >= Lmin) & (L <= Lmax) & (L > 0) & inside & np.all(self.responses > 0, axis=0)

        n = len(self.names)
        if mv_covariance == "full" or n == 1:
            cov = engine.noise_covariance(self.factors, self.names)
        else:
            cov = np.zeros((n, n) + geom.fourier_shape())
            for i, name in enumerate(self.names):
                cov[i, i] = engine.noise_covariance(self.factors, (name,))[0, 0]
            warnings.warn(f"qe: MV weights of {self.label} use the diagonal of the N0 covariance only; "
                          "cross-estimator noise is neglected and the reported N0 is approximate",
                          stacklevel=2)
        self.mv_covariance = "full" if (mv_covariance == "full" or n == 1) else \
            "diagonal (cross-estimator N0 neglected; reported N0 approximate)"
        resp = np.where(self.band, self.responses, 1.0)
        n0cov = cov / (resp[:, None] * resp[None, :])
        self.n0_covariance = np.where(self.band, n0cov, np.inf)

        weights = np.zeros((n,) + geom.fourier_shape())
        n0 = np.full(geom.fourier_shape(), np.inf)
        b = self.band
        mats = np.moveaxis(n0cov[:, :, b], -1, 0)  # (nmodes, n, n)
        inv1 = np.linalg.solve(mats, np.ones((mats.shape[0], n, 1)))[..., 0]  # N^-1 1
        norm = inv1.sum(axis=-1)
        weights[:, b] = (inv1 / norm[:, None]).T
        n0[b] = 1.0 / norm
        self.weights, self.n0_phi = weights, n0
        self.n0_kappa = np.where(b, (0.25 * L**4) * np.where(b, n0, 0.0), np.inf)

        lx, ly = geom.lxly()
        kern = np.zeros((n, 2) + geom.fourier_shape(), dtype=complex)
        for a in range(n):
            scale = np.where(b, weights[a] / resp[a], 0.0)
            kern[a, 0] = -1j * lx * scale
            kern[a, 1] = -1j * ly * scale
        self.plan = EstimatePlan(self.factors, self.filters, self.names, kern, precision=precision)
        self.clkk_grid = 0.25 * L**4 * interp_spectrum(clpp, L)
        self._kappa_of_phi = 0.5 * L**2
        with np.errstate(divide="ignore"):
            self._phi_of_kappa = np.where(L > 0, 2.0 / np.where(L > 0, L, 1.0) ** 2, 0.0)
        self.fields = fields_needed(self.names)

    # -- noise ------------------------------------------------------------------------------------
    def wiener_filter(self) -> np.ndarray:
        """Wiener filter :math:`C^{\\kappa\\kappa}_L / (C^{\\kappa\\kappa}_L + N^{(0)}_L)` on the rfft grid.

        :math:`C^{\\kappa\\kappa}_L = L^4 C^{\\phi\\phi}_L / 4` (flat-sky convention); zero outside the band.
        """
        with np.errstate(invalid="ignore"):
            return np.where(self.band, self.clkk_grid / (self.clkk_grid + np.where(self.band, self.n0_kappa, 1.0)), 0.0)

    def n0_binned(self, edges: ArrayLike, kind: str = "kappa") -> np.ndarray:
        """N0 averaged over the Fourier modes of each bin (the expectation of a binned auto-spectrum).

        Parameters
        ----------
        edges : array_like
            Bin edges in L (inside ``[Lmin, Lmax]``, else the bins contain inf).
        kind : {'kappa', 'phi'}

        Returns
        -------
        ndarray, shape (nbin,)
            Binned :math:`N^{(0)}` (sr).
        """
        n0 = self.n0_kappa if kind == "kappa" else self.n0_phi
        return bin_theory(self.geom, n0, np.asarray(edges, dtype=float))

    # -- estimates --------------------------------------------------------------------------------
    def _fourier_inputs(self, maps, window, tag="a"):
        stack, single = as_map_stack(self.geom, maps, self.fields)
        if window is not None:
            w = check_window(self.geom, window)
            stack = {k: v * w for k, v in stack.items()}
        work = self.plan._work
        tqu = [to_fourier(self.geom, stack[k], self.factors.nthreads, work=work, name=tag + k) if k in stack else None
               for k in ("T", "Q", "U")]
        return tqu, single

    def phi_fourier(self, maps: Mapping[str, ArrayLike], maps2: Mapping[str, ArrayLike] | None = None,
                    window: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
        """Normalised (combined) phi estimate in Fourier space.

        Parameters
        ----------
        maps : dict
            ``'T', 'Q', 'U'`` -> observed maps (µK), ``(ny, nx)`` or ``(N, ny, nx)``; only the maps
            the estimator reads are required.
        maps2 : dict, optional
            A second data set of the same shape: returns the bilinear estimate
            :math:`\\hat\\phi[a, b]` with first legs from ``maps`` and second legs from ``maps2``
            (for Monte-Carlo N1 and realization-dependent N0; :math:`\\hat\\phi[a, a]` is the
            ordinary estimate).
        window : ndarray, shape (ny, nx), optional
            Apodisation window multiplied into the maps first.

        Returns
        -------
        ndarray, complex, shape (N, ny, nx//2+1)
            :math:`\\hat\\phi(\\mathbf{L})` in the convention of :mod:`deepcmb.geometry`.
        single : bool
            True if the inputs were single maps.
        """
        tqu, single = self._fourier_inputs(maps, window)
        if maps2 is None:
            return self.plan(tqu).copy(), single
        tqu2, _ = self._fourier_inputs(maps2, window, tag="b")
        if tqu2[0 if tqu2[0] is not None else 1].shape != tqu[0 if tqu[0] is not None else 1].shape:
            raise InputError("maps2: shapes differ from maps")
        return self.plan(tqu, tqu2).copy(), single

    def estimate(self, maps: Mapping[str, ArrayLike], window: np.ndarray | None = None,
                 mean_field: np.ndarray | None = None, wiener: bool = False, chunk: int = 32) -> dict[str, np.ndarray]:
        """Reconstruct kappa and phi maps.

        Parameters
        ----------
        maps : dict
            ``'T', 'Q', 'U'`` -> observed (lensed, beam-convolved, noisy) maps in µK, each
            ``(ny, nx)`` or ``(N, ny, nx)``.
        window : ndarray, shape (ny, nx), optional
            Apodisation window (non-periodic patches); the estimate then approximates
            :math:`W^2 \\kappa` (see :mod:`deepcmb.qe.apodization`).
        mean_field : ndarray, shape (ny, nx), optional
            Mean-field kappa map (from :meth:`mean_field`, same window) subtracted before any Wiener
            filtering.
        wiener : bool
            Multiply by :meth:`wiener_filter` (output is then Wiener-like, not unbiased).
        chunk : int
            Maps processed at once (bounds memory).

        Returns
        -------
        dict
            ``'kappa'`` (dimensionless) and ``'phi'`` (rad²) maps of the input's shape.
        """
        tqu, single = self._fourier_inputs(maps, window)
        nmaps = next(f for f in tqu if f is not None).shape[0]
        mf = None
        if mean_field is not None:
            mf = np.asarray(mean_field, dtype=float)
            if mf.shape != self.geom.shape or not np.all(np.isfinite(mf)):
                raise InputError(f"mean_field: expected a finite map of shape {self.geom.shape}, got {mf.shape}")
            mf = self.factors.to_fourier(mf) * self.band
        filt = self.wiener_filter() if wiener else None
        kappa = np.empty((nmaps,) + self.geom.shape)
        phi = np.empty((nmaps,) + self.geom.shape)
        for s in range(0, nmaps, int(chunk)):
            sl = slice(s, s + int(chunk))
            phif = self.plan([None if f is None else f[sl] for f in tqu])
            kp = engine._buffer(self.plan._work, "kp", (2,) + phif.shape, phif.dtype)
            kf = np.multiply(phif, self._kappa_of_phi, out=kp[0])
            if mf is not None:
                kf -= mf
            if filt is not None:
                kf *= filt
            np.multiply(kf, self._phi_of_kappa, out=kp[1])
            out = to_map(self.geom, kp, self.factors.nthreads, work=self.plan._work, name="out", overwrite=True)
            kappa[sl], phi[sl] = out[0], out[1]
        if single:
            kappa, phi = kappa[0], phi[0]
        return {"kappa": kappa, "phi": phi}

    def mean_field(self, maps: Mapping[str, ArrayLike], window: np.ndarray | None = None) -> np.ndarray:
        """Mean-field kappa map: the average unfiltered estimate over simulations.

        Parameters
        ----------
        maps : dict
            Simulated ``'T', 'Q', 'U'`` maps ``(N, ny, nx)`` processed exactly like the data (same
            patch cut, same window), independent of the data being reconstructed.
        window : ndarray, optional
            The same window as used for the data.

        Returns
        -------
        ndarray, shape (ny, nx)
        """
        kappa = self.estimate(maps, window=window)["kappa"]
        return kappa if kappa.ndim == 2 else kappa.mean(axis=0)


def reconstruct_qe(geom: FlatSkyGeometry, maps: Mapping[str, ArrayLike], spectra: CMBSpectra,
                   instrument: Instrument | dict, estimator: str | Sequence[str] = "EB", lmin: float = BAND["lmin"],
                   lmax: float = BAND["lmax"], Lmin: float = BAND["Lmin"], Lmax: float = BAND["Lmax"],
                   wiener: bool = False, window: np.ndarray | None = None, mean_field: np.ndarray | None = None,
                   edges: ArrayLike | None = None, response: str | np.ndarray = "gradient", mv_covariance: str = "full",
                   nthreads: int = 1) -> dict:
    """Reconstruct the lensing convergence of flat-sky maps with a quadratic estimator.

    Parameters
    ----------
    geom : FlatSkyGeometry
        Geometry of the maps.
    maps : dict
        ``'T', 'Q', 'U'`` -> observed (lensed, beam-convolved, noisy) maps in µK, each ``(ny, nx)``
        or ``(N, ny, nx)``; only those the estimator reads are required (Q, U for EE/EB/MV_POL).
    spectra : CMBSpectra
        Fiducial spectra (lensed spectra for weights and filters; C^pp for the Wiener filter).
    instrument : Instrument-like
        Beam FWHM (arcmin) and white-noise depths (µK-arcmin) of the maps.
    estimator : str or sequence of str
        ``'TT', 'TE', 'EE', 'EB', 'TB', 'MV', 'MV_POL'`` (see :class:`QuadraticEstimator`).
    lmin, lmax : float
        CMB multipoles used (default :data:`BAND`).
    Lmin, Lmax : float
        Output lensing multipoles (default :data:`BAND`); other modes are zeroed.
    wiener : bool
        Return the Wiener-filtered kappa :math:`C/(C + N^{(0)})\\,\\hat\\kappa` instead of the unbiased one.
    window : ndarray, shape (ny, nx), optional
        Apodisation window for non-periodic patches.
    mean_field : ndarray, shape (ny, nx), optional
        Mean-field kappa map to subtract (see :meth:`QuadraticEstimator.mean_field`).
    edges : array_like, optional
        Bin edges of the returned N0 (default: width ``2 * geom.ell_fundamental`` from ``Lmin``
        to ``Lmax``).
    response : {'gradient', 'lensed'} or ndarray
        Spectra of the normalisation (see :class:`QuadraticEstimator`).
    mv_covariance : {'full', 'diagonal'}
        How MV weights treat the cross-estimator N0 (see :class:`QuadraticEstimator`).
    nthreads : int
        FFT threads.

    Returns
    -------
    dict
        ``kappa``, ``phi``: maps of the input's shape (dimensionless, rad²);
        ``n0``: binned N0 of the unfiltered kappa estimate (sr), shape (nbin,), at ``L`` (mode-weighted
        bin centres) with ``edges``; ``n0_kappa_2d``: N0 on the rfft grid;
        ``estimator``, ``estimators``, ``mv_covariance``, ``wiener``, ``lmin``, ``lmax``, ``Lmin``,
        ``Lmax``: what was done; with a window also ``w2``, ``w4`` (its moments, to correct spectra).

    Examples
    --------
    >>> out = reconstruct_qe(geom, {"Q": q, "U": u}, spectra, Instrument(1.0, 0.71, 1.0), "EB")
    >>> out["kappa"].shape == q.shape
    True
    """
    qe = QuadraticEstimator(geom, spectra, instrument, estimator=estimator, lmin=lmin, lmax=lmax, Lmin=Lmin,
                            Lmax=Lmax, response=response, mv_covariance=mv_covariance, nthreads=nthreads)
    est = qe.estimate(maps, window=window, mean_field=mean_field, wiener=wiener)
    if edges is None:
        edges = linear_bins(qe.Lmin, qe.Lmax, 2.0 * geom.ell_fundamental)
    edges = np.asarray(edges, dtype=float)
    out = {
        "kappa": est["kappa"], "phi": est["phi"],
        "n0": qe.n0_binned(edges), "L": bin_centres(geom, edges), "edges": edges, "n0_kappa_2d": qe.n0_kappa,
        "estimator": qe.label, "estimators": qe.names, "mv_covariance": qe.mv_covariance, "wiener": bool(wiener),
        "response": qe.response_kind,
        "lmin": qe.lmin, "lmax": qe.lmax, "Lmin": qe.Lmin, "Lmax": qe.Lmax,
    }
    if window is not None:
        out["w2"], out["w4"] = window_moment(window, 2), window_moment(window, 4)
    return out
