"""Physics of the flat-sky simulations against CAMB.

Expectations are binned over exactly the Fourier modes of each bin (``bin_theory``), with the
flat-sky mode ``|l|`` standing for the curved-sky multipole ``|l| - 1/2``
(``deepcmb.geometry.interp_spectrum``).

* 400 sims of the DeepCMB 5 deg patch (128 x 128 at 2.34375'): lensed TT and EE within 1.5 % and BB
  within 5 % of CAMB's full-sky lensed spectra for 500 <= l < 3000; kappa power within 3 % of CAMB's
  C_L^kk (2000 kappa maps, so that the lowest bin's sample variance is below 1 %); noise power within
  2 % of its configured level; observed TT = B_l^2 C_l + N_l.
* On a smaller periodic patch the missing large-scale lenses matter: on 64 x 64 pixels (2.5 deg, no
  lens below L = 144) lensed BB is 3-7 % below CAMB. ``deepcmb.patch_theory.periodic_lensed_cls`` computes
  that patch-correct expectation, and 1600 such sims must match it within 2.5 %.
"""

import numpy as np
import pytest

from deepcmb.geometry import FlatSkyGeometry
from deepcmb.sample import Instrument
from deepcmb.validation import kappa_ratios, simulate_many, spectrum_ratios

INSTRUMENT = Instrument(beam_fwhm_arcmin=1.0, noise_t_uk_arcmin=1.0 / np.sqrt(2.0), noise_p_uk_arcmin=1.0)


@pytest.fixture(scope="module")
def ratios(fiducial, geom128):
    maps = simulate_many(geom128, fiducial, INSTRUMENT, 400, seed=2024)
    return spectrum_ratios(geom128, fiducial, INSTRUMENT, maps)


def test_lensed_spectra_match_camb(ratios):
    assert np.all(np.abs(ratios["TT"] - 1) < 0.015), ratios["TT"]
    assert np.all(np.abs(ratios["EE"] - 1) < 0.015), ratios["EE"]
    assert np.all(np.abs(ratios["BB"] - 1) < 0.05), ratios["BB"]


def test_lensed_bb_on_a_small_patch_matches_the_periodic_patch_expectation(fiducial):
    geom = FlatSkyGeometry((64, 64), 2.34375)
    r = spectrum_ratios(geom, fiducial, INSTRUMENT, simulate_many(geom, fiducial, INSTRUMENT, 1600, seed=64))
    assert np.all(np.abs(r["BB_patch"] - 1) < 0.025), r["BB_patch"]
    # the small patch really loses lensing B power, and the expectation explains most of the loss
    assert np.mean(1 - r["BB"]) > 0.03, r["BB"]
    assert np.mean(np.abs(r["BB_patch"] - 1)) < 0.25 * np.mean(np.abs(r["BB"] - 1))


def test_kappa_spectrum_matches_camb(fiducial, geom128):
    """Binned kappa power within 3 % of CAMB's C_L^kk = [L(L+1)]^2 C_L^pp / 4 for 100 <= L < 2000."""
    ratio = kappa_ratios(geom128, fiducial, INSTRUMENT, 2000, seed=77)["kk"]
    assert np.all(np.abs(ratio - 1) < 0.03), ratio


def test_noise_spectrum_matches_configuration(ratios):
    """Observed minus beam-convolved lensed maps is white noise of the configured depths (2 %)."""
    for name in ("noise_T", "noise_Q", "noise_U"):
        assert np.all(np.abs(ratios[name] - 1) < 0.02), (name, ratios[name])


def test_beam_applied_once_with_the_right_width(ratios):
    """Observed TT = B_l^2 lensed TT + N_l."""
    assert np.all(np.abs(ratios["TT_observed"] - 1) < 0.015), ratios["TT_observed"]
