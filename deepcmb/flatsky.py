"""Flat-sky Gaussian fields and exact lensing by non-uniform FFT.

The unlensed CMB on a periodic patch is a finite Fourier series; lensing evaluates that series at the
deflected positions :math:`\\mathbf{x} + \\nabla\\phi(\\mathbf{x})`. :func:`lens_nufft` does so with a
type-2 non-uniform FFT (``ducc0.nufft.u2nu``) to a requested relative accuracy ``epsilon``;
:func:`lens_bruteforce` sums the series directly and is the reference in tests. Nothing is
interpolated, so the lensed maps are exact for the band-limited unlensed field. Polarization is
lensed as the spin-2 field ``Q + iU``; on the flat sky remapping needs no rotation of the basis.

References
----------
Lewis & Challinor (2006), Phys. Rep. 429, 1, Sec. 4 (flat-sky lensing); Hu & Okamoto (2002),
ApJ 574, 566 (flat-sky polarization conventions); Reinecke et al. (2023), A&A 672, A87 (ducc0 NUFFT
and lensing).
"""

import numpy as np

from .geometry import ARCMIN, interp_spectrum


def white_fourier(geom, rng):
    """Fourier modes (rfft grid) of a unit-variance white-noise map: ``<|w(l)|^2> = N_pix``."""
    return np.fft.rfft2(rng.standard_normal(geom.shape))


def band_mask(geom, lmin=0.0, lmax=None):
    """Boolean rfft-grid mask of ``lmin <= |l| < lmax`` (``lmax`` defaults to the Nyquist multipole)."""
    ell = geom.ell()
    lmax = geom.ell_nyquist if lmax is None else min(lmax, geom.ell_nyquist)
    return (ell >= lmin) & (ell < lmax) & (ell > 0)


def gaussian_fourier(geom, cl, white, lmax=None):
    """Fourier modes of a Gaussian field of spectrum ``cl`` from white noise modes.

    Parameters
    ----------
    geom : FlatSkyGeometry
    cl : array_like, shape (lmax_cl + 1,)
        Power spectrum at integer multipoles (field units squared times steradian).
    white : ndarray, complex, shape ``geom.fourier_shape()``
        Output of :func:`white_fourier`.
    lmax : float, optional
        Modes with ``|l| >= lmax`` are zeroed (default: the Nyquist multipole, which keeps the field
        isotropic and free of the ill-defined Nyquist row and column).

    Returns
    -------
    ndarray, complex, shape ``geom.fourier_shape()``
        Modes in the convention of :mod:`deepcmb.geometry`: ``<|f(l)|^2> = A C_l``; ``f(0) = 0``.
    """
    amp = np.sqrt(np.maximum(interp_spectrum(cl, geom.ell()), 0.0)) * geom.pixel_rad
    return white * amp * band_mask(geom, lmax=lmax)


def correlated_te_fourier(geom, cltt, clee, clte, white_t, white_e, lmax=None):
    """Fourier modes of correlated Gaussian T and E (Cholesky factor of the 2x2 covariance).

    Parameters
    ----------
    geom : FlatSkyGeometry
    cltt, clee, clte : array_like
        Spectra at integer multipoles in µK².
    white_t, white_e : ndarray
        Independent white-noise modes from :func:`white_fourier`.
    lmax : float, optional
        Band limit, as in :func:`gaussian_fourier`.

    Returns
    -------
    t, e : ndarray, complex, shape ``geom.fourier_shape()``
    """
    ell = geom.ell()
    tt = interp_spectrum(cltt, ell)
    ee = interp_spectrum(clee, ell)
    te = interp_spectrum(clte, ell)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(tt > 0, te / np.sqrt(tt), 0.0)
    b = np.sqrt(np.maximum(ee - a**2, 0.0))
    mask = band_mask(geom, lmax=lmax) * geom.pixel_rad
    t = white_t * np.sqrt(np.maximum(tt, 0.0)) * mask
    e = (white_t * a + white_e * b) * mask
    return t, e


