"""One simulated sample: cosmology spectra + seed -> lensed, observed maps and their truth (and, for a
survey, :mod:`deepcmb.survey`, the map's mask and noise map).

:func:`simulate_flat` is the plain Python entry point a training pipeline can call on the fly; the
simulate stage calls it for every map. Randomness of sample ``i`` comes only from
``(root_seed, i)`` (see :func:`sample_rng`), so a map does not depend on which worker made it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import ducc0
import numpy as np

from . import flatsky
from .errors import ConfigError
from .geometry import interp_spectrum
from .fields import STORED
from .survey import box_cut

if TYPE_CHECKING:
    from .cosmology import CMBSpectra
    from .foregrounds import Foregrounds
    from .geometry import FlatSkyGeometry
    from .survey import Survey

FIELDS = STORED
"""Every map a sample can carry (units and meaning in :data:`deepcmb.fields.FIELDS`). ``T, Q, U``:
observed (lensed, beam-convolved, noisy), µK; ``*_lensed``: noise-free lensed sky before the beam, µK;
``*_unlensed``: the unlensed sky, µK (``E``/``B`` as scalar maps, i.e. inverse Fourier transforms of the
E/B modes); ``phi``: lensing potential, rad²; ``kappa``: convergence, dimensionless."""

_COMPONENT = {"cmb": 0, "bmodes": 1, "phi": 2, "noise": 3, "mask": 4, "depth": 5, "sources": 6, "dust": 7,
              "map_mean_field": 8}


def sample_rng(root_seed: int, index: int, component: str) -> np.random.Generator:
    """Random generator of one component of sample ``index``.

    Parameters
    ----------
    root_seed : int
        The run's root seed.
    index : int
        Sample index.
    component : {'cmb', 'bmodes', 'phi', 'noise', 'mask', 'depth', 'sources', 'dust', 'map_mean_field'}
        Each component has its own stream, so switching one off leaves the others unchanged (``mask``:
        the holes of the survey mask; ``depth``: the noise map, :mod:`deepcmb.survey`; ``sources``,
        ``dust``: the foreground residuals, :mod:`deepcmb.foregrounds`; ``map_mean_field``: the
        simulations of the MAP estimator's mean field, :mod:`deepcmb.iterative.meanfield`).
    """
    ss = np.random.SeedSequence(int(root_seed), spawn_key=(int(index), _COMPONENT[component]))
    return np.random.default_rng(ss)


@dataclass(frozen=True)
class Instrument:
    """Beam and white noise of an experiment.

    Parameters
    ----------
    beam_fwhm_arcmin : float
        Gaussian beam full width at half maximum, arcmin (0: no beam).
    noise_t_uk_arcmin, noise_p_uk_arcmin : float
        White-noise depth in temperature and in each of Q, U, µK-arcmin.
    """

    beam_fwhm_arcmin: float = 1.0
    noise_t_uk_arcmin: float = 1.0 / np.sqrt(2.0)
    noise_p_uk_arcmin: float = 1.0

    def __post_init__(self):
        for name in ("beam_fwhm_arcmin", "noise_t_uk_arcmin", "noise_p_uk_arcmin"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ConfigError(f"instrument.{name}: must be a non-negative number, got {value!r}")


class FlatSimulator:
    """Flat-sky simulator of one cosmology and instrument, with everything per-map-independent precomputed.

    Building one costs a few milliseconds (spectra interpolated on the Fourier grid, Cholesky factors,
    beam); each :meth:`sample` then costs about 10 ms for a 128 x 128 map on one core. Build one per
    cosmology and reuse it for all of its maps.

    With a non-periodic ``survey`` (:attr:`deepcmb.survey.Survey.periodic` false) every map is the
    central ``geom.shape`` part of a periodic box ``survey.pad`` times larger per side
    (:meth:`~deepcmb.survey.Survey.box`): the fields are drawn and lensed exactly on the box, the beam
    is applied there, and the noise is added to the cut map, which then holds lenses larger than
    itself and is not periodic. A survey with a mask or a noise map adds them to the maps
    (:mod:`deepcmb.survey`). Foreground residuals (:mod:`deepcmb.foregrounds`) are added to the lensed
    sky of the observed maps before the beam; the ``*_lensed`` fields stay the CMB's.

    Parameters
    ----------
    geom : FlatSkyGeometry
        The maps' geometry (the periodic patch itself, unless ``survey`` says otherwise).
    spectra : CMBSpectra
        Unlensed CMB spectra and lensing power of the cosmology.
    instrument : Instrument
        Beam and noise applied to the lensed sky.
    lmax_cmb, lmax_phi : float, optional
        Band limits of the unlensed CMB and of phi (default: the grid's Nyquist multipole).
    include_b : bool
        Draw unlensed B modes from ``spectra`` (zero for scalar-only spectra).
    epsilon : float
        NUFFT accuracy (relative; the measured error is about 10x smaller).
    nthreads : int
        Threads for the NUFFT.
    survey : Survey, optional
        Mask, noise map and periodicity (default: periodic maps, no mask, uniform white noise).
    foregrounds : Foregrounds, optional
        Point-source and dust-like residuals in the observed maps (default: none).

    Attributes
    ----------
    box : FlatSkyGeometry
        The periodic box the maps are simulated on (``geom`` itself for periodic maps).
    """

    def __init__(self, geom, spectra, instrument, lmax_cmb=None, lmax_phi=None, include_b=False,
                 epsilon=1e-6, nthreads=1, survey=None, foregrounds=None):
        self.geom, self.instrument, self.survey = geom, instrument, survey
        self.foregrounds = foregrounds if foregrounds is not None and foregrounds.any else None
        self.include_b, self.epsilon, self.nthreads = include_b, epsilon, nthreads
        box = self.box = geom if survey is None else survey.box(geom)
        self._cut = box_cut(box.shape, geom.shape)
        self._on_patch = None if survey is None else survey.on(geom, periodic=survey.periodic)
        ell = box.ell()
        tt, ee, te = (interp_spectrum(spectra.unlensed_cl(k), ell) for k in ("TT", "EE", "TE"))
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(tt > 0, te / np.sqrt(tt), 0.0)
        cmb = flatsky.band_mask(box, lmax=lmax_cmb) * box.pixel_rad
        self._amp_t = np.sqrt(np.maximum(tt, 0.0)) * cmb
        self._amp_te = a * cmb
        self._amp_e = np.sqrt(np.maximum(ee - a**2, 0.0)) * cmb
        self._amp_b = np.sqrt(np.maximum(interp_spectrum(spectra.unlensed_cl("BB"), ell), 0.0)) * cmb
        self._amp_phi = (np.sqrt(np.maximum(interp_spectrum(spectra.clpp, ell), 0.0))
                         * flatsky.band_mask(box, lmax=lmax_phi) * box.pixel_rad)
        lx, ly = box.lxly()
        self._phi_ops = np.stack([1j * ly, 1j * lx, np.ones_like(ell), 0.5 * ell**2])
        self._beam = flatsky.gaussian_beam(instrument.beam_fwhm_arcmin, ell)
        self._spin2 = np.exp(2j * np.arctan2(*box.lxly(real=False)[::-1]))
        self._to_grid = 1.0 / (box.pixel_rad**2 * np.prod(box.shape))

    @property
    def products(self) -> tuple[str, ...]:
        """What :meth:`sample` can return: :data:`FIELDS` and the survey's maps
        (:data:`deepcmb.survey.SURVEY_MAPS`: ``mask``, 1, and ``ivar_p``, 1/µK²)."""
        return FIELDS + (() if self.survey is None else self.survey.maps)

    def sample(self, root_seed: int, index: int, fields: Sequence[str] = FIELDS) -> dict[str, np.ndarray]:
        """One sample; see :func:`simulate_flat` for the arguments and the returned dict (``fields`` may
        also name the survey's maps, :attr:`products`)."""
        unknown = set(fields) - set(self.products)
        if unknown:
            raise ConfigError(f"simulation.fields: unknown field(s) {sorted(unknown)}; "
                              f"known: {', '.join(self.products)}")
        box = self.box
        white = _white(sample_rng(root_seed, index, "cmb"), (2,) + box.shape)
        t_f = white[0] * self._amp_t
        e_f = white[0] * self._amp_te + white[1] * self._amp_e
        if self.include_b:
            b_f = _white(sample_rng(root_seed, index, "bmodes"), box.shape) * self._amp_b
        else:
            b_f = np.zeros_like(e_f)
        phi_f = _white(sample_rng(root_seed, index, "phi"), box.shape) * self._amp_phi
        dy, dx, phi, kappa = box.fourier2map(self._phi_ops * phi_f)
        on_box = {"phi": phi, "kappa": kappa}

        wanted = set(fields)
        if wanted & {"T_unlensed", "Q_unlensed", "U_unlensed", "E_unlensed", "B_unlensed"}:
            t_unl, e_unl, b_unl = box.fourier2map(np.stack([t_f, e_f, b_f]))
            q_unl, u_unl = box.eb2qu(e_f, b_f)
            on_box.update(T_unlensed=t_unl, E_unlensed=e_unl, B_unlensed=b_unl, Q_unlensed=q_unl, U_unlensed=u_unl)
        observed = None
        if wanted & {"T", "Q", "U", "T_lensed", "Q_lensed", "U_lensed"}:
            grid = np.stack([_full_grid(t_f, box.shape[1]),
                             (_full_grid(e_f, box.shape[1]) + 1j * _full_grid(b_f, box.shape[1])) * self._spin2])
            lensed = flatsky.lens_fourier_grid(box, grid * self._to_grid, dy, dx, epsilon=self.epsilon,
                                               nthreads=self.nthreads)
            tqu = np.stack([lensed[0].real, lensed[1].real, lensed[1].imag])
            on_box.update(T_lensed=tqu[0], Q_lensed=tqu[1], U_lensed=tqu[2])
            if wanted & {"T", "Q", "U"}:
                if self.foregrounds is not None:  # residuals on the sky, observed as the CMB is
                    tqu = tqu + self.foregrounds.tqu(box, sample_rng(root_seed, index, "sources"),
                                                     sample_rng(root_seed, index, "dust"))
                observed = convolve_beam(box, tqu, self.instrument, self._beam)
        out = {name: m[self._cut] for name, m in on_box.items()}
        if "mask" in wanted:
            out["mask"] = self._on_patch.mask(sample_rng(root_seed, index, "mask"))
        ivar_p = None
        if "ivar_p" in self.products and wanted & {"ivar_p", "T", "Q", "U"}:
            ivar_p = out["ivar_p"] = self._on_patch.ivar_p(self.instrument.noise_p_uk_arcmin,
                                                           sample_rng(root_seed, index, "depth"))
        if observed is not None:
            out.update(add_noise(self.geom, observed[(slice(None),) + self._cut], self.instrument,
                                 sample_rng(root_seed, index, "noise"), ivar_p))
        return {name: out[name] for name in fields}


def _white(rng, shape):
    """rfft modes of unit-variance white noise maps: ``<|w(l)|^2> = N_pix``."""
    return ducc0.fft.r2c(rng.standard_normal(shape), axes=(-2, -1), forward=True)


def _full_grid(rfft_modes, nx):
    """Extend rfft-layout modes of a real field to the full fft2 layout by Hermitian symmetry."""
    ny, nxr = rfft_modes.shape
    full = np.empty((ny, nx), dtype=complex)
    full[:, :nxr] = rfft_modes
    rows = (-np.arange(ny)) % ny
    full[:, nxr:] = np.conj(rfft_modes[rows][:, nx - np.arange(nxr, nx)])
    return full


def simulate_flat(geom: FlatSkyGeometry, spectra: CMBSpectra, instrument: Instrument, root_seed: int, index: int,
                  lmax_cmb: float | None = None, lmax_phi: float | None = None, include_b: bool = False,
                  epsilon: float = 1e-6, fields: Sequence[str] = FIELDS, nthreads: int = 1,
                  survey: Survey | None = None, foregrounds: Foregrounds | None = None) -> dict[str, np.ndarray]:
    """Simulate one flat-sky sample with exact (NUFFT) lensing.

    A convenience wrapper: ``FlatSimulator(geom, spectra, instrument, ...).sample(root_seed, index,
    fields)``. To make many maps of one cosmology, build the :class:`FlatSimulator` once.

    Parameters
    ----------
    geom : FlatSkyGeometry
        The map's geometry (a periodic patch, unless ``survey`` says otherwise).
    spectra : CMBSpectra
        Unlensed CMB spectra and lensing power of the cosmology.
    instrument : Instrument
        Beam and noise applied to the lensed sky.
    root_seed, index : int
        Seed of the run and index of the sample; see :func:`sample_rng`.
    lmax_cmb, lmax_phi : float, optional
        Band limits of the unlensed CMB and of phi (default: the grid's Nyquist multipole).
    include_b : bool
        Draw unlensed B modes from ``spectra`` (zero for scalar-only spectra).
    epsilon : float
        NUFFT accuracy.
    fields : sequence of str
        Names from :data:`FIELDS` to return, and the survey's maps (``mask``, ``ivar_p``) if it has them.
    nthreads : int
        Threads for the NUFFT.
    survey : Survey, optional
        Mask, noise map and periodicity (:class:`FlatSimulator`; default: a periodic map, no mask,
        uniform white noise).
    foregrounds : Foregrounds, optional
        Foreground residuals in the observed maps (:class:`FlatSimulator`; default: none).

    Returns
    -------
    dict
        Field name -> ``float64`` map of shape ``geom.shape`` (units in :data:`FIELDS`).
    """
    sim = FlatSimulator(geom, spectra, instrument, lmax_cmb=lmax_cmb, lmax_phi=lmax_phi,
                        include_b=include_b, epsilon=epsilon, nthreads=nthreads, survey=survey,
                        foregrounds=foregrounds)
    return sim.sample(root_seed, index, fields)


def convolve_beam(geom: FlatSkyGeometry, maps: np.ndarray, instrument: Instrument,
                  beam: np.ndarray | None = None) -> np.ndarray:
    """Maps ``(..., ny, nx)`` of a periodic patch convolved with the instrument's Gaussian beam (none for
    ``beam_fwhm_arcmin = 0``); ``beam``: the beam on the rfft grid, if already computed."""
    maps = np.asarray(maps)
    if instrument.beam_fwhm_arcmin > 0:
        if beam is None:
            beam = flatsky.gaussian_beam(instrument.beam_fwhm_arcmin, geom.ell())
        maps = geom.fourier2map(geom.map2fourier(maps) * beam)
    return maps


def add_noise(geom: FlatSkyGeometry, tqu: Sequence[np.ndarray], instrument: Instrument, rng: np.random.Generator,
              ivar_p: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Add the instrument's noise to beam-convolved ``(T, Q, U)`` maps.

    Parameters
    ----------
    geom : FlatSkyGeometry
    tqu : sequence of ndarray
        Three maps of shape ``geom.shape`` in µK.
    instrument : Instrument
    rng : numpy.random.Generator
        Noise stream: one unit normal map ``r`` each for T, Q, U, drawn in this order.
    ivar_p : ndarray, optional
        Inverse noise variance of each of Q and U per pixel, 1/µK², shape ``geom.shape``. Without it the
        noise is white, of rms ``noise_uk_arcmin / pixel_arcmin`` µK per pixel
        (:func:`deepcmb.flatsky.white_noise_map`); with it :math:`n_{Q,U} = r / \\sqrt{\\mathrm{ivar}_P}`
        and :math:`n_T = (\\Delta_T / \\Delta_P)\\, r / \\sqrt{\\mathrm{ivar}_P}`.

    Returns
    -------
    dict
        ``{'T', 'Q', 'U'}`` observed maps in µK.
    """
    if ivar_p is None:
        depths = (instrument.noise_t_uk_arcmin, instrument.noise_p_uk_arcmin, instrument.noise_p_uk_arcmin)
        return {name: tqu[k] + flatsky.white_noise_map(geom, depths[k], rng) for k, name in enumerate("TQU")}
    rms = 1.0 / np.sqrt(ivar_p)
    scale = (instrument.noise_t_uk_arcmin / instrument.noise_p_uk_arcmin, 1.0, 1.0)
    return {name: tqu[k] + rng.standard_normal(geom.shape) * (scale[k] * rms) for k, name in enumerate("TQU")}


def observe(geom: FlatSkyGeometry, tqu: Sequence[np.ndarray], instrument: Instrument, rng: np.random.Generator,
            beam: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Convolve lensed ``(T, Q, U)`` maps of a periodic patch with the beam and add white noise
    (:func:`convolve_beam`, then :func:`add_noise`).

    Parameters
    ----------
    geom : FlatSkyGeometry
    tqu : sequence of ndarray
        Three maps of shape ``geom.shape`` in µK.
    instrument : Instrument
    rng : numpy.random.Generator
        Noise stream (T, Q, U drawn in this order).
    beam : ndarray, optional
        The beam on the rfft grid, if already computed.

    Returns
    -------
    dict
        ``{'T', 'Q', 'U'}`` observed maps in µK.
    """
    return add_noise(geom, convolve_beam(geom, tqu, instrument, beam), instrument, rng)
