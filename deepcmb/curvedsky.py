"""Curved-sky simulations: full-sky lensing with lenspyx, cut into gnomonic flat-sky patches.

A full-sky realisation is drawn as spherical-harmonic coefficients (healpy ``alm`` ordering), lensed
by :func:`lenspyx.lensing.alm2lenmap` onto a Gauss-Legendre grid and analysed back to lensed
``alm`` exactly (:func:`lensed_alm`). Every map of a patch is then the band-limited sky evaluated at
the patch's pixel centres (``ducc0.sht.synthesis_general``), so the patches carry no pixel window
and no interpolation error; the beam is applied in harmonic space before sampling.

Patch conventions
-----------------
A patch of :class:`~deepcmb.geometry.FlatSkyGeometry` ``geom`` centred at ``(lon, lat)`` is the
gnomonic (tangent-plane) projection about that point. The tangent plane at the centre ``n0`` has
unit vectors ``e_x`` = local east and ``e_y`` = local north; the array pixel ``(iy, ix)`` sits at
the plane coordinates

.. math:: X = (i_x - (n_x - 1)/2)\\,\\Delta, \\qquad Y = (i_y - (n_y - 1)/2)\\,\\Delta,

(the centre falls between the four middle pixels) and maps to the direction
:math:`\\hat n \\propto \\hat n_0 + X \\hat e_x + Y \\hat e_y`. Up to the constant offset this is the
flat-sky position ``(y, x) = (iy * dx, ix * dx)`` of :mod:`deepcmb.geometry`. ``(e_x, e_y, outward
normal)`` is right-handed, like HEALPix's ``(e_theta, e_phi, outward normal)``; drawn with x to the
right and y up, a patch shows the sky as seen from outside the sphere (east to the right).

Polarization on the sphere follows HEALPix (COSMO): Q, U are defined in the local basis
``(e_theta, e_phi)``, the angle counted from ``e_theta`` towards ``e_phi``. On a patch, Q and U are
defined with respect to the patch's x axis, as the flat-sky E/B convention of
:mod:`deepcmb.geometry` requires. At every pixel the x axis is the image of the plane's x direction,
i.e. ``e_x`` projected onto the sphere's tangent plane there, at the angle ``psi`` from
``e_theta`` (:func:`polarization_angle`); Stokes parameters transform as the spin-2 field
``Q + iU -> (Q + iU) exp(-2 i psi)`` (:func:`rotate_polarization`). The projected x and y axes are
orthogonal up to :math:`O(XY)` (2e-3 rad in the corners of a 5 degree patch), the order of all
flat-sky approximations.

Patches are cut from the sphere, so unlike :func:`deepcmb.sample.simulate_flat` maps they are
**not periodic**: apodise them before any Fourier analysis.

References
----------
Reinecke, Belkner & Carron (2023), "Improved CMB (de-)lensing using general spherical harmonic
transforms", arXiv:2304.10431 (lenspyx; ducc0 transforms at arbitrary positions);
Gorski et al. (2005), ApJ 622, 759 (HEALPix and its polarization convention);
Calabretta & Greisen (2002), A&A 395, 1077 (gnomonic projection).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from . import flatsky
from .errors import ConfigError
from .sample import FIELDS, add_noise, sample_rng

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from .cosmology import CMBSpectra
    from .geometry import FlatSkyGeometry
    from .sample import Instrument
    from .survey import Survey

_OBSERVED = ("T", "Q", "U")
_LENSED = ("T_lensed", "Q_lensed", "U_lensed")


# -- patch layout ---------------------------------------------------------------------------------
def patch_centres(patch_nside: int, max_abs_lat_deg: float | None = None) -> np.ndarray:
    """Patch centres at the centres of the pixels of a coarse HEALPix grid.

    Parameters
    ----------
    patch_nside : int
        HEALPix resolution of the centre grid (a power of two); it has ``12 * patch_nside**2``
        pixels with a mean spacing of :math:`\\sqrt{4\\pi / N_{pix}}` (7.3 deg for ``patch_nside=8``).
    max_abs_lat_deg : float, optional
        Drop centres with ``|lat| > max_abs_lat_deg`` (e.g. to keep patches away from the poles).

    Returns
    -------
    ndarray, shape (n, 2)
        ``(lon, lat)`` in degrees, HEALPix RING order, ``lon`` in ``[0, 360)``.

    Notes
    -----
    Neighbouring centres of ``patch_nside=8`` are at least 6.1 deg apart. The 768 patches of 5 deg
    (128 x 128 pixels of 2.34375 arcmin) centred on them do not overlap (checked by pixelising all
    of them at HEALPix nside 2048) and together cover 47% of the sky.
    """
    import healpy as hp

    lon, lat = hp.pix2ang(int(patch_nside), np.arange(hp.nside2npix(int(patch_nside))), lonlat=True)
    centres = np.stack([lon, lat], axis=-1)
    if max_abs_lat_deg is not None:
        centres = centres[np.abs(lat) <= max_abs_lat_deg]
    return centres


def _patch_frame(lon_deg, lat_deg):
    """Unit vectors ``(n0, e_east, e_north)`` at a point, each of shape (3,)."""
    lon, lat = np.radians(lon_deg), np.radians(lat_deg)
    n0 = np.array([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
    east = np.array([-np.sin(lon), np.cos(lon), 0.0])
    north = np.array([-np.sin(lat) * np.cos(lon), -np.sin(lat) * np.sin(lon), np.cos(lat)])
    return n0, east, north


def _patch_directions(geom, lon_deg, lat_deg):
    """Unit vectors of the pixel centres, shape ``geom.shape + (3,)``."""
    ny, nx = geom.shape
    dx = geom.pixel_rad
    y = (np.arange(ny) - 0.5 * (ny - 1)) * dx
    x = (np.arange(nx) - 0.5 * (nx - 1)) * dx
    n0, east, north = _patch_frame(lon_deg, lat_deg)
    v = n0 + x[None, :, None] * east + y[:, None, None] * north
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def gnomonic_positions(geom: FlatSkyGeometry, lon_deg: float, lat_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Sphere coordinates of the pixel centres of a gnomonic patch.

    Parameters
    ----------
    geom : FlatSkyGeometry
        Patch shape and pixel size (the pixel side is measured on the tangent plane).
    lon_deg, lat_deg : float
        Longitude and latitude of the patch centre in degrees.

    Returns
    -------
    theta, phi : ndarray, shape ``geom.shape``
        Colatitude in ``[0, pi]`` and longitude in ``[0, 2 pi)`` in radians. Axis 1 (x) points
        east and axis 0 (y) north at the centre; see the module notes.
    """
    return _pointing(geom, lon_deg, lat_deg)[:2]


