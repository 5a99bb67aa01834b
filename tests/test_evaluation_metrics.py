"""Figures of merit of the evaluation on Gaussian fields of known spectrum (no CAMB, no files)."""

import numpy as np
import pytest

from deepcmb import binning as sp
from deepcmb.evaluation import metrics
from deepcmb.geometry import FlatSkyGeometry, interp_spectrum

GEOM = FlatSkyGeometry((64, 64), 2.34375)
EDGES = sp.linear_bins(100.0, 3000.0, 2 * GEOM.ell_fundamental)
N_MODES = sp.mode_counts(GEOM, EDGES)
ELL = np.arange(6001, dtype=float)
CL = 2e-7 / (1.0 + (ELL / 300.0) ** 2) ** 1.5  # a red, kappa-like spectrum (sr)
C_B = sp.bin_theory(GEOM, CL, EDGES)
PIXEL_SR = GEOM.pixel_rad**2


def gaussian_maps(cl, n, seed):
    """``n`` Gaussian maps of spectrum ``cl`` (tabulated on 0..lmax) on GEOM."""
    white = np.random.default_rng(seed).standard_normal((n,) + GEOM.shape)  # spectrum: PIXEL_SR
    f = GEOM.map2fourier(white) * np.sqrt(interp_spectrum(cl, GEOM.ell()) / PIXEL_SR)
    return GEOM.fourier2map(f)


def white_noise(level, n, seed):
    """White noise of spectrum ``level`` (sr)."""
    return np.sqrt(level / PIXEL_SR) * np.random.default_rng(seed).standard_normal((n,) + GEOM.shape)


def spectra_of(rec, truth):
    return (sp.binned_auto_spectrum(GEOM, rec, EDGES), sp.binned_cross_spectrum(GEOM, rec, truth, EDGES),
            sp.binned_auto_spectrum(GEOM, truth, EDGES))


@pytest.fixture(scope="module")
def kappa():
    return gaussian_maps(CL, 400, 1)


def test_truth_power_matches_theory_and_gaussian_scatter(kappa):
    auto, cross, truth = spectra_of(kappa, kappa)
    m = metrics.kappa_metrics(auto, cross, truth, np.broadcast_to(C_B, truth.shape), N_MODES, np.ones(len(C_B), bool),
                              20)
    # the mean over 400 maps matches the mode-averaged theory within sample variance
    assert np.all(np.abs(m["truth_mean"] - C_B) < 4 * m["truth_std"] / np.sqrt(400))
    # the per-map scatter is the Gaussian one: n_modes / 2 independent complex modes per bin
    np.testing.assert_allclose(m["truth_std"] / (C_B * np.sqrt(2.0 / N_MODES)), 1.0, atol=0.2)
    # a perfect reconstruction: rho = transfer = 1, no noise
    np.testing.assert_allclose(m["rho"], 1.0, rtol=1e-12)
    np.testing.assert_allclose(m["transfer"], 1.0, rtol=1e-12)
    assert np.all(np.abs(m["n_eff"]) < 1e-9 * C_B)


def test_noisy_reconstruction_rho_noise_and_jackknife(kappa):
    level = 2e-9  # white noise (sr): crosses the signal near L ~ 1500
    rec = kappa + white_noise(level, len(kappa), 2)
    auto, cross, truth = spectra_of(rec, kappa)
    clkk = np.broadcast_to(C_B, truth.shape)
    keep = EDGES[1:] <= 2000
    m = metrics.kappa_metrics(auto, cross, truth, clkk, N_MODES, keep, 20)
    expected = C_B / (C_B + level)
    assert np.all(np.abs(m["rho2"] - expected) < 4 * m["rho2_err"])
    assert np.all(np.abs(m["n_eff"] - level) < 4 * m["n_eff_err"])
    assert np.all(np.abs(m["transfer"] - 1) < 4 * m["transfer_err"])
    # the cumulative S/N stops at the cut, and accumulates (n_modes / 2) rho^4
    assert np.all(np.isnan(m["snr_cumulative"][~keep])) and np.all(np.isfinite(m["snr_cumulative"][keep]))
    np.testing.assert_allclose(m["snr_cumulative"][keep][-1] ** 2, np.sum(N_MODES[keep] / 2 * m["rho"][keep] ** 4))
    # jackknife errors describe the scatter between independent sets of 25 maps
    sets = [metrics.kappa_metrics(auto[i], cross[i], truth[i], clkk[i], N_MODES, keep, 20)
            for i in np.array_split(np.arange(len(auto)), 16)]
    scatter = np.std([s["n_eff"] for s in sets], axis=0, ddof=1)
    jack = np.median([s["n_eff_err"] for s in sets], axis=0)
    assert np.all((jack / scatter > 0.5) & (jack / scatter < 2.0))


