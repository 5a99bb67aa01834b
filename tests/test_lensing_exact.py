"""Exactness of NUFFT lensing against a brute-force evaluation of the Fourier series."""

import numpy as np
import pytest

from deepcmb import flatsky
from deepcmb.geometry import ARCMIN, FlatSkyGeometry
from deepcmb.sample import sample_rng


@pytest.mark.parametrize("deflection_scale", [1.0, 10.0])
def test_nufft_matches_bruteforce(fiducial, deflection_scale):
    """T and Q+iU lensed by NUFFT equal the direct Fourier sum at the deflected points to < 1e-5.

    ``deflection_scale`` = 10 exaggerates the deflections (rms 6.4 arcmin instead of 0.64 on this 1.25 deg box, several pixels) so that
    points move far from the grid and wrap around the periodic box.
    """
    geom = FlatSkyGeometry((32, 32), 2.34375)
    rng = sample_rng(3, 0, "cmb")
    t, e = flatsky.correlated_te_fourier(geom, fiducial.unlensed_cl("TT"), fiducial.unlensed_cl("EE"),
                                         fiducial.unlensed_cl("TE"), flatsky.white_fourier(geom, rng),
                                         flatsky.white_fourier(geom, rng))
    b = flatsky.gaussian_fourier(geom, fiducial.unlensed_cl("EE") * 0.1, flatsky.white_fourier(geom, rng))
    phi = flatsky.gaussian_fourier(geom, fiducial.clpp, flatsky.white_fourier(geom, rng)) * deflection_scale
    dy, dx = flatsky.deflection(geom, phi)
    rms_arcmin = np.sqrt(np.mean(dy**2 + dx**2)) / ARCMIN
    assert rms_arcmin > 0.5 * deflection_scale, rms_arcmin
    q, u = geom.eb2qu(e, b)
    fields = np.stack([geom.fourier2map(t), q + 1j * u])
    fast = flatsky.lens_nufft(geom, fields, dy, dx, epsilon=1e-7)
    ref = flatsky.lens_bruteforce(geom, fields, dy, dx)
    for k in range(2):
        rel = np.max(np.abs(fast[k] - ref[k])) / np.max(np.abs(ref[k]))
        assert rel < 1e-5, rel
    # the lensed field really moved: it differs from the unlensed one by far more than the error
    assert np.max(np.abs(ref[0] - fields[0])) > 1e-2 * np.max(np.abs(fields[0]))


def test_zero_deflection_is_identity(fiducial):
    """With phi = 0 lensing returns the unlensed maps (pixel centres are exact grid nodes)."""
    geom = FlatSkyGeometry((16, 24), 3.0)
    t = flatsky.gaussian_fourier(geom, fiducial.unlensed_cl("TT"), flatsky.white_fourier(geom, sample_rng(1, 0, "cmb")))
    tmap = geom.fourier2map(t)
    zero = np.zeros(geom.shape)
    out = flatsky.lens_nufft(geom, tmap[None], zero, zero, epsilon=1e-10)
    np.testing.assert_allclose(out[0].real, tmap, atol=1e-8 * np.abs(tmap).max())


def test_constant_deflection_is_a_shift(fiducial):
    """A constant deflection of a whole number of pixels shifts the map (np.roll)."""
    geom = FlatSkyGeometry((16, 16), 2.0)
    t = flatsky.gaussian_fourier(geom, fiducial.unlensed_cl("TT"), flatsky.white_fourier(geom, sample_rng(1, 1, "cmb")))
    tmap = geom.fourier2map(t)
    dy = np.full(geom.shape, 2 * geom.pixel_rad)
    dx = np.full(geom.shape, -3 * geom.pixel_rad)
    out = flatsky.lens_nufft(geom, tmap[None], dy, dx, epsilon=1e-10)[0].real
    np.testing.assert_allclose(out, np.roll(tmap, (-2, 3), axis=(0, 1)), atol=1e-8 * np.abs(tmap).max())
