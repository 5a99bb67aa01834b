"""``deepcmb cutout``: gnomonic flat-sky patches cut from HEALPix maps, written as an observation file.

A survey's full-sky (or partial-sky) HEALPix maps of Q, U (and T), with a mask and a hit-count or
inverse-variance map beside them, become an observation file (:mod:`deepcmb.io.observations`) that
every estimator reads. The patches follow the conventions of the curved-sky simulations
(:mod:`deepcmb.curvedsky`: x east, y north, the pixel grid centred on the patch centre), so a patch of
survey maps and a simulated patch at the same centre cover the same pixels.

Sampling
--------
The Stokes maps are analysed into harmonic coefficients up to a band limit ``lmax`` by an
iterative least-squares analysis (``ducc0.sht.pseudo_analysis``: the coefficients whose synthesis on
the HEALPix grid is closest to the map; exact to ``epsilon`` for a map band-limited to about
``2 nside``, less and less so above), Q and U together as a spin-2 field. The band-limited map is
then evaluated at the patch's pixel centres exactly (``ducc0.sht.synthesis_general``,
:func:`deepcmb.curvedsky.alm2points` and :func:`~deepcmb.curvedsky.eb2qu_points`): no interpolation
between HEALPix pixels, and no second pixel window. The maps keep what the HEALPix map holds: its
beam, its noise and the HEALPix pixel window of its ``nside`` (Gorski et al. 2005), which is not
deconvolved (the root attribute ``healpix_nside`` records it). The default ``lmax``,
``min(3 nside - 1, pi / pixel)``, stops at the patch's Nyquist multipole, like the curved-sky
simulations, so that nothing aliases on the patch grid.

The mask, hit-count and inverse-variance maps are not band-limited: each patch pixel takes the value
of the HEALPix pixel its centre falls in (``healpy.ang2pix``). A hit map becomes an inverse noise
variance per patch pixel through the depth of one hit :math:`\\sigma_1` (µK-arcmin):

.. math:: \\mathrm{ivar}_p = h\\,\\Delta^2 / \\sigma_1^2 \\quad [1/\\mu K^2],

with :math:`\\Delta` the patch pixel side in arcmin (white noise of depth :math:`\\sigma_1/\\sqrt h`);
an inverse-variance map per HEALPix pixel :math:`\\mathrm{ivar}_{hp}` (1/µK²) becomes
:math:`\\mathrm{ivar}_p = \\mathrm{ivar}_{hp}\\,\\Delta^2 / \\Omega_{hp}`, the same depth per patch
pixel (:math:`\\Omega_{hp}` the HEALPix pixel area in arcmin²).

Polarization
------------
Q and U of the input follow HEALPix's COSMO convention (FITS ``POLCCONV = 'COSMO'``, healpy's
default) or IAU (``POLCCONV = 'IAU'``: U negated; converted to COSMO first). At every patch pixel they
are rotated from the HEALPix basis ``(e_theta, e_phi)`` to the patch's x/y basis
(:func:`~deepcmb.curvedsky.polarization_angle`, :func:`~deepcmb.curvedsky.rotate_polarization`):
the written Q, U are referred to the patch's x axis (east) with the angle growing towards +y (north),
deepcmb's own frame, which the observation file calls ``pol_convention = 'COSMO'`` (read as written).
Without this rotation the E/B split leaks: near the poles the HEALPix basis turns across a patch.

Patches
-------
Centres are an explicit list of ``[lon, lat]`` (degrees), or the pixel centres of a coarse HEALPix
grid ``patch_nside`` (:func:`deepcmb.curvedsky.patch_centres`) within ``|lat| <= max_abs_lat_deg``;
patches whose mean mask is below ``min_mask_fraction`` are dropped. The file records the centres
(``/patches/lon_deg``, ``/patches/lat_deg``), ``periodic = false`` (patches cut from the sphere are
not periodic: the estimators apodise them), and the beam and white-noise level given in the config
(the noise level defaults to the median depth of the inverse-variance map).

References
----------
Calabretta & Greisen (2002), A&A 395, 1077 (the gnomonic projection);
Gorski et al. (2005), ApJ 622, 759 (HEALPix, its pixel window and polarization convention);
Reinecke, Belkner & Carron (2023), arXiv:2304.10431 (ducc0 transforms at arbitrary positions).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import curvedsky
from .config import Int, ListOf, Number, OneOf, resolve
from .errors import ConfigError, InputError
from .geometry import FlatSkyGeometry
from .io.files import check_output_file
from .io.observations import POL_CONVENTIONS, write_observations
from .progress import Progress
from .provenance import provenance_attrs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import ArrayLike

log = logging.getLogger(__name__)

MAXITER = 20
"""Iterations of the least-squares harmonic analysis at most."""
EPSILON = 1e-7
"""Relative accuracy of the harmonic analysis and of the evaluation at the pixel centres."""
BATCH = 64
"""Patches evaluated at once (one progress step)."""

SCHEMA = {
    "shape": ListOf(Int(min=4), [128, 128], min_len=2, max_len=2, doc="patch size (ny, nx), pixels"),
    "pixel_arcmin": Number(2.34375, gt=0, doc="pixel side on the tangent plane, arcmin"),
    "centres": ListOf(ListOf(Number(), min_len=2, max_len=2), None, min_len=1, nullable=True,
                      doc="patch centres [[lon, lat], ...], degrees (null: the HEALPix tiling patch_nside); "
                          "on the command line --set 'centres=[[lon, lat], ...]'"),
    "patch_nside": Int(8, min=1, doc="HEALPix nside (a power of two) of the patch centres when centres is null"),
    "max_abs_lat_deg": Number(90.0, min=0, max=90, doc="tiling: keep centres within this |latitude|, degrees"),
    "min_mask_fraction": Number(0.0, min=0, max=1, doc="drop patches whose mean mask is below this"),
    "pol_convention": OneOf("header", "header", *POL_CONVENTIONS,
                            doc="sign convention of U in the input maps (header: the FITS header's POLCCONV, "
                                "COSMO without one)"),
    "beam_fwhm_arcmin": Number(None, min=0, doc="Gaussian beam FWHM of the input maps, arcmin (required)"),
    "noise_p_uk_arcmin": Number(None, min=0, doc="white noise of each of Q and U, uK-arcmin (null: the median "
                                                 "depth of --hits or --ivar)"),
    "noise_t_uk_arcmin": Number(None, min=0, doc="white noise of T, uK-arcmin (null: noise_p_uk_arcmin / sqrt 2)"),
    "noise_uk_arcmin_per_hit": Number(None, gt=0, doc="Q/U depth of one hit, uK-arcmin (needed with --hits)"),
    "lmax": Int(None, min=2, doc="band limit of the harmonic analysis (null: min(3 nside - 1, pi / pixel))"),
    "maxiter": Int(MAXITER, min=1, doc="iterations of the least-squares harmonic analysis at most"),
    "epsilon": Number(EPSILON, gt=0, lt=1, doc="relative accuracy of the analysis and of the evaluation"),
}
"""Settings of ``deepcmb cutout`` (a ``cutout:`` section of a YAML file), with their defaults."""


@dataclass
class Patches:
    """Patches cut from HEALPix maps (:func:`cutout`).

    Attributes
    ----------
    maps : dict
        ``'Q'``, ``'U'`` (and ``'T'``) -> float64 ``(npatch, ny, nx)``, µK; Q, U in the patch frame.
    geom : FlatSkyGeometry
        Geometry of every patch.
    centres : ndarray, shape (npatch, 2)
        ``(lon, lat)`` of the patch centres, degrees.
    nside : int
        HEALPix resolution of the Stokes maps.
    lmax : int
        Band limit of the harmonic analysis.
    residual : dict
        Transform (``'spin0'``, ``'spin2'``) -> relative residual norm of the least-squares analysis
        (0 for a map that is exactly band-limited at ``lmax``).
    mask : ndarray or None
        ``(npatch, ny, nx)`` in [0, 1], nearest HEALPix pixel.
    ivar_p : ndarray or None
        ``(npatch, ny, nx)`` inverse noise variance of each of Q and U per patch pixel, 1/µK².
    """

    maps: dict[str, np.ndarray]
    geom: FlatSkyGeometry
    centres: np.ndarray
    nside: int
    lmax: int
    residual: dict[str, float] = field(default_factory=dict)
    mask: np.ndarray | None = None
    ivar_p: np.ndarray | None = None

    def median_depth(self) -> float | None:
        """Q/U white-noise level of the median ``ivar_p`` over the pixels with data,
        :math:`\\Delta / \\sqrt{\\mathrm{ivar}_p}` in µK-arcmin (None without ``ivar_p`` or data)."""
        seen = None if self.ivar_p is None else self.ivar_p[self.ivar_p > 0]
        return None if seen is None or not seen.size else float(self.geom.pixel_arcmin / np.sqrt(np.median(seen)))

    def write(self, path: str | Path, *, beam_fwhm_arcmin: float, noise_p_uk_arcmin: float,
              noise_t_uk_arcmin: float | None = None, attrs: dict | None = None, overwrite: bool = False) -> Path:
        """Write the patches as an observation file (:func:`~deepcmb.io.observations.write_observations`).

        Parameters
        ----------
        path : str or Path
        beam_fwhm_arcmin : float
            Gaussian beam FWHM of the input maps, arcmin.
        noise_p_uk_arcmin : float
            White noise of Q and U, µK-arcmin (e.g. :meth:`median_depth`).
        noise_t_uk_arcmin : float, optional
            White noise of T (default ``noise_p_uk_arcmin / sqrt 2``); used only with a T map.
        attrs : dict, optional
            More root attributes (provenance).
        overwrite : bool

        Returns
        -------
        Path
            The file: ``periodic = false``, ``pol_convention = 'COSMO'`` (the patch frame), the centres in
            ``/patches/lon_deg`` and ``/patches/lat_deg``, and the attributes ``projection``, ``healpix_nside``,
            ``healpix_pixel_window``, ``lmax`` and ``analysis_residual``.
        """
        m = self.maps
        if noise_t_uk_arcmin is None:
            noise_t_uk_arcmin = noise_p_uk_arcmin / np.sqrt(2.0)
        attrs = {"projection": "gnomonic", "healpix_nside": self.nside, "healpix_pixel_window": "kept",
                 "lmax": self.lmax, "analysis_residual": json.dumps(self.residual, sort_keys=True), **(attrs or {})}
        return write_observations(path, m["Q"], m["U"], T=m.get("T"), pixel_arcmin=self.geom.pixel_arcmin,
                                  beam_fwhm_arcmin=beam_fwhm_arcmin, noise_p_uk_arcmin=noise_p_uk_arcmin,
                                  noise_t_uk_arcmin=noise_t_uk_arcmin if "T" in m else None, periodic=False,
                                  pol_convention="COSMO", mask=self.mask, ivar_p=self.ivar_p, attrs=attrs,
                                  datasets={"patches/lon_deg": self.centres[:, 0],
                                            "patches/lat_deg": self.centres[:, 1]},
                                  overwrite=overwrite)


# -- reading HEALPix files ------------------------------------------------------------------------
def read_healpix(path: str | Path, n_fields: int | None = 1) -> tuple[np.ndarray, dict]:
    """Read the first columns of a HEALPix FITS map in RING order, and its header.

    Parameters
    ----------
    path : str or Path
    n_fields : int or None
        Columns to read (None: ``(I, Q, U)`` when the file has three or more, ``(Q, U)`` when it has two).

    Returns
    -------
    maps : ndarray, float64, shape (n_fields, npix)
        Pixel values as stored (``healpy.UNSEEN`` kept); a partial-sky file (explicit pixel indices)
        is filled with ``UNSEEN`` where it has no pixels.
    header : dict
        The keywords of the table extension (``POLCCONV``, ``NSIDE``, ``ORDERING``, ...).

    Raises
    ------
    InputError
        One line for a missing or unreadable file, one with too few columns, or one that is not a
        HEALPix map.
    """
    import healpy as hp
    from astropy.io import fits

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        with fits.open(path) as hdul:
            header = dict(hdul[1].header)
    except (OSError, IndexError, ValueError) as exc:
        raise InputError(f"{path}: not a HEALPix FITS map ({exc})") from None
    columns = int(header.get("TFIELDS", 0))
    if str(header.get("INDXSCHM", "")).strip() == "EXPLICIT":
        columns -= 1  # the PIXEL column of a partial-sky file, which healpy skips
    if n_fields is None:
        if columns < 2:
            raise InputError(f"{path}: {columns} column(s); the Stokes maps need Q, U or T, Q, U")
        n_fields = 3 if columns >= 3 else 2
    if columns < n_fields:
        raise InputError(f"{path}: {columns} column(s), expected at least {n_fields}")
    try:
        maps = hp.read_map(str(path), field=tuple(range(n_fields)), dtype=np.float64)
    except Exception as exc:  # healpy raises ValueError, TypeError or its own errors for a bad map
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a HEALPix map ({why})") from None
    return np.atleast_2d(np.asarray(maps, dtype=np.float64)), header


def header_convention(header: dict, given: str, where: str = "pol_convention") -> str:
    """The polarization convention of a map: the one given, checked against the header's ``POLCCONV``.

    Parameters
    ----------
    header : dict
        FITS keywords of the map.
    given : {'header', 'COSMO', 'IAU'}
        The configured convention (``'header'``: the header's, COSMO without one).
    where : str
        Name of the setting, for the message.

    Raises
    ------
    ConfigError
        When the header states a convention other than ``given``, or one deepcmb does not know.
    """
    stated = str(header.get("POLCCONV", "")).strip().upper() or None
    if stated is not None and stated not in POL_CONVENTIONS:
        raise ConfigError(f"{where}: the maps' header has POLCCONV = {stated!r}, expected COSMO or IAU")
    if given != "header" and stated is not None and given != stated:
        raise ConfigError(f"{where}: {given} given but the maps' header has POLCCONV = {stated}")
    return (stated or "COSMO") if given == "header" else given


# -- sampling -------------------------------------------------------------------------------------
def default_lmax(nside: int, geom: FlatSkyGeometry) -> int:
    """``min(3 nside - 1, floor(pi / pixel))``: the HEALPix map's band limit, at most the patch's Nyquist
    multipole."""
    return int(min(3 * nside - 1, np.floor(geom.ell_nyquist)))


def healpix_alm(maps: np.ndarray, spin: int, lmax: int, maxiter: int = MAXITER, epsilon: float = EPSILON,
                nthreads: int = 0) -> tuple[np.ndarray, float]:
    """Harmonic coefficients of HEALPix RING maps by iterative least squares (``ducc0.sht.pseudo_analysis``).

    Parameters
    ----------
    maps : ndarray, shape (1, npix) for spin 0 or (2, npix) for spin 2 (Q, U, COSMO)
    spin : {0, 2}
    lmax : int
        Band limit (``mmax = lmax``).
    maxiter : int
        Iterations at most.
    epsilon : float
        Relative tolerance of the solver.
    nthreads : int
        Threads (0: all cores).

    Returns
    -------
    alm : ndarray, complex128, shape (ncomp, (lmax + 1)(lmax + 2)/2)
        healpy ordering and sign convention (``T``, or ``E, B``).
    residual : float
        Norm of map minus synthesis over the norm of the map.
    """
    import ducc0

    nside = int(round(np.sqrt(maps.shape[-1] / 12)))
    info = ducc0.healpix.Healpix_Base(nside, "RING").sht_info()
    maps = np.ascontiguousarray(maps, dtype=np.float64)
    out = ducc0.sht.pseudo_analysis(map=maps, spin=spin, lmax=lmax, mmax=lmax, maxiter=maxiter, epsilon=epsilon,
                                    nthreads=nthreads, **info)
    return out[0], float(out[3])


def sample_nearest(m: np.ndarray, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Values of a HEALPix RING map at the pixels containing the given positions (nearest pixel).

    Parameters
    ----------
    m : ndarray, shape (npix,)
    theta, phi : ndarray
        Colatitude and longitude, radians.

    Returns
    -------
    ndarray, shape ``theta.shape``
    """
    import healpy as hp

    return np.asarray(m)[hp.ang2pix(hp.npix2nside(np.size(m)), theta, phi)]


def hits_to_ivar(hits: np.ndarray, uk_arcmin_per_hit: float) -> np.ndarray:
    """Inverse noise variance per HEALPix pixel from hit counts: ``hits * Omega_hp / sigma_1^2``.

    Parameters
    ----------
    hits : ndarray, shape (npix,)
        Hits (or any weight proportional to the inverse variance), >= 0.
    uk_arcmin_per_hit : float
        Depth :math:`\\sigma_1` of one hit, µK-arcmin.

    Returns
    -------
    ndarray, shape (npix,)
        1/µK² per HEALPix pixel (the unit of ``--ivar``).
    """
    import healpy as hp

    area = hp.nside2pixarea(hp.npix2nside(np.size(hits)), degrees=True) * 3600.0
    return np.asarray(hits, dtype=np.float64) * area / uk_arcmin_per_hit**2


def mask_fractions(mask: np.ndarray, geom: FlatSkyGeometry, centres: ArrayLike) -> np.ndarray:
    """Mean of a HEALPix mask over each patch (nearest pixel), shape (npatch,)."""
    return np.array([sample_nearest(mask, *curvedsky.gnomonic_positions(geom, lon, lat)).mean()
                     for lon, lat in np.asarray(centres, dtype=float).reshape(-1, 2)])


def cutout(maps: Sequence[np.ndarray] | np.ndarray, geom: FlatSkyGeometry, centres: ArrayLike, *,
           mask: np.ndarray | None = None, ivar: np.ndarray | None = None, pol_convention: str = "COSMO",
           lmax: int | None = None, maxiter: int = MAXITER, epsilon: float = EPSILON, nthreads: int = 0,
           progress: bool = False) -> Patches:
    """Cut gnomonic patches from HEALPix maps (method in the module notes).

    Parameters
    ----------
    maps : sequence of ndarray
        HEALPix RING maps ``(Q, U)`` or ``(T, Q, U)`` of one ``nside``, µK; ``healpy.UNSEEN`` and
        non-finite pixels are set to 0 (mask them).
    geom : FlatSkyGeometry
        Shape and pixel size of every patch.
    centres : array_like, shape (npatch, 2)
        ``(lon, lat)`` of the patch centres, degrees.
    mask : ndarray, optional
        HEALPix map (any nside) in [0, 1].
    ivar : ndarray, optional
        HEALPix map (any nside) of the inverse noise variance of each of Q and U per HEALPix pixel,
        1/µK² (:func:`hits_to_ivar` makes one from hit counts).
    pol_convention : {'COSMO', 'IAU'}
        Convention of the input U.
    lmax : int, optional
        Band limit of the analysis (default :func:`default_lmax`), at most ``3 nside - 1``.
    maxiter, epsilon : int, float
        Of the least-squares analysis (:func:`healpix_alm`); ``epsilon`` also sets the accuracy of the
        evaluation at the pixel centres.
    nthreads : int
        Threads (0: all cores).
    progress : bool
        Report the patches done (:class:`~deepcmb.progress.Progress`).

    Returns
    -------
    Patches
        Q, U in the patch frame (COSMO sense), mask and ``ivar_p`` per patch pixel (1/µK²).

    Raises
    ------
    InputError
        For maps of unequal sizes or sizes that are not those of HEALPix maps.
    ConfigError
        For an ``lmax`` above ``3 nside - 1`` or an unknown convention.
    """
    import healpy as hp

    try:
        maps = np.array(maps, dtype=np.float64, ndmin=2)  # a copy: UNSEEN and IAU are changed in place
    except ValueError:
        raise InputError("cutout: the maps (Q, U) or (T, Q, U) must have one size") from None
    if maps.ndim != 2 or maps.shape[0] not in (2, 3):
        raise InputError(f"cutout: expected maps (Q, U) or (T, Q, U) of shape (2 or 3, npix), got {maps.shape}")
    sources = {name: np.asarray(m) for name, m in (("maps", maps[0]), ("mask", mask), ("ivar_p", ivar))
               if m is not None}
    for name, m in sources.items():
        if m.ndim != 1 or not hp.isnpixok(m.size):
            raise InputError(f"cutout: {name} of shape {m.shape} is not a HEALPix map")
    if pol_convention not in POL_CONVENTIONS:
        raise ConfigError(f"pol_convention: must be one of {', '.join(POL_CONVENTIONS)}, got {pol_convention!r}")
    nside = hp.npix2nside(maps.shape[-1])
    lmax = default_lmax(nside, geom) if lmax is None else int(lmax)
    if not 2 <= lmax <= 3 * nside - 1:
        raise ConfigError(f"lmax: must be between 2 and 3 nside - 1 = {3 * nside - 1} for maps of nside {nside}, "
                          f"got {lmax}")
    bad = ~np.isfinite(maps) | (maps == hp.UNSEEN)
    if bad.any():
        log.warning("%d pixels UNSEEN or not finite set to 0 before the harmonic analysis; the mask should exclude "
                    "them", int(bad.any(axis=0).sum()))
        maps[bad] = 0.0
    if pol_convention == "IAU":
        maps[-1] *= -1.0
    log.info("harmonic analysis of nside %d to lmax %d (at most %d iterations per field)", nside, lmax, maxiter)
    residual = {}
    eb, residual["spin2"] = healpix_alm(maps[-2:], 2, lmax, maxiter, epsilon, nthreads)
    tlm = None
    if maps.shape[0] == 3:
        tlm, residual["spin0"] = healpix_alm(maps[:1], 0, lmax, maxiter, epsilon, nthreads)
        tlm = tlm[0]
    log.info("harmonic analysis done: relative residual %s", ", ".join(f"{k} {v:.2g}" for k, v in residual.items()))

    centres = np.asarray(centres, dtype=float).reshape(-1, 2)
    npatch = centres.shape[0]
    names = (["T"] if tlm is not None else []) + ["Q", "U"]
    out = {name: np.empty((npatch,) + geom.shape) for name in names}
    sampled = {name: np.empty((npatch,) + geom.shape) for name in sources if name != "maps"}
    with Progress(npatch, "cutout", "patch", enabled=progress, log=log) as bar:
        for start in range(0, npatch, BATCH):
            block = slice(start, min(start + BATCH, npatch))
            theta, phi, psi = curvedsky.patch_pointing(geom, centres[block])
            out["Q"][block], out["U"][block] = curvedsky.eb2qu_points(eb[0], eb[1], theta, phi, psi, epsilon=epsilon,
                                                                      nthreads=nthreads)
            if tlm is not None:
                out["T"][block] = curvedsky.alm2points(tlm, theta, phi, epsilon=epsilon, nthreads=nthreads)
            for name, dest in sampled.items():
                dest[block] = sample_nearest(sources[name], theta, phi)
            bar.update(block.stop - block.start)
    ivar_p = sampled.get("ivar_p")
    if ivar_p is not None:  # 1/uK^2 per HEALPix pixel -> per patch pixel, at the same depth
        area_arcmin2 = hp.nside2pixarea(hp.npix2nside(sources["ivar_p"].size), degrees=True) * 3600.0
        ivar_p *= geom.pixel_arcmin**2 / area_arcmin2
    return Patches(out, geom, centres, nside, lmax, residual, mask=sampled.get("mask"), ivar_p=ivar_p)


def _weight_map(path: str | Path) -> np.ndarray:
    """The first column of a HEALPix FITS map, with ``UNSEEN`` and non-finite pixels set to 0 (no data)."""
    import healpy as hp

    w = read_healpix(path)[0][0]
    w[~np.isfinite(w) | (w == hp.UNSEEN)] = 0.0
    return w


def _centres(cfg: dict) -> np.ndarray:
    """The configured patch centres, degrees, shape (n, 2)."""
    import healpy as hp

    if cfg["centres"] is not None:
        centres = np.asarray(cfg["centres"], dtype=float)
        if np.any(np.abs(centres[:, 1]) > 90.0):
            raise ConfigError(f"centres: latitudes must be within [-90, 90] degrees, got {centres[:, 1].tolist()}")
        return centres
    if not hp.isnsideok(cfg["patch_nside"], nest=True):
        raise ConfigError(f"patch_nside: must be a power of two, got {cfg['patch_nside']}")
    centres = curvedsky.patch_centres(cfg["patch_nside"], cfg["max_abs_lat_deg"])
    if not len(centres):
        raise ConfigError(f"max_abs_lat_deg: no centre of patch_nside {cfg['patch_nside']} within "
                          f"|lat| <= {cfg['max_abs_lat_deg']:g}")
    return centres


def run_cutout(config: dict | None, inputs: dict, out: str | Path, *, overwrite: bool = False,
               progress: bool = True) -> Path:
    """Cut patches from HEALPix maps into an observation file.

    Parameters
    ----------
    config : dict or None
        Settings over :data:`SCHEMA`.
    inputs : dict
        ``maps``: HEALPix FITS file with columns ``(I, Q, U)`` or ``(Q, U)`` in µK (more columns are
        ignored); optional ``mask`` (HEALPix, [0, 1]), ``hits`` (hit counts, with
        ``noise_uk_arcmin_per_hit``) or ``ivar`` (inverse noise variance of Q and U per HEALPix pixel,
        1/µK²). Each map may have its own nside.
    out : str or Path
        Observation file (:mod:`deepcmb.io.observations`).
    overwrite : bool
        Replace an existing output.
    progress : bool
        Report the patches done.

    Returns
    -------
    Path
    """
    cfg = resolve(config, SCHEMA)
    check_output_file(out, overwrite)
    geom = FlatSkyGeometry(tuple(cfg["shape"]), cfg["pixel_arcmin"])
    if cfg["beam_fwhm_arcmin"] is None:
        raise ConfigError("beam_fwhm_arcmin: required: the Gaussian beam FWHM of the input maps, arcmin (0: none)")
    if "hits" in inputs and "ivar" in inputs:
        raise ConfigError("--hits and --ivar: give one of them")
    if "hits" in inputs and cfg["noise_uk_arcmin_per_hit"] is None:
        raise ConfigError("noise_uk_arcmin_per_hit: required with --hits (the Q/U depth of one hit, uK-arcmin)")
    if cfg["noise_p_uk_arcmin"] is None and not {"hits", "ivar"} & set(inputs):
        raise ConfigError("noise_p_uk_arcmin: required without --hits or --ivar (white noise of Q and U, uK-arcmin)")
    centres = _centres(cfg)

    stokes, header = read_healpix(inputs["maps"], None)
    convention = header_convention(header, cfg["pol_convention"])
    mask = _weight_map(inputs["mask"]) if "mask" in inputs else None
    if mask is not None:
        if mask.min() < 0 or mask.max() > 1:
            raise InputError(f"{inputs['mask']}: values in [{mask.min():g}, {mask.max():g}], outside [0, 1]")
        keep = mask_fractions(mask, geom, centres) >= cfg["min_mask_fraction"]
        if not keep.any():
            raise ConfigError(f"min_mask_fraction: no patch has a mean mask >= {cfg['min_mask_fraction']:g}")
        log.info("%d of %d patches kept (mean mask >= %g)", int(keep.sum()), len(keep), cfg["min_mask_fraction"])
        centres = centres[keep]
    ivar = None
    if "hits" in inputs or "ivar" in inputs:
        key = "hits" if "hits" in inputs else "ivar"
        w = _weight_map(inputs[key])
        if w.min() < 0:
            raise InputError(f"{inputs[key]}: negative values (min {w.min():g})")
        ivar = hits_to_ivar(w, cfg["noise_uk_arcmin_per_hit"]) if key == "hits" else w
    patches = cutout(stokes, geom, centres, mask=mask, ivar=ivar, pol_convention=convention, lmax=cfg["lmax"],
                     maxiter=cfg["maxiter"], epsilon=cfg["epsilon"], progress=progress)
    noise_p = cfg["noise_p_uk_arcmin"]
    if noise_p is None:
        noise_p = patches.median_depth()
        if noise_p is None:
            raise InputError(f"{inputs.get('hits') or inputs.get('ivar')}: no pixel of the patches has data (ivar 0)")
        log.info("noise level from the median inverse variance: %.4g uK-arcmin", noise_p)
    resolved = {**cfg, "pol_convention": convention, "lmax": patches.lmax, "noise_p_uk_arcmin": noise_p}
    attrs = {**provenance_attrs(resolved, "cutout"), "input_pol_convention": convention,
             "inputs": json.dumps({k: str(v) for k, v in sorted(inputs.items())})}
    return patches.write(out, beam_fwhm_arcmin=cfg["beam_fwhm_arcmin"], noise_p_uk_arcmin=noise_p,
                         noise_t_uk_arcmin=cfg["noise_t_uk_arcmin"], attrs=attrs, overwrite=overwrite)
