"""One simulated sample: cosmology spectra + seed -> lensed, observed maps and their truth.

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

if TYPE_CHECKING:
    from .cosmology import CMBSpectra
    from .geometry import FlatSkyGeometry

FIELDS = STORED
"""Every map a sample can carry (units and meaning in :data:`deepcmb.fields.FIELDS`). ``T, Q, U``:
observed (lensed, beam-convolved, noisy), µK; ``*_lensed``: noise-free lensed sky before the beam, µK;
``*_unlensed``: the unlensed sky, µK (``E``/``B`` as scalar maps, i.e. inverse Fourier transforms of the
E/B modes); ``phi``: lensing potential, rad²; ``kappa``: convergence, dimensionless."""

_COMPONENT = {"cmb": 0, "bmodes": 1, "phi": 2, "noise": 3}


def sample_rng(root_seed: int, index: int, component: str) -> np.random.Generator:
    """Random generator of one component of sample ``index``.

    Parameters
    ----------
    root_seed : int
        The run's root seed.
    index : int
        Sample index.
    component : {'cmb', 'bmodes', 'phi', 'noise'}
        Each component has its own stream, so switching one off leaves the others unchanged.
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

    Parameters
    ----------
    geom : FlatSkyGeometry
        Periodic patch.
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
    """

    def __init__(self, geom, spectra, instrument, lmax_cmb=None, lmax_phi=None, include_b=False,
                 epsilon=1e-6, nthreads=1):
        self.geom, self.instrument = geom, instrument
        self.include_b, self.epsilon, self.nthreads = include_b, epsilon, nthreads
        ell = geom.ell()
        tt, ee, te = (interp_spectrum(spectra.unlensed_cl(k), ell) for k in ("TT", "EE", "TE"))
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(tt > 0, te / np.sqrt(tt), 0.0)
        cmb = flatsky.band_mask(geom, lmax=lmax_cmb) * geom.pixel_rad
        self._amp_t = np.sqrt(np.maximum(tt, 0.0)) * cmb
        self._amp_te = a * cmb
        self._amp_e = np.sqrt(np.maximum(ee - a**2, 0.0)) * cmb
        self._amp_b = np.sqrt(np.maximum(interp_spectrum(spectra.unlensed_cl("BB"), ell), 0.0)) * cmb
        self._amp_phi = (np.sqrt(np.maximum(interp_spectrum(spectra.clpp, ell), 0.0))
                         * flatsky.band_mask(geom, lmax=lmax_phi) * geom.pixel_rad)
        lx, ly = geom.lxly()
        self._phi_ops = np.stack([1j * ly, 1j * lx, np.ones_like(ell), 0.5 * ell**2])
        self._beam = flatsky.gaussian_beam(instrument.beam_fwhm_arcmin, ell)
        self._spin2 = np.exp(2j * np.arctan2(*geom.lxly(real=False)[::-1]))
        self._to_grid = 1.0 / (geom.pixel_rad**2 * np.prod(geom.shape))

    def sample(self, root_seed: int, index: int, fields: Sequence[str] = FIELDS) -> dict[str, np.ndarray]:
        """One sample; see :func:`simulate_flat` for the arguments and the returned dict."""
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise ConfigError(f"simulation.fields: unknown field(s) {sorted(unknown)}; known: {', '.join(FIELDS)}")
        geom = self.geom
        white = _white(sample_rng(root_seed, index, "cmb"), (2,) + geom.shape)
        t_f = white[0] * self._amp_t
        e_f = white[0] * self._amp_te + white[1] * self._amp_e
        if self.include_b:
            b_f = _white(sample_rng(root_seed, index, "bmodes"), geom.shape) * self._amp_b
        else:
            b_f = np.zeros_like(e_f)
        phi_f = _white(sample_rng(root_seed, index, "phi"), geom.shape) * self._amp_phi
        dy, dx, phi, kappa = geom.fourier2map(self._phi_ops * phi_f)
        out = {"phi": phi, "kappa": kappa}

        wanted = set(fields)
        if wanted & {"T_unlensed", "Q_unlensed", "U_unlensed", "E_unlensed", "B_unlensed"}:
            t_unl, e_unl, b_unl = geom.fourier2map(np.stack([t_f, e_f, b_f]))
            q_unl, u_unl = geom.eb2qu(e_f, b_f)
            out.update(T_unlensed=t_unl, E_unlensed=e_unl, B_unlensed=b_unl, Q_unlensed=q_unl, U_unlensed=u_unl)
        if wanted & {"T", "Q", "U", "T_lensed", "Q_lensed", "U_lensed"}:
            grid = np.stack([_full_grid(t_f, geom.shape[1]),
                             (_full_grid(e_f, geom.shape[1]) + 1j * _full_grid(b_f, geom.shape[1])) * self._spin2])
            lensed = flatsky.lens_fourier_grid(geom, grid * self._to_grid, dy, dx, epsilon=self.epsilon,
                                               nthreads=self.nthreads)
            tqu = np.stack([lensed[0].real, lensed[1].real, lensed[1].imag])
            out.update(T_lensed=tqu[0], Q_lensed=tqu[1], U_lensed=tqu[2])
            if wanted & {"T", "Q", "U"}:
                out.update(observe(geom, tqu, self.instrument, sample_rng(root_seed, index, "noise"), self._beam))
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
                  epsilon: float = 1e-6, fields: Sequence[str] = FIELDS, nthreads: int = 1) -> dict[str, np.ndarray]:
    """Simulate one flat-sky sample with exact (NUFFT) lensing.

    A convenience wrapper: ``FlatSimulator(geom, spectra, instrument, ...).sample(root_seed, index,
    fields)``. To make many maps of one cosmology, build the :class:`FlatSimulator` once.

    Parameters
    ----------
    geom : FlatSkyGeometry
        Periodic patch.
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
        Names from :data:`FIELDS` to return.
    nthreads : int
        Threads for the NUFFT.

    Returns
    -------
    dict
        Field name -> ``float64`` map of shape ``geom.shape`` (units in :data:`FIELDS`).
    """
    sim = FlatSimulator(geom, spectra, instrument, lmax_cmb=lmax_cmb, lmax_phi=lmax_phi,
                        include_b=include_b, epsilon=epsilon, nthreads=nthreads)
    return sim.sample(root_seed, index, fields)


def observe(geom: FlatSkyGeometry, tqu: Sequence[np.ndarray], instrument: Instrument, rng: np.random.Generator,
            beam: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Convolve lensed ``(T, Q, U)`` maps with the beam and add white noise.

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
    tqu = np.asarray(tqu)
    if instrument.beam_fwhm_arcmin > 0:
        if beam is None:
            beam = flatsky.gaussian_beam(instrument.beam_fwhm_arcmin, geom.ell())
        tqu = geom.fourier2map(geom.map2fourier(tqu) * beam)
    depths = (instrument.noise_t_uk_arcmin, instrument.noise_p_uk_arcmin, instrument.noise_p_uk_arcmin)
    return {name: tqu[k] + flatsky.white_noise_map(geom, depths[k], rng) for k, name in enumerate("TQU")}
