"""Exactness of NUFFT lensing against a brute-force evaluation of the Fourier series."""

import numpy as np
import pytest

from deepcmb import flatsky
from deepcmb.geometry import ARCMIN, FlatSkyGeometry
from deepcmb.sample import FlatSimulator, Instrument

NOISELESS = Instrument(beam_fwhm_arcmin=0.0, noise_t_uk_arcmin=0.0, noise_p_uk_arcmin=0.0)


def _unlensed_and_deflection(geom, spectra, seed, scale=1.0):
    sim = FlatSimulator(geom, spectra, NOISELESS, include_b=True)
    s = sim.sample(seed, 0, fields=("T_unlensed", "Q_unlensed", "U_unlensed", "phi", "T_lensed", "Q_lensed",
                                    "U_lensed"))
    dy, dx = flatsky.deflection(geom, geom.map2fourier(s["phi"]) * scale)
    return s, np.stack([s["T_unlensed"], s["Q_unlensed"] + 1j * s["U_unlensed"]]), dy, dx


@pytest.mark.parametrize("deflection_scale", [1.0, 10.0])
def test_nufft_matches_bruteforce(fiducial, deflection_scale):
    """T and Q+iU lensed by NUFFT equal the direct Fourier sum at the deflected points to < 1e-5.

    ``deflection_scale`` = 10 exaggerates the deflections (rms 6.4 arcmin instead of 0.64 on this
    1.25 deg box, several pixels) so that points move far from the grid and wrap around the box.
    """
    geom = FlatSkyGeometry((32, 32), 2.34375)
    _, fields, dy, dx = _unlensed_and_deflection(geom, fiducial, 3, deflection_scale)
    rms_arcmin = np.sqrt(np.mean(dy**2 + dx**2)) / ARCMIN
    assert rms_arcmin > 0.5 * deflection_scale, rms_arcmin
    fast = flatsky.lens_nufft(geom, fields, dy, dx, epsilon=1e-6)
    ref = flatsky.lens_bruteforce(geom, fields, dy, dx)
    for k in range(2):
        rel = np.max(np.abs(fast[k] - ref[k])) / np.max(np.abs(ref[k]))
        assert rel < 1e-5, rel
    # the lensed field really moved: it differs from the unlensed one by far more than the error
    assert np.max(np.abs(ref[0] - fields[0])) > 1e-2 * np.max(np.abs(fields[0]))


def test_simulator_lensed_maps_are_exact(fiducial):
    """The simulator's lensed T, Q, U (built from Fourier modes directly) match brute force < 1e-5."""
    geom = FlatSkyGeometry((32, 32), 2.34375)
    s, fields, dy, dx = _unlensed_and_deflection(geom, fiducial, 5)
    ref = flatsky.lens_bruteforce(geom, fields, dy, dx)
    for got, want in ((s["T_lensed"], ref[0].real), (s["Q_lensed"], ref[1].real), (s["U_lensed"], ref[1].imag)):
        assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < 1e-5


def test_zero_deflection_is_identity(fiducial):
    """With phi = 0 lensing returns the unlensed maps (pixel centres are exact grid nodes)."""
    geom = FlatSkyGeometry((16, 24), 3.0)
    s, fields, _, _ = _unlensed_and_deflection(geom, fiducial, 1)
    zero = np.zeros(geom.shape)
    out = flatsky.lens_nufft(geom, fields, zero, zero, epsilon=1e-10)
    np.testing.assert_allclose(out[0].real, s["T_unlensed"], atol=1e-8 * np.abs(s["T_unlensed"]).max())


def test_constant_deflection_is_a_shift(fiducial):
    """A constant deflection of a whole number of pixels shifts the map (np.roll)."""
    geom = FlatSkyGeometry((16, 16), 2.0)
    s, fields, _, _ = _unlensed_and_deflection(geom, fiducial, 2)
    dy = np.full(geom.shape, 2 * geom.pixel_rad)
    dx = np.full(geom.shape, -3 * geom.pixel_rad)
    out = flatsky.lens_nufft(geom, fields, dy, dx, epsilon=1e-10)[0].real
    tmap = s["T_unlensed"]
    np.testing.assert_allclose(out, np.roll(tmap, (-2, 3), axis=(0, 1)), atol=1e-8 * np.abs(tmap).max())
