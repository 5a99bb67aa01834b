"""The linear operators of the flat-sky polarization data model, and their adjoints.

Data model (periodic patch, white noise):

.. math:: d = \\mathcal{B}\\, \\mathcal{L}_\\phi\\, \\mathcal{S}\\, E + n, \\qquad
          \\langle n n^\\dagger \\rangle = \\sigma^2 \\mathbb{1},

with :math:`d = Q + iU` the observed Stokes maps (µK, one complex number per pixel), :math:`E` the
unlensed E-mode map (µK, real, band-limited; the unlensed B modes are zero),
:math:`\\mathcal{S}` the spin-2 rotation of the modes :math:`(Q + iU)(\\mathbf{l}) = E(\\mathbf{l})\\,
e^{2i\\varphi_\\mathbf{l}}` (Hu & Okamoto 2002), :math:`\\mathcal{L}_\\phi` lensing, the evaluation of the
band-limited Fourier series of :math:`Q + iU` at the deflected positions
:math:`\\mathbf{x} + \\nabla\\phi(\\mathbf{x})` (a type-2 non-uniform FFT, exactly what the simulator does),
:math:`\\mathcal{B}` the beam (a convolution) and :math:`\\sigma = \\Delta_P / \\Delta_{\\rm pix}` the
noise per pixel. Only data modes :math:`l_{\\min} \\le |\\mathbf{l}| \\le l_{\\max}` are used: the inverse
noise is :math:`N^{-1} = \\mathcal{P}_{\\rm data} / \\sigma^2` with :math:`\\mathcal{P}_{\\rm data}` the
projection on that band (infinite noise outside it); with a map of inverse noise variance
:math:`w(\\mathbf{x})` (zero where masked) it is :math:`N^{-1} = \\mathcal{P}_{\\rm data}\\, w\\,
\\mathcal{P}_{\\rm data}`, no longer diagonal in Fourier space.

Vectors are real maps with the plain pixel-sum inner product :math:`\\langle a, b\\rangle =
\\sum_\\mathbf{x} a(\\mathbf{x}) b(\\mathbf{x})` (complex maps: :math:`{\\rm Re} \\sum \\bar a b`), so every
adjoint below is the transpose of the operator as a real matrix; the tests check
:math:`\\langle A x, y\\rangle = \\langle x, A^\\dagger y\\rangle`. The transpose of the type-2 NUFFT is a
type-1 NUFFT with the same points (ducc0 plans both with one set of coordinates).

References
----------
Carron & Lewis (2017), PRD 96, 063510 (arXiv:1704.08230), Sec. 2 and App. A; Millea, Anderes & Wandelt
(2019), PRD 100, 023509 (arXiv:1708.06753); Reinecke et al. (2023), A&A 672, A87 (ducc0 NUFFT).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import ducc0
import numpy as np

from ..flatsky import deflection, gaussian_beam
from ..errors import InputError
from ..geometry import interp_spectrum

if TYPE_CHECKING:
    from ..geometry import FlatSkyGeometry


def pixel_inner(a: np.ndarray, b: np.ndarray) -> float:
    """:math:`{\\rm Re} \\sum \\bar a\\, b` of two real or complex arrays, without the threads of BLAS (which
    ``numpy.vdot`` uses, and which cost far more than they save on maps of this size when another process
    shares the cores)."""
    if np.iscomplexobj(a) or np.iscomplexobj(b):
        return float(np.sum(a.real * b.real) + np.sum(a.imag * b.imag))
    return float(np.sum(a * b))


class Lensing:
    """Lensing by one deflection field as a pair of planned NUFFTs.

    Parameters
    ----------
    geom : FlatSkyGeometry
    phi_fourier : ndarray, complex, shape ``geom.fourier_shape()``
        The lensing potential's modes (rfft grid, the convention of :mod:`deepcmb.geometry`), rad².
    epsilon : float
        Relative accuracy of the NUFFTs (double precision: > 2e-13).
    nthreads : int
        Threads for ducc0.
    """

    def __init__(self, geom: FlatSkyGeometry, phi_fourier: np.ndarray, epsilon: float, nthreads: int = 1):
        self.geom = geom
        dy, dx = deflection(geom, phi_fourier)
        y, x = geom.pixel_positions()
        coord = np.stack([(y + dy).ravel(), (x + dx).ravel()], axis=-1)
        self._plan = ducc0.nufft.plan(nu2u=False, coord=coord, grid_shape=geom.shape, epsilon=epsilon,
                                      nthreads=nthreads, periodicity=list(geom.extent_rad), fft_order=True)
        self._n = int(np.prod(geom.shape))

    def forward(self, grid: np.ndarray) -> np.ndarray:
        """Evaluate Fourier series at the deflected pixels.

        Parameters
        ----------
        grid : ndarray, complex, shape (..., ny, nx)
            Coefficients in ``numpy.fft.fft2`` layout of fields ``f(x) = sum_k grid[k] exp(i k.x)``.

        Returns
        -------
        ndarray, complex, shape (..., ny, nx)
            ``f(x + grad phi(x))``.
        """
        lead = grid.shape[:-2]
        g = np.ascontiguousarray(grid, dtype=np.complex128).reshape((-1,) + self.geom.shape)
        out = self._plan.u2nu(grid=g if lead else g[0], forward=False)
        return out.reshape(lead + self.geom.shape)

    def adjoint(self, values: np.ndarray) -> np.ndarray:
        """Transpose of :meth:`forward`: ``grid[k] = sum_x values(x) exp(-i k.(x + grad phi(x)))``."""
        lead = values.shape[:-2]
        v = np.ascontiguousarray(values, dtype=np.complex128).reshape((-1, self._n))
        out = self._plan.nu2u(points=v if lead else v[0], forward=True)
        return out.reshape(lead + self.geom.shape)


def hermitian_part(grid: np.ndarray) -> np.ndarray:
    """Fourier coefficients (fft2 layout) of the real part of the field: ``(X(k) + conj X(-k)) / 2``."""
    mirrored = np.roll(np.flip(grid, axis=(-2, -1)), 1, axis=(-2, -1))
    return 0.5 * (grid + np.conj(mirrored))


class PolarizationModel:
    """Prior, instrument and lensing operators of polarization data at a fixed lensing potential.

    The unknown is the unlensed E map, held as its Fourier-series coefficients ``e`` (fft2 layout,
    ``E(x) = sum_k e_k exp(i k.x)``, Hermitian, zero outside its band), so that the operators need
    no transform of their own besides the NUFFTs and the noise filter. In that representation the
    pixel inner product is ``N_pix Re sum conj(a) b``, and the operators below are adjoint in it.

    Parameters
    ----------
    geom : FlatSkyGeometry
        Periodic patch.
    cl_ee : ndarray, shape (lmax + 1,)
        Unlensed E-mode spectrum, µK² (the prior of ``E``).
    beam_fwhm_arcmin : float
        Gaussian beam FWHM (0: none).
    noise_p_uk_arcmin : float
        White polarization noise, µK-arcmin (per Stokes map); must be positive.
    lmin, lmax : float
        CMB multipoles of the data used.
    lmax_cmb : float, optional
        Band limit of the unlensed E (default: the grid's Nyquist multipole, as simulated).
    epsilon : float
        NUFFT accuracy.
    nthreads : int
        Threads for ducc0.
    ivar : ndarray, shape ``geom.shape``, optional
        Inverse noise variance of each of Q and U per pixel (µK⁻², zero where masked), instead of the
        white noise of ``noise_p_uk_arcmin`` (see :meth:`set_noise`).
    """

    def __init__(self, geom: FlatSkyGeometry, cl_ee: np.ndarray, beam_fwhm_arcmin: float, noise_p_uk_arcmin: float,
                 lmin: float, lmax: float, lmax_cmb: float | None, epsilon: float, nthreads: int = 1,
                 ivar: np.ndarray | None = None):
        self.geom, self.epsilon, self.nthreads = geom, epsilon, nthreads
        self.n_pix = int(np.prod(geom.shape))
        self.sigma2 = (noise_p_uk_arcmin / geom.pixel_arcmin) ** 2
        ell = geom.ell(real=False)
        lmax_cmb = geom.ell_nyquist if lmax_cmb is None else min(lmax_cmb, geom.ell_nyquist)
        cl = interp_spectrum(cl_ee, ell)
        self.e_band = (ell > 0) & (ell < lmax_cmb) & (cl > 0)
        self._inv_prior = np.where(self.e_band, geom.pixel_rad**2 / np.where(self.e_band, cl, 1.0), 0.0)
        self._beam = gaussian_beam(beam_fwhm_arcmin, ell)
        self._band = ((ell >= lmin) & (ell <= lmax)).astype(float)
        self._spin2 = np.exp(2j * np.arctan2(*geom.lxly(real=False)[::-1]))
        self.lensing: Lensing | None = None
        self.set_noise(ivar)

    def set_noise(self, ivar: np.ndarray | None) -> None:
        """Use white noise (``ivar`` None: the pixel variance of ``noise_p_uk_arcmin``) or a map of inverse
        noise variance (µK⁻² per pixel, zero where masked; the preconditioner then uses its mean over the
        observed pixels, ``ivar > 0``)."""
        if ivar is not None:
            ivar = np.asarray(ivar, dtype=float)
            if ivar.shape != self.geom.shape or not np.all(np.isfinite(ivar)) or ivar.min() < 0 or ivar.max() == 0:
                raise InputError(f"map: the inverse-variance map must be finite, >= 0, not all zero, of shape "
                                 f"{self.geom.shape}")
        self.ivar = ivar
        weight = 1.0 / self.sigma2 if ivar is None else float(ivar[ivar > 0].mean())
        total = self._inv_prior + self._beam**2 * self._band * weight
        self._precond = np.divide(1.0, total, out=np.zeros_like(total), where=self.e_band)

    # -- lensing --------------------------------------------------------------------------------------
    def set_phi(self, phi_fourier: np.ndarray) -> None:
        """Fix the lensing potential (rfft modes, rad²) the operators use."""
        self.lensing = Lensing(self.geom, phi_fourier, self.epsilon, self.nthreads)

    # -- representation -------------------------------------------------------------------------------
    def e_coefficients(self, e_map: np.ndarray) -> np.ndarray:
        """Band-limited Fourier-series coefficients of a real E map (µK)."""
        return ducc0.fft.c2c(np.asarray(e_map, dtype=complex), axes=(-2, -1), forward=True,
                             inorm=2, nthreads=self.nthreads) * self.e_band

    def e_map(self, e: np.ndarray) -> np.ndarray:
        """The real E map (µK) of coefficients ``e``."""
        return ducc0.fft.c2c(e, axes=(-2, -1), forward=False, nthreads=self.nthreads).real

    def pol_grid(self, e: np.ndarray) -> np.ndarray:
        """Fourier-series coefficients of ``Q + iU`` of the pure-E field ``e`` (the spin-2 rotation)."""
        return e * self._spin2

    def inner(self, a: np.ndarray, b: np.ndarray) -> float:
        """Pixel inner product of two E fields given by their coefficients."""
        return self.n_pix * pixel_inner(a, b)

    # -- the operators --------------------------------------------------------------------------------
    def _filter(self, pol: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        f = ducc0.fft.c2c(np.asarray(pol, dtype=complex), axes=(-2, -1), forward=True, nthreads=self.nthreads)
        return ducc0.fft.c2c(f * kernel, axes=(-2, -1), forward=False, inorm=2, nthreads=self.nthreads)

    def beam(self, pol: np.ndarray) -> np.ndarray:
        """Beam convolution :math:`\\mathcal{B}` of complex ``Q + iU`` map(s) (self-adjoint)."""
        return self._filter(pol, self._beam)

    def apply(self, e: np.ndarray) -> np.ndarray:
        """:math:`A e = \\mathcal{B}\\mathcal{L}_\\phi\\mathcal{S} e`: the noiseless data (complex ``Q + iU``, µK)."""
        return self.beam(self.lensing.forward(self.pol_grid(e)))

    def adjoint(self, pol: np.ndarray, beam: bool = True) -> np.ndarray:
        """:math:`A^\\dagger` (transpose of :meth:`apply` in the pixel metric): ``Q + iU`` map -> E coefficients.

        ``beam=False`` leaves out :math:`\\mathcal{B}^\\dagger` (for a map already beam-convolved)."""
        grid = self.lensing.adjoint(self.beam(pol) if beam else pol)
        return hermitian_part(grid * np.conj(self._spin2)) * self.e_band / self.n_pix

    def _weighted(self, pol: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """Fourier kernel ``after`` of the pixel weights (or 1 / sigma^2) times Fourier kernel ``before`` of
        ``pol``: the noise operators, with the data band inside the kernels."""
        if self.ivar is None:
            return self._filter(pol, before * after / self.sigma2)
        return self._filter(self.ivar * self._filter(pol, before), after)

    def inverse_noise(self, pol: np.ndarray) -> np.ndarray:
        """:math:`N^{-1}` of complex ``Q + iU`` map(s): band projection, pixel weights, band projection."""
        return self._weighted(pol, self._band, self._band)

    def residual_leg(self, pol: np.ndarray) -> np.ndarray:
        """:math:`\\mathcal{B}^\\dagger N^{-1}` of complex ``Q + iU`` map(s)."""
        return self._weighted(pol, self._band, self._beam * self._band)

    def inverse_prior(self, e: np.ndarray) -> np.ndarray:
        """:math:`C_E^{-1} e` in the pixel metric (``Delta^2 / C_l``, Delta the pixel side in radians)."""
        return self._inv_prior * e

    def noise_weight(self, pol: np.ndarray) -> np.ndarray:
        """:math:`\\mathcal{B}^\\dagger N^{-1} \\mathcal{B}` of ``Q + iU`` map(s) (for white noise one filter)."""
        return self._weighted(pol, self._beam * self._band, self._beam * self._band)

    def normal(self, e: np.ndarray) -> np.ndarray:
        """The Wiener-filter operator :math:`(C_E^{-1} + A^\\dagger N^{-1} A)\\, e`."""
        lensed = self.lensing.forward(self.pol_grid(e))
        return self._inv_prior * e + self.adjoint(self.noise_weight(lensed), beam=False)

    def simulate(self, rng: np.random.Generator, noise_ivar: np.ndarray | None = None) -> np.ndarray:
        """Data drawn at the current potential: :math:`d = A E + n` (complex ``Q + iU``, µK).

        :math:`E` is Gaussian with the prior spectrum (:math:`\\langle |e_\\mathbf{k}|^2 \\rangle = C_l /
        (N_{\\rm pix} \\Delta^2)` for the coefficients, zero outside the band) and :math:`n` white in each
        of Q and U with the pixel variance :math:`\\sigma^2`, or, with pixel weights, :math:`1/{\\rm ivar}`
        where they are positive (zero elsewhere: those pixels carry no data).

        Parameters
        ----------
        rng : numpy.random.Generator
        noise_ivar : ndarray, shape ``geom.shape``, optional
            The inverse variance of the noise actually in the data (µK⁻²), where it differs from the
            weights the model takes (an apodised mask down-weights pixels whose noise it does not raise);
            used where the weights are positive.
        """
        white = rng.standard_normal(self.geom.shape)
        scale = np.divide(1.0, np.sqrt(self._inv_prior), out=np.zeros_like(self._inv_prior), where=self.e_band)
        e = self.e_coefficients(white) * scale
        if self.ivar is None:
            rms = np.full(self.geom.shape, np.sqrt(self.sigma2))
        else:
            var = self.ivar if noise_ivar is None else np.asarray(noise_ivar, dtype=float)
            rms = np.divide(1.0, np.sqrt(var), out=np.zeros_like(self.ivar), where=(self.ivar > 0) & (var > 0))
        noise = rng.standard_normal((2,) + self.geom.shape) * rms
        return self.apply(e) + noise[0] + 1j * noise[1]

    def precondition(self, e: np.ndarray) -> np.ndarray:
        """Fourier-diagonal approximate inverse of :meth:`normal`: :math:`(C_E^{-1} + B_l^2 \\bar w)^{-1}`, with
        :math:`\\bar w` the mean inverse variance of the observed pixels (:math:`1/\\sigma^2` for white noise)."""
        return self._precond * e