def test_snr_is_the_amplitude_error_of_one_map(kappa):
    """1 / snr_cumulative is the scatter of the optimal per-map estimate of the lensing amplitude."""
    level = 2e-9
    rec = kappa + white_noise(level, len(kappa), 3)
    auto, cross, truth = spectra_of(rec, kappa)
    m = metrics.kappa_metrics(auto, cross, truth, np.broadcast_to(C_B, truth.shape), N_MODES,
                              np.ones(len(C_B), bool), 20)
    fisher = N_MODES / 2 * (C_B / (C_B + level)) ** 2  # per bin, for A in C = A C_B
    amplitude = np.sum(fisher * (auto - level) / C_B, axis=1) / fisher.sum()
    np.testing.assert_allclose(np.std(amplitude, ddof=1) * m["snr_cumulative"][-1], 1.0, atol=0.2)
    assert abs(amplitude.mean() - 1) < 4 / m["snr_cumulative"][-1] / np.sqrt(len(auto))


def test_scaled_maps_give_their_transfer(kappa):
    auto, cross, truth = spectra_of(0.7 * kappa, kappa)
    clkk = np.broadcast_to(C_B, truth.shape)
    m = metrics.kappa_metrics(auto, cross, truth, clkk, N_MODES, np.ones(len(C_B), bool), 20)
    np.testing.assert_allclose(m["transfer"], 0.7, rtol=1e-12)
    np.testing.assert_allclose(m["rho"], 1.0, rtol=1e-12)
    assert np.all(m["transfer_err"] < 1e-12)
    # with noise, the effective noise is that of kappa_hat / T
    level = 1e-9
    auto, cross, truth = spectra_of(0.7 * kappa + white_noise(level, len(kappa), 4), kappa)
    m = metrics.kappa_metrics(auto, cross, truth, clkk, N_MODES, np.ones(len(C_B), bool), 20)
    assert np.all(np.abs(m["transfer"] - 0.7) < 4 * m["transfer_err"])
    assert np.all(np.abs(m["n_eff"] - level / 0.49) < 4 * m["n_eff_err"])


def test_jackknife_of_a_mean_is_the_standard_error():
    x = np.random.default_rng(5).normal(size=(30, 3))
    reps = metrics.delete_group_means(x, metrics.jackknife_groups(30, 30))
    np.testing.assert_allclose(metrics.jackknife_error(reps), x.std(axis=0, ddof=1) / np.sqrt(30), rtol=1e-12)
    assert len(metrics.jackknife_groups(5, 20)) == 5  # never more groups than maps
    assert np.all(np.isnan(metrics.jackknife_error(reps[:1])))


def test_cosmology_amplitude_follows_the_lensing_power():
    """Maps of a cosmology with half the lensing power reconstruct less power, as the model predicts."""
    level = 2e-9
    low, high = gaussian_maps(0.5 * CL, 200, 6), gaussian_maps(CL, 200, 7)
    truth = np.concatenate([low, high])
    rec = truth + white_noise(level, 400, 8)
    auto, cross, true = spectra_of(rec, truth)
    clkk = np.concatenate([np.broadcast_to(0.5 * C_B, (200, len(C_B))), np.broadcast_to(C_B, (200, len(C_B)))])
    keep = EDGES[1:] <= 2000
    a = metrics.kappa_metrics(auto, cross, true, clkk, N_MODES, keep, 20)
    res = [metrics.cosmology_amplitude(auto[sel], c, a["auto_mean"], a["transfer"], a["truth_mean"],
                                       a["clkk_theory"], keep)
           for sel, c in ((slice(0, 200), 0.5 * C_B), (slice(200, 400), C_B))]
    assert res[0]["amplitude"] < 1 < res[1]["amplitude"] and res[0]["n_maps"] == 200
    for r in res:
        assert r["amplitude_err"] > 0
        assert abs(r["amplitude"] - r["theory_amplitude"]) < 4 * r["amplitude_err"]
        assert (r["amplitude"] - 1) * (r["theory_amplitude"] - 1) > 0


def test_e_head_metrics():
    cl_e = 50.0 * (ELL + 1.0) ** -2.0  # µK² sr
    e = gaussian_maps(cl_e, 200, 9)
    level = 1e-6  # µK² sr
    e_hat = e + white_noise(level, 200, 10)
    c_b = sp.bin_theory(GEOM, cl_e, EDGES)
    m = metrics.e_metrics(sp.binned_auto_spectrum(GEOM, e_hat, EDGES), sp.binned_cross_spectrum(GEOM, e_hat, e, EDGES),
                          sp.binned_auto_spectrum(GEOM, e, EDGES), sp.binned_auto_spectrum(GEOM, e_hat - e, EDGES), 20)
    rho2_err = 2 * m["E_rho"] * m["E_rho_err"]
    assert np.all(np.abs(m["E_rho"] ** 2 - c_b / (c_b + level)) < 4 * rho2_err)
    assert np.all(np.abs(m["E_resid_mean"] - level) < 4 * m["E_resid_std"] / np.sqrt(200))
    assert np.all(np.abs(m["E_truth_mean"] / c_b - 1) < 4 * np.sqrt(2 / N_MODES / 200))