def polarization_angle(geom: FlatSkyGeometry, lon_deg: float, lat_deg: float) -> np.ndarray:
    """Angle from the HEALPix polarization basis to the patch's x axis at every pixel.

    Parameters
    ----------
    geom : FlatSkyGeometry
    lon_deg, lat_deg : float
        Patch centre in degrees.

    Returns
    -------
    ndarray, shape ``geom.shape``
        :math:`\\psi = \\mathrm{atan2}(\\hat e_x \\cdot \\hat e_\\phi, \\hat e_x \\cdot \\hat e_\\theta)` in
        radians, the angle of the projected patch x axis counted from ``e_theta`` towards ``e_phi``
        (``pi / 2`` at the patch centre, where x points east).
    """
    return _pointing(geom, lon_deg, lat_deg)[2]


def _pointing(geom, lon_deg, lat_deg):
    """``(theta, phi, psi)`` of the pixel centres of one patch, each of shape ``geom.shape``.

    With ``rho = sin(theta)``, ``rho e_theta = (z x, z y, -rho^2)`` and ``rho e_phi = (-y, x, 0)`` for
    the pixel direction ``(x, y, z)``; the common factor ``rho`` drops out of the arctangent.
    """
    n = _patch_directions(geom, lon_deg, lat_deg)
    x, y, z = n[..., 0], n[..., 1], n[..., 2]
    rho = np.hypot(x, y)
    _, east, _ = _patch_frame(lon_deg, lat_deg)
    psi = np.arctan2(-y * east[0] + x * east[1], z * (x * east[0] + y * east[1]) - rho**2 * east[2])
    return np.arctan2(rho, z), np.mod(np.arctan2(y, x), 2.0 * np.pi), psi


