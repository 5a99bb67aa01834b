"""Quadratic estimators on non-periodic patches: apodisation and a simulation mean field.

Non-periodic 5 deg patches are cut from periodic 10 deg simulations (the situation of curved-sky
patches: the CMB does not wrap around). Half of the simulations estimate the mean field, the other
half are the "data".
"""

import numpy as np
import pytest

from deepcmb.geometry import FlatSkyGeometry
from deepcmb.qe import QuadraticEstimator, cosine_window, window_moment
from deepcmb.sample import FlatSimulator, Instrument
from deepcmb.binning import binned_auto_spectrum, binned_cross_spectrum

pytestmark = pytest.mark.slow

INSTRUMENT = Instrument(beam_fwhm_arcmin=1.0, noise_t_uk_arcmin=1.0 / np.sqrt(2.0), noise_p_uk_arcmin=1.0)
NSIM = 120
TAPER_ARCMIN = 60.0


@pytest.fixture(scope="module")
def patches(geom128, fiducial):
    big = FlatSkyGeometry((256, 256), geom128.pixel_arcmin)
    sim = FlatSimulator(big, fiducial, INSTRUMENT)
    maps = [sim.sample(31, i, fields=("T", "Q", "U", "kappa")) for i in range(NSIM)]
    cut = {k: np.stack([m[k][:128, :128] for m in maps]) for k in ("T", "Q", "U", "kappa")}
    half = NSIM // 2
    return {k: v[:half] for k, v in cut.items()}, {k: v[half:] for k, v in cut.items()}


@pytest.mark.parametrize("name", ["EB", "MV"])
def test_apodised_patch_with_mean_field_is_unbiased(name, geom128, fiducial, patches):
    """With a 1 deg cosine taper and the mean field subtracted, <k_hat k> = w2 C_kk within 5%, 250 <= L <= 2000."""
    mf_sims, data = patches
    window = cosine_window(geom128, TAPER_ARCMIN)
    qe = QuadraticEstimator(geom128, fiducial, INSTRUMENT, name)
    mf = qe.mean_field(mf_sims, window=window)
    kappa = qe.estimate(data, window=window, mean_field=mf)["kappa"]
    edges = np.array([250, 400, 550, 700, 1000, 1500, 2000.0])
    truth = binned_auto_spectrum(geom128, data["kappa"], edges).mean(axis=0)
    cross = binned_cross_spectrum(geom128, kappa, data["kappa"], edges).mean(axis=0)
    ratio = cross / (window_moment(window, 2) * truth)
    print(f"\n{name} apodised non-periodic cross/(w2 C) per bin {edges.astype(int).tolist()}: "
          f"{np.round(ratio, 3).tolist()}")
    np.testing.assert_allclose(ratio, 1.0, atol=0.05)


def test_mean_field_is_reproducible_and_needs_apodisation(geom128, fiducial, patches):
    """The mean field is a property of the patch (two independent halves agree), it is removed by
    subtraction, and without apodisation it is tens of times the lensing signal."""
    mf_sims, data = patches
    window = cosine_window(geom128, TAPER_ARCMIN)
    qe = QuadraticEstimator(geom128, fiducial, INSTRUMENT, "MV")
    edges = np.array([72.0, 250.0])
    truth = binned_auto_spectrum(geom128, data["kappa"], edges).mean()

    mf_a = qe.mean_field(mf_sims, window=window)
    mf_b = qe.mean_field(data, window=window)
    corr = (binned_cross_spectrum(geom128, mf_a, mf_b, edges)
            / np.sqrt(binned_auto_spectrum(geom128, mf_a, edges) * binned_auto_spectrum(geom128, mf_b, edges)))
    residual = binned_auto_spectrum(geom128, mf_b - mf_a, edges) / binned_auto_spectrum(geom128, mf_b, edges)
    power = binned_auto_spectrum(geom128, mf_a, edges)[0] / truth
    print(f"\nmean field (L 72-250, 1 deg taper): power/C_kk {power:.3f}, "
          f"correlation of halves {corr[0]:.3f}, residual power after subtraction {residual[0]:.3f}")
    assert corr[0] > 0.7
    assert residual[0] < 0.6

    raw = qe.mean_field(mf_sims)
    raw_power = binned_auto_spectrum(geom128, raw, edges)[0] / truth
    print(f"mean field without apodisation: power/C_kk {raw_power:.1f}")
    assert raw_power > 10
