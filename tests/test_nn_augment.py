"""Spin-2 symmetry augmentation: E stays E, B flips under reflections, and lensing commutes with it.

NumPy only (no Keras import): the transform rules of :mod:`deepcmb.nn.augment` are physics.
"""

import numpy as np
import pytest

from deepcmb import flatsky
from deepcmb.geometry import FlatSkyGeometry
from deepcmb.nn.augment import allowed_transforms, field_sign, transform_maps, transform_pixels
from deepcmb.sample import Instrument, simulate_flat

FIELDS = ("T_unlensed", "Q_unlensed", "U_unlensed", "phi", "kappa", "T_lensed", "Q_lensed", "U_lensed",
          "E_unlensed")


@pytest.fixture(scope="module")
def sample(fiducial):
    geom = FlatSkyGeometry((48, 48), 2.34375)
    return geom, simulate_flat(geom, fiducial, Instrument(1.0, 0.7, 1.0), root_seed=7, index=3, fields=FIELDS)


def _lens(geom, unl, epsilon=1e-10):
    dy, dx = flatsky.deflection(geom, geom.map2fourier(unl["phi"]))
    out = flatsky.lens_nufft(geom, np.stack([unl["T_unlensed"], unl["Q_unlensed"] + 1j * unl["U_unlensed"]]),
                             dy, dx, epsilon=epsilon)
    return {"T_lensed": out[0].real, "Q_lensed": out[1].real, "U_lensed": out[1].imag}


@pytest.mark.parametrize("k", range(8))
def test_lensing_commutes_with_every_symmetry(sample, k):
    """Simulate-then-transform equals transform-then-lens, for each of the 8 symmetries of the grid."""
    geom, s = sample
    unl = transform_maps({n: s[n] for n in ("T_unlensed", "Q_unlensed", "U_unlensed", "phi")}, k)
    lensed = _lens(geom, unl)
    expected = transform_maps({n: s[n] for n in ("T_lensed", "Q_lensed", "U_lensed")}, k)
    for name in lensed:
        scale = np.std(expected[name])
        np.testing.assert_allclose(lensed[name], expected[name], atol=1e-6 * scale, err_msg=name)
    # kappa = -lap(phi)/2 of the transformed phi is the transformed kappa
    kappa = geom.fourier2map(0.5 * geom.ell() ** 2 * geom.map2fourier(unl["phi"]))
    np.testing.assert_allclose(kappa, transform_maps({"kappa": s["kappa"]}, k)["kappa"],
                               atol=1e-9 * np.std(s["kappa"]))


def test_rotating_q_u_as_scalars_breaks_lensing(sample):
    """Control: a quarter turn without the spin-2 sign gives lensed maps that do not match."""
    geom, s = sample
    naive = {n: transform_pixels(s[n], 1) for n in ("T_unlensed", "Q_unlensed", "U_unlensed", "phi")}
    lensed = _lens(geom, naive)
    expected = transform_maps({"Q_lensed": s["Q_lensed"]}, 1)["Q_lensed"]
    assert np.std(lensed["Q_lensed"] - expected) > np.std(expected)


@pytest.mark.parametrize("k", range(8))
def test_e_is_a_scalar_and_b_a_pseudo_scalar(sample, k):
    geom, s = sample
    # E and B are undefined at l = 0, and Nyquist-edge modes have no rotated partner on the grid
    keep = (geom.ell() > 0) & (geom.ell() < 0.9 * geom.ell_nyquist)
    q = geom.fourier2map(geom.map2fourier(s["Q_lensed"]) * keep)
    u = geom.fourier2map(geom.map2fourier(s["U_lensed"]) * keep)
    e, b = geom.qu2eb_maps(q, u)
    t = transform_maps({"Q": q, "U": u}, k)
    e2, b2 = geom.qu2eb_maps(t["Q"], t["U"])
    assert np.std(b) > 0.01 * np.std(e)  # lensing made B modes: the check below is not trivial
    np.testing.assert_allclose(e2, transform_pixels(e, k), atol=1e-10 * np.std(e))
    np.testing.assert_allclose(b2, (-1) ** (k // 4) * transform_pixels(b, k), atol=1e-10 * np.std(e))
    # the network's E and B input channels follow the same rules under augmentation
    teb = transform_maps({"E": e, "B": b}, k)
    np.testing.assert_allclose(teb["E"], e2, atol=1e-10 * np.std(e))
    np.testing.assert_allclose(teb["B"], b2, atol=1e-10 * np.std(e))
    # the unlensed E map of the simulation is the E of the unlensed Q/U, and moves as a scalar
    tu = transform_maps({"Q_unlensed": s["Q_unlensed"], "U_unlensed": s["U_unlensed"],
                         "E_unlensed": s["E_unlensed"]}, k)
    e_unl = geom.fourier2map(geom.qu2eb(tu["Q_unlensed"], tu["U_unlensed"])[0])
    np.testing.assert_allclose(e_unl, tu["E_unlensed"], atol=1e-9 * np.std(e_unl))


def test_transform_rules_and_group_structure():
    rng = np.random.default_rng(0)
    maps = {"Q": rng.normal(size=(6, 6)), "U": rng.normal(size=(6, 6)), "kappa": rng.normal(size=(6, 6))}
    assert [field_sign("Q", k) for k in range(8)] == [1, -1, 1, -1, 1, -1, 1, -1]
    assert [field_sign("U", k) for k in range(8)] == [1, -1, 1, -1, -1, 1, -1, 1]
    assert field_sign("B_unlensed", 4) == -1 and field_sign("kappa_qe", 5) == 1
    four = maps
    for _ in range(4):
        four = transform_maps(four, 1)
    for name in maps:  # four quarter turns are the identity, a reflection is an involution
        np.testing.assert_array_equal(four[name], maps[name])
        np.testing.assert_array_equal(transform_maps(transform_maps(maps, 4), 4)[name], maps[name])
    assert allowed_transforms((8, 8)) == list(range(8))
    assert allowed_transforms((8, 16)) == [0, 2, 4, 6]
    with pytest.raises(ValueError, match="phi_lensed"):
        field_sign("phi_lensed", 1)