def rotate_polarization(q: np.ndarray, u: np.ndarray, psi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stokes parameters in a basis rotated by ``psi``: ``Q' + iU' = (Q + iU) exp(-2 i psi)``.

    Parameters
    ----------
    q, u : ndarray
        Stokes maps in the old basis (any unit), broadcastable with ``psi``.
    psi : ndarray
        Angle of the new first axis from the old one, counted towards the old second axis, radians.

    Returns
    -------
    q, u : ndarray
        Stokes maps in the new basis. With ``psi`` from :func:`polarization_angle` this takes HEALPix
        Q, U to the flat-sky convention of the patch.
    """
    c, s = np.cos(2.0 * psi), np.sin(2.0 * psi)
    return q * c + u * s, u * c - q * s


# -- Gaussian harmonic coefficients ---------------------------------------------------------------
def white_alm(lmax: int, rng: np.random.Generator) -> np.ndarray:
    """Harmonic coefficients of unit white noise, ``<|a_lm|^2> = 1``, in healpy ordering.

    Parameters
    ----------
    lmax : int
        Band limit (``mmax = lmax``).
    rng : numpy.random.Generator
        Random stream; draws ``2 * n_alm`` standard normals.

    Returns
    -------
    ndarray, complex128, shape ``((lmax + 1) (lmax + 2) / 2,)``
        ``a_l0`` real with unit variance; for ``m > 0`` real and imaginary parts of variance 1/2 each.
    """
    nalm = (lmax + 1) * (lmax + 2) // 2
    re = rng.standard_normal(nalm)
    im = rng.standard_normal(nalm)
    alm = (re + 1j * im) * np.sqrt(0.5)
    alm[: lmax + 1] = re[: lmax + 1]
    return alm


def scale_alm(alm: np.ndarray, fl: ArrayLike) -> np.ndarray:
    """Multiply ``alm`` (healpy ordering, ``mmax = lmax = fl.size - 1``) by ``fl[l]``."""
    import healpy as hp

    return hp.almxfl(alm, np.asarray(fl, dtype=float))


def gaussian_alm(cl: ArrayLike, white: np.ndarray) -> np.ndarray:
    """Harmonic coefficients of a Gaussian field of spectrum ``cl`` from :func:`white_alm` output.

    Parameters
    ----------
    cl : array_like, shape (>= lmax + 1,)
        Power spectrum at integer multipoles; only ``l <= lmax`` of ``white`` is used.
    white : ndarray, complex
        White coefficients of band limit ``lmax``.

    Returns
    -------
    ndarray, complex
        ``sqrt(C_l) a_lm``, so that ``<|a_lm|^2> = C_l``.
    """
    lmax = _lmax_of(white)
    return scale_alm(white, np.sqrt(np.maximum(np.asarray(cl, dtype=float)[: lmax + 1], 0.0)))


def correlated_te_alm(cltt: ArrayLike, clee: ArrayLike, clte: ArrayLike, white_t: np.ndarray,
                      white_e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Correlated Gaussian T and E coefficients (Cholesky factor of the 2x2 covariance per ``l``).

    Parameters
    ----------
    cltt, clee, clte : array_like
        Spectra at integer multipoles in µK² (at least ``lmax + 1`` values).
    white_t, white_e : ndarray, complex
        Independent :func:`white_alm` draws of band limit ``lmax``.

    Returns
    -------
    tlm, elm : ndarray, complex
        ``T = sqrt(TT) w_t``, ``E = (TE / sqrt(TT)) w_t + sqrt(EE - TE^2 / TT) w_e``.
    """
    lmax = _lmax_of(white_t)
    tt, ee, te = (np.asarray(c, dtype=float)[: lmax + 1] for c in (cltt, clee, clte))
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(tt > 0, te / np.sqrt(tt), 0.0)
    b = np.sqrt(np.maximum(ee - a**2, 0.0))
    return scale_alm(white_t, np.sqrt(np.maximum(tt, 0.0))), scale_alm(white_t, a) + scale_alm(white_e, b)


def _lmax_of(alm):
    """Band limit of a healpy-ordered ``alm`` array with ``mmax = lmax``."""
    lmax = int(round((np.sqrt(8 * alm.size + 1) - 3) / 2))
    if (lmax + 1) * (lmax + 2) // 2 != alm.size:
        raise ValueError(f"{alm.size} is not the size of an alm array with mmax = lmax")
    return lmax


# -- lensing and sampling -------------------------------------------------------------------------
def lensed_alm(tlm: np.ndarray, elm: np.ndarray, blm: np.ndarray | None, plm: np.ndarray, epsilon: float = 1e-7,
               nthreads: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lensed harmonic coefficients of a full-sky realisation (lenspyx on a Gauss-Legendre grid).

    The unlensed sky is remapped by :func:`lenspyx.lensing.alm2lenmap` onto the Gauss-Legendre grid
    of band limit ``lmax`` (``lmax + 1`` rings), whose quadrature makes the analysis back to ``alm``
    (``ducc0.sht.analysis_2d``) exact for multipoles ``<= lmax``.

    Parameters
    ----------
    tlm, elm : ndarray, complex
        Unlensed T and E coefficients in µK, band limit ``lmax``.
    blm : ndarray or None
        Unlensed B coefficients, or None for no primordial B modes.
    plm : ndarray, complex
        Lensing-potential coefficients (dimensionless), band limit ``lmax``; the deflection is the
        gradient of phi, ``d_lm = sqrt(L(L+1)) phi_lm``.
    epsilon : float
        Accuracy of the lenspyx remapping (relative; 1e-7 is double precision).
    nthreads : int
        Threads (0: all cores).

    Returns
    -------
    tlm, elm, blm : ndarray, complex128
        Lensed coefficients to ``lmax``. Lensing moves a little power above ``lmax``; on this grid it
        can only alias into multipoles :math:`\\ell > 2\\ell_{max} + 1 - \\ell'` with :math:`\\ell'`
        the multipole it came from, i.e. near the band limit.
    """
    import ducc0
    from lenspyx.lensing import alm2lenmap, get_geom

    lmax = _lmax_of(tlm)
    ell = np.arange(lmax + 1, dtype=float)
    dlm = scale_alm(plm, np.sqrt(ell * (ell + 1.0)))
    unlensed = [tlm, elm] if blm is None else [tlm, elm, blm]
    geometry = ("gl", {"lmax": lmax})
    t, q, u = alm2lenmap(unlensed, dlm, geometry=geometry, epsilon=epsilon, nthreads=nthreads)
    shape2d = (lmax + 1, int(get_geom(geometry).nph[0]))
    tlm_len = ducc0.sht.analysis_2d(map=t.reshape((1,) + shape2d), spin=0, lmax=lmax, geometry="GL",
                                    nthreads=nthreads)[0]
    eb = ducc0.sht.analysis_2d(map=np.stack([q, u]).reshape((2,) + shape2d), spin=2, lmax=lmax,
                               geometry="GL", nthreads=nthreads)
    return tlm_len, eb[0], eb[1]


def alm2points(alm: np.ndarray, theta: np.ndarray, phi: np.ndarray, epsilon: float = 1e-7,
               nthreads: int = 0) -> np.ndarray:
    """Spin-0 field evaluated exactly at arbitrary positions.

    Parameters
    ----------
    alm : ndarray, complex
        Coefficients (healpy ordering, ``mmax = lmax``).
    theta, phi : ndarray
        Colatitude and longitude in radians, same shape.
    epsilon : float
        Relative accuracy of ``ducc0.sht.synthesis_general``.
    nthreads : int
        Threads (0: all cores).

    Returns
    -------
    ndarray, float64, shape ``theta.shape``
    """
    import ducc0

    loc = np.stack([np.ravel(theta), np.ravel(phi)], axis=-1)
    out = ducc0.sht.synthesis_general(alm=alm[None], spin=0, lmax=_lmax_of(alm), loc=loc, epsilon=epsilon,
                                      nthreads=nthreads)
    return out[0].reshape(np.shape(theta))


def eb2qu_points(elm: np.ndarray, blm: np.ndarray | None, theta: np.ndarray, phi: np.ndarray, psi: np.ndarray,
                 epsilon: float = 1e-7, nthreads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stokes Q, U of E/B coefficients at arbitrary positions, in a rotated local basis.

    Parameters
    ----------
    elm : ndarray, complex
        E coefficients (healpy ordering and sign convention).
    blm : ndarray or None
        B coefficients (None: pure E).
    theta, phi : ndarray
        Colatitude and longitude in radians.
    psi : ndarray
        Angle of the output basis from ``e_theta`` towards ``e_phi`` (:func:`polarization_angle`);
        ``psi = 0`` returns HEALPix Q, U.
    epsilon : float
        Relative accuracy of ``ducc0.sht.synthesis_general``.
    nthreads : int
        Threads (0: all cores).

    Returns
    -------
    q, u : ndarray, float64, shape ``theta.shape``
    """
    import ducc0

    loc = np.stack([np.ravel(theta), np.ravel(phi)], axis=-1)
    alm, mode = (elm[None], "GRAD_ONLY") if blm is None else (np.stack([elm, blm]), "STANDARD")
    q, u = ducc0.sht.synthesis_general(alm=alm, spin=2, lmax=_lmax_of(elm), loc=loc, epsilon=epsilon,
                                       nthreads=nthreads, mode=mode)
    return rotate_polarization(q.reshape(np.shape(theta)), u.reshape(np.shape(theta)), psi)


def patch_pointing(geom: FlatSkyGeometry, centres: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel positions and polarization angles of a set of patches.

    Parameters
    ----------
    geom : FlatSkyGeometry
    centres : array_like, shape (npatch, 2)
        ``(lon, lat)`` of the patch centres in degrees (e.g. from :func:`patch_centres`).

    Returns
    -------
    theta, phi, psi : ndarray, shape ``(npatch,) + geom.shape``
        Outputs of :func:`gnomonic_positions` and :func:`polarization_angle` for every patch.
    """
    centres = np.asarray(centres, dtype=float).reshape(-1, 2)
    pointing = [_pointing(geom, lon, lat) for lon, lat in centres]
    return tuple(np.stack([p[k] for p in pointing]) for k in range(3))


def simulate_curved_patches(spectra: CMBSpectra, instrument: Instrument, root_seed: int, index: int,
                            geom: FlatSkyGeometry, centres: ArrayLike, lmax: int, fields: Sequence[str] = FIELDS,
                            include_b: bool = False, epsilon: float = 1e-7, nthreads: int = 0,
                            survey: Survey | None = None) -> dict[str, np.ndarray]:
    """Simulate one full-sky lensed realisation and cut it into gnomonic flat-sky patches.

    Parameters
    ----------
    spectra : CMBSpectra
        Unlensed CMB spectra and lensing power; tabulated to at least ``lmax``.
    instrument : Instrument
        Gaussian beam (applied in harmonic space) and white noise (drawn per patch pixel).
    root_seed, index : int
        Seed of the run and index of the full-sky realisation (:func:`deepcmb.sample.sample_rng`
        streams ``'cmb'``, ``'bmodes'``, ``'phi'``, ``'noise'``, and the survey's ``'mask'`` and
        ``'depth'``).
    geom : FlatSkyGeometry
        Geometry of every patch.
    centres : array_like, shape (npatch, 2)
        Patch centres ``(lon, lat)`` in degrees.
    lmax : int
        Band limit of the unlensed CMB, of phi and of the lensed sky. Choose about the patch's
        Nyquist multipole ``geom.ell_nyquist``, as :func:`~deepcmb.sample.simulate_flat` does;
        the cost of the lensing grows as ``lmax^3``.
    fields : sequence of str
        Names from :data:`~deepcmb.sample.FIELDS` to return (and the survey's ``mask`` and ``ivar_p``,
        if it has them); only what they need is computed.
    include_b : bool
        Draw unlensed B modes from ``spectra`` (zero for scalar-only spectra).
    epsilon : float
        Accuracy of the lensing and of the evaluation at the pixel centres.
    nthreads : int
        Threads (0: all cores).
    survey : Survey, optional
        A mask and a noise map per patch (:mod:`deepcmb.survey`; patches are never periodic, so
        ``survey.periodic`` and ``survey.pad`` do not apply). Default: no mask, white noise.

    Returns
    -------
    dict
        Field name -> ``float64`` array of shape ``(npatch,) + geom.shape``, units as in
        :data:`~deepcmb.sample.FIELDS`; Q and U in the patch convention of this module. ``E/B``
        unlensed maps are spin-0 syntheses of the E/B coefficients; ``kappa`` has
        :math:`\\kappa_{LM} = L(L+1)\\phi_{LM}/2`. The noise of the observed maps comes from one
        stream, drawn T, Q, U per patch in the order of ``centres`` (white, or following the patch's
        ``ivar_p``, :func:`deepcmb.sample.add_noise`); the masks and noise maps come from the
        ``'mask'`` and ``'depth'`` streams, patch after patch.

    Notes
    -----
    Every map is an exact sample of the band-limited sky at the pixel centres, so its spectrum has
    no pixel window; the maps are not periodic (see the module notes).
    """
    names = FIELDS + (() if survey is None else survey.maps)
    unknown = set(fields) - set(names)
    if unknown:
        raise ConfigError(f"simulation.fields: unknown field(s) {sorted(unknown)}; known: {', '.join(names)}")
    lmax = int(lmax)
    if not 2 <= lmax <= spectra.lmax:
        raise ConfigError(f"simulation.lmax: must be between 2 and the spectra's lmax {spectra.lmax}, got {lmax}")
    want = set(fields)
    theta, phi, psi = patch_pointing(geom, centres)

    def spin0(alm: np.ndarray) -> np.ndarray:
        return alm2points(alm, theta, phi, epsilon=epsilon, nthreads=nthreads)

    def spin2(elm: np.ndarray, blm: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        return eb2qu_points(elm, blm, theta, phi, psi, epsilon=epsilon, nthreads=nthreads)

    rng_cmb = sample_rng(root_seed, index, "cmb")
    white_t, white_e = white_alm(lmax, rng_cmb), white_alm(lmax, rng_cmb)
    tlm, elm = correlated_te_alm(spectra.unlensed_cl("TT"), spectra.unlensed_cl("EE"), spectra.unlensed_cl("TE"),
                                 white_t, white_e)
    blm = None
    if include_b:
        blm = gaussian_alm(spectra.unlensed_cl("BB"), white_alm(lmax, sample_rng(root_seed, index, "bmodes")))
    plm = gaussian_alm(spectra.clpp, white_alm(lmax, sample_rng(root_seed, index, "phi")))

    out = {}
    npatch = theta.shape[0]
    if survey is not None:
        on_patch = survey.on(geom, periodic=False)
        if "mask" in want:
            rng = sample_rng(root_seed, index, "mask")
            out["mask"] = np.stack([on_patch.mask(rng) for _ in range(npatch)])
        if "ivar_p" in names and want & {"ivar_p", *_OBSERVED}:
            rng = sample_rng(root_seed, index, "depth")
            out["ivar_p"] = np.stack([on_patch.ivar_p(instrument.noise_p_uk_arcmin, rng) for _ in range(npatch)])
    if "T_unlensed" in want:
        out["T_unlensed"] = spin0(tlm)
    if "E_unlensed" in want:
        out["E_unlensed"] = spin0(elm)
    if "B_unlensed" in want:
        out["B_unlensed"] = np.zeros_like(theta) if blm is None else spin0(blm)
    if want & {"Q_unlensed", "U_unlensed"}:
        out["Q_unlensed"], out["U_unlensed"] = spin2(elm, blm)
    if "phi" in want:
        out["phi"] = spin0(plm)
    if "kappa" in want:
        ell = np.arange(lmax + 1, dtype=float)
        out["kappa"] = spin0(scale_alm(plm, 0.5 * ell * (ell + 1.0)))
    if want & set(_LENSED + _OBSERVED):
        tlm_len, elm_len, blm_len = lensed_alm(tlm, elm, blm, plm, epsilon=epsilon, nthreads=nthreads)
        if "T_lensed" in want:
            out["T_lensed"] = spin0(tlm_len)
        if want & {"Q_lensed", "U_lensed"}:
            out["Q_lensed"], out["U_lensed"] = spin2(elm_len, blm_len)
        if want & set(_OBSERVED):
            beam = flatsky.gaussian_beam(instrument.beam_fwhm_arcmin, np.arange(lmax + 1, dtype=float))
            noise = _noise_patches(geom, instrument, sample_rng(root_seed, index, "noise"), out.get("ivar_p"), npatch)
            if "T" in want:
                out["T"] = spin0(scale_alm(tlm_len, beam)) + noise["T"]
            if want & {"Q", "U"}:
                q, u = spin2(scale_alm(elm_len, beam), scale_alm(blm_len, beam))
                out["Q"], out["U"] = q + noise["Q"], u + noise["U"]
    return {name: out[name] for name in fields}


def _noise_patches(geom, instrument, rng, ivar_p, npatch):
    """Noise of the instrument on ``npatch`` patches, drawn T, Q, U per patch in patch order: white, or
    following ``ivar_p`` (``(npatch, ny, nx)``, :func:`deepcmb.sample.add_noise`)."""
    noise = {name: np.empty((npatch,) + geom.shape) for name in _OBSERVED}
    for p in range(npatch):
        maps = add_noise(geom, np.zeros((3,) + geom.shape), instrument, rng, None if ivar_p is None else ivar_p[p])
        for name in _OBSERVED:
            noise[name][p] = maps[name]
    return noise
