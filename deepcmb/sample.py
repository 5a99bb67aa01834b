"""One simulated sample: cosmology spectra + seed -> lensed, observed maps and their truth.

:func:`simulate_flat` is the plain Python entry point a training pipeline can call on the fly; the
simulate stage calls it for every map. Randomness of sample ``i`` comes only from
``(root_seed, i)`` (see :func:`sample_rng`), so a map does not depend on which worker made it.
"""

from dataclasses import dataclass

import numpy as np

from . import flatsky
from .errors import ConfigError

FIELDS = (
    "T", "Q", "U",
    "T_lensed", "Q_lensed", "U_lensed",
    "T_unlensed", "E_unlensed", "B_unlensed", "Q_unlensed", "U_unlensed",
    "phi", "kappa",
)
"""Every map a sample can carry. ``T, Q, U``: observed (lensed, beam-convolved, noisy), µK;
``*_lensed``: noise-free lensed sky before the beam, µK; ``*_unlensed``: the unlensed sky, µK
(``E``/``B`` as scalar maps, i.e. inverse Fourier transforms of the E/B modes); ``phi``: lensing
potential, rad²; ``kappa``: convergence, dimensionless."""

_COMPONENT = {"cmb": 0, "bmodes": 1, "phi": 2, "noise": 3}


def sample_rng(root_seed, index, component):
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


def simulate_flat(geom, spectra, instrument, root_seed, index, lmax_cmb=None, lmax_phi=None,
                  include_b=False, epsilon=1e-7, fields=FIELDS, nthreads=1):
    """Simulate one flat-sky sample with exact (NUFFT) lensing.

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
        Threads for FFT/NUFFT.

    Returns
    -------
    dict
        Field name -> ``float64`` map of shape ``geom.shape`` (units in :data:`FIELDS`).
    """
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ConfigError(f"simulation.fields: unknown field(s) {sorted(unknown)}; known: {', '.join(FIELDS)}")
    rng_cmb = sample_rng(root_seed, index, "cmb")
    white_t, white_e = flatsky.white_fourier(geom, rng_cmb), flatsky.white_fourier(geom, rng_cmb)
    t_f, e_f = flatsky.correlated_te_fourier(
        geom, spectra.unlensed_cl("TT"), spectra.unlensed_cl("EE"), spectra.unlensed_cl("TE"),
        white_t, white_e, lmax=lmax_cmb,
    )
    if include_b:
        b_f = flatsky.gaussian_fourier(geom, spectra.unlensed_cl("BB"),
                                       flatsky.white_fourier(geom, sample_rng(root_seed, index, "bmodes")),
                                       lmax=lmax_cmb)
    else:
        b_f = np.zeros_like(e_f)
    phi_f = flatsky.gaussian_fourier(
        geom, spectra.clpp, flatsky.white_fourier(geom, sample_rng(root_seed, index, "phi")), lmax=lmax_phi
    )

    t_unl = geom.fourier2map(t_f)
    q_unl, u_unl = geom.eb2qu(e_f, b_f)
    dy, dx = flatsky.deflection(geom, phi_f)
    lensed = flatsky.lens_nufft(geom, np.stack([t_unl, q_unl + 1j * u_unl]), dy, dx,
                                epsilon=epsilon, nthreads=nthreads)
    t_len, q_len, u_len = lensed[0].real, lensed[1].real, lensed[1].imag

    out = {
        "T_lensed": t_len, "Q_lensed": q_len, "U_lensed": u_len,
        "T_unlensed": t_unl, "Q_unlensed": q_unl, "U_unlensed": u_unl,
        "E_unlensed": geom.fourier2map(e_f), "B_unlensed": geom.fourier2map(b_f),
        "phi": geom.fourier2map(phi_f), "kappa": geom.fourier2map(flatsky.kappa_from_phi(geom, phi_f)),
    }
    if {"T", "Q", "U"} & set(fields):
        out.update(observe(geom, (t_len, q_len, u_len), instrument, sample_rng(root_seed, index, "noise")))
    return {name: out[name] for name in fields}


def observe(geom, tqu, instrument, rng):
    """Convolve lensed ``(T, Q, U)`` maps with the beam and add white noise.

    Parameters
    ----------
    geom : FlatSkyGeometry
    tqu : tuple of ndarray
        Three maps of shape ``geom.shape`` in µK.
    instrument : Instrument
    rng : numpy.random.Generator
        Noise stream (T, Q, U drawn in this order).

    Returns
    -------
    dict
        ``{'T', 'Q', 'U'}`` observed maps in µK.
    """
    beam = flatsky.gaussian_beam(instrument.beam_fwhm_arcmin, geom.ell())
    smoothed = geom.fourier2map(geom.map2fourier(np.stack(tqu)) * beam)
    depths = (instrument.noise_t_uk_arcmin, instrument.noise_p_uk_arcmin, instrument.noise_p_uk_arcmin)
    noise = [flatsky.white_noise_map(geom, d, rng) for d in depths]
    return {name: smoothed[k] + noise[k] for k, name in enumerate("TQU")}