def deflection(geom, phi_fourier):
    """Deflection field ``(d_y, d_x) = grad(phi)`` in radians, maps of shape ``geom.shape``."""
    lx, ly = geom.lxly()
    return geom.fourier2map(1j * ly * phi_fourier), geom.fourier2map(1j * lx * phi_fourier)


def kappa_from_phi(geom, phi_fourier):
    """Convergence modes ``kappa(l) = |l|^2 / 2 phi(l)`` (flat sky, ``kappa = -lap(phi) / 2``)."""
    return 0.5 * geom.ell() ** 2 * phi_fourier


def _deflected_coords(geom, dy, dx):
    y, x = geom.pixel_positions()
    return np.stack([(y + dy).ravel(), (x + dx).ravel()], axis=-1)


def lens_nufft(geom, fields, dy, dx, epsilon=1e-7, nthreads=1):
    """Lens maps by evaluating their Fourier series at the deflected positions (type-2 NUFFT).

    Parameters
    ----------
    geom : FlatSkyGeometry
    fields : ndarray, shape (nfield, ny, nx), real or complex
        Unlensed maps (e.g. ``T`` and ``Q + iU``), band-limited below the Nyquist multipole.
    dy, dx : ndarray, shape (ny, nx)
        Deflection components in radians.
    epsilon : float
        Requested relative accuracy of the NUFFT (double precision: > 2e-13).
    nthreads : int
        Threads for ducc0.

    Returns
    -------
    ndarray, complex, shape (nfield, ny, nx)
        ``f(x + d(x))`` for each field; take ``.real`` for real input fields.
    """
    import ducc0

    fields = np.asarray(fields)
    grid = np.fft.fft2(fields).astype(np.complex128) / np.prod(geom.shape)
    out = ducc0.nufft.u2nu(
        grid=grid, coord=_deflected_coords(geom, dy, dx), forward=False, epsilon=epsilon,
        nthreads=nthreads, periodicity=list(geom.extent_rad), fft_order=True,
    )
    return out.reshape(fields.shape)


def lens_bruteforce(geom, fields, dy, dx):
    """Reference for :func:`lens_nufft`: direct sum of the Fourier series (O(N_pix^2), small maps only)."""
    fields = np.asarray(fields)
    ny, nx = geom.shape
    ky = np.fft.fftfreq(ny, d=1.0 / ny)
    kx = np.fft.fftfreq(nx, d=1.0 / nx)
    ly_, lx_ = geom.extent_rad
    coords = _deflected_coords(geom, dy, dx)
    phase_y = np.exp(2j * np.pi * np.outer(coords[:, 0], ky) / ly_)  # (npix, ny)
    phase_x = np.exp(2j * np.pi * np.outer(coords[:, 1], kx) / lx_)  # (npix, nx)
    grid = np.fft.fft2(fields) / (ny * nx)
    out = np.einsum("py,fyx,px->fp", phase_y, grid, phase_x)
    return out.reshape(fields.shape)


def gaussian_beam(fwhm_arcmin, ell):
    """Gaussian beam transfer ``B_l = exp(-l(l+1) sigma^2 / 2)``, ``sigma = FWHM / sqrt(8 ln 2)``."""
    sigma = fwhm_arcmin * ARCMIN / np.sqrt(8.0 * np.log(2.0))
    return np.exp(-0.5 * ell * (ell + 1.0) * sigma**2)


def white_noise_cl(depth_uk_arcmin):
    """Power of white noise of depth ``Delta`` µK-arcmin: ``N_l = (Delta * arcmin)^2`` in µK² sr."""
    return (depth_uk_arcmin * ARCMIN) ** 2


def white_noise_map(geom, depth_uk_arcmin, rng):
    """White-noise map of depth ``Delta`` µK-arcmin: pixel rms ``Delta / pixel_arcmin`` µK."""
    return rng.standard_normal(geom.shape) * (depth_uk_arcmin / geom.pixel_arcmin)
