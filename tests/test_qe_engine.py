"""Quadratic estimators: declarations, FFT engine against direct sums, analytic identities, API and errors."""

import numpy as np
import pytest

from deepcmb.errors import ConfigError, InputError
from deepcmb.geometry import FlatSkyGeometry, interp_spectrum
from deepcmb.qe import COMBINATIONS, ESTIMATORS, QuadraticEstimator, cosine_window, reconstruct_qe
from deepcmb.qe import direct, engine
from deepcmb.qe.filtering import grid_spectra, inverse_variance_filters
from deepcmb.sample import Instrument, simulate_flat

INSTRUMENT = Instrument(beam_fwhm_arcmin=1.0, noise_t_uk_arcmin=1.0 / np.sqrt(2.0), noise_p_uk_arcmin=1.0)


@pytest.fixture(scope="module")
def small():
    """A small non-square grid (24 x 20 pixels of 20 arcmin) for direct O(N_pix^2) sums."""
    return FlatSkyGeometry((24, 20), 20.0)


@pytest.fixture(scope="module")
def small_setup(small, fiducial):
    filters = inverse_variance_filters(small, fiducial.lensed, Instrument(5.0, 10.0, 14.0), 30, 500)
    wcls = grid_spectra(small, fiducial.lensed)
    # a response different from the weights, so that the test would see them swapped
    rcls = grid_spectra(small, fiducial.unlensed)
    return filters, wcls, rcls


def _closed_form(name, l1, l2, cl):
    """Hu & Okamoto (2002) response functions written with vectors (this package's B-mode sign)."""
    L = l1 + l2
    n1, n2 = np.hypot(*l1), np.hypot(*l2)
    p1, p2 = np.arctan2(l1[1], l1[0]), np.arctan2(l2[1], l2[0])
    d1, d2 = L[0] * l1[0] + L[1] * l1[1], L[0] * l2[0] + L[1] * l2[1]
    c = {k: (lambda k: (lambda n: np.interp(n, np.arange(cl[k].size), cl[k])))(k) for k in cl}
    cos, sin = np.cos(2 * (p1 - p2)), np.sin(2 * (p1 - p2))
    return {
        "TT": c["TT"](n1) * d1 + c["TT"](n2) * d2,
        "TE": c["TE"](n1) * cos * d1 + c["TE"](n2) * d2,
        "EE": (c["EE"](n1) * d1 + c["EE"](n2) * d2) * cos,
        "EB": (c["EE"](n1) * d1 + c["BB"](n2) * d2) * sin,
        "TB": c["TE"](n1) * d1 * sin,
    }[name]


def _declared(name, l1, l2, cl):
    """Evaluate a declaration term by term at the wavevectors l1, l2 (no FFT, no grid)."""
    L = l1 + l2

    def leg(leg_, l):
        n = np.hypot(*l)
        out = np.ones_like(n, dtype=complex)
        if leg_.cl is not None:
            out = out * np.interp(n, np.arange(cl[leg_.cl].size), cl[leg_.cl])
        phi = np.arctan2(l[1], l[0])
        if leg_.angle == "c":
            out = out * np.cos(2 * phi)
        elif leg_.angle == "s":
            out = out * np.sin(2 * phi)
        if leg_.grad is not None:
            out = out * 1j * l[leg_.grad]
        return out

    return sum(t.coef * leg(t.leg1, l1) * leg(t.leg2, l2) * (-1j * L[t.j]) for t in ESTIMATORS[name].terms)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_declaration_matches_hu_okamoto(name, fiducial):
    rng = np.random.default_rng(1)
    l1, l2 = rng.uniform(-3000, 3000, (2, 2, 500))
    cl = dict(zip(("TT", "EE", "BB", "TE"), fiducial.lensed))
    cl["BB"] = fiducial.lensed[1] * 0.3  # a large BB so that the sign of its term matters
    want = _closed_form(name, l1, l2, cl)
    got = _declared(name, l1, l2, cl)
    np.testing.assert_allclose(got.imag, 0.0, atol=1e-9 * np.abs(want).max())
    np.testing.assert_allclose(got.real, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_fft_response_equals_direct_sum(name, small, small_setup):
    filters, wcls, rcls = small_setup
    factors = engine.FourierFactors(small, filters, wcls, rcls)
    fft = engine.response(factors, name)
    ref = direct.direct_response(small, filters, wcls, rcls, name)
    assert np.abs(ref).max() > 0
    np.testing.assert_allclose(fft, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_fft_noise_covariance_equals_direct_sum(small, small_setup):
    filters, wcls, _ = small_setup
    factors = engine.FourierFactors(small, filters, wcls, wcls)
    names = list(ESTIMATORS)
    cov = engine.noise_covariance(factors, names)
    for i, a in enumerate(names):
        for k, b in enumerate(names):
            ref = direct.direct_noise(small, filters, wcls, a, b)
            scale = np.sqrt(np.abs(cov[i, i]).max() * np.abs(cov[k, k]).max())
            np.testing.assert_allclose(cov[i, k], ref, rtol=0, atol=1e-12 * scale, err_msg=f"{a} x {b}")
    # parity: the EB and TB estimators do not correlate with TT, TE, EE
    assert np.all(cov[:3, 3:] == 0)


def test_geometry_transforms_match(geom128):
    rng = np.random.default_rng(0)
    m = rng.standard_normal((2,) + geom128.shape)
    np.testing.assert_allclose(engine.to_fourier(geom128, m), geom128.map2fourier(m), rtol=1e-12, atol=1e-20)
    f = geom128.map2fourier(m)
    np.testing.assert_allclose(engine.to_map(geom128, f), m, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["TT", "EE", "EB", "TB"])
def test_optimal_weights_normalisation_equals_n0(name, geom128, fiducial):
    """Analytic identity: with inverse-variance weights matching the response, A_L = N0_L."""
    qe = QuadraticEstimator(geom128, fiducial, INSTRUMENT, name, response="lensed")
    band = qe.band
    norm = 1.0 / qe.responses[0][band]  # A_L = 1 / R_L
    np.testing.assert_allclose(qe.n0_phi[band], norm, rtol=1e-10)


def test_te_diagonal_filter_is_suboptimal_but_consistent(geom128, fiducial):
    qe = QuadraticEstimator(geom128, fiducial, INSTRUMENT, "TE", response="lensed")
    ratio = qe.n0_phi[qe.band] * qe.responses[0][qe.band]
    assert np.all(np.isfinite(ratio)) and ratio.min() > 0.5 and ratio.max() < 2.0
    assert np.abs(ratio - 1).max() > 1e-3  # not optimal: the T-E correlation is not inverted


def test_minimum_variance_combination(geom128, fiducial):
    mv = QuadraticEstimator(geom128, fiducial, INSTRUMENT, "MV", response="lensed")
    band = mv.band
    np.testing.assert_allclose(mv.weights[:, band].sum(axis=0), 1.0, rtol=1e-12)
    diag = np.stack([mv.n0_covariance[i, i] for i in range(len(mv.names))])
    assert np.all(mv.n0_phi[band] <= diag[:, band].min(axis=0) * (1 + 1e-12))
    # N0_MV = w^T N w with the MV weights
    w = mv.weights[:, band]
    quad = np.einsum("ik,ijk,jk->k", w, mv.n0_covariance[:, :, band], w)
    np.testing.assert_allclose(quad, mv.n0_phi[band], rtol=1e-9)
    assert mv.mv_covariance == "full"
    assert COMBINATIONS["MV"] == mv.names


def test_diagonal_mv_says_so(geom128, fiducial):
    with pytest.warns(UserWarning, match="diagonal"):
        qe = QuadraticEstimator(geom128, fiducial, INSTRUMENT, "MV", response="lensed", mv_covariance="diagonal")
    assert "neglected" in qe.mv_covariance


@pytest.fixture(scope="module")
def one_sim(geom128, fiducial):
    return simulate_flat(geom128, fiducial, INSTRUMENT, 3, 0, fields=("T", "Q", "U", "kappa"))


def test_wiener_option_applies_c_over_c_plus_n0(geom128, fiducial, one_sim):
    qe = QuadraticEstimator(geom128, fiducial, INSTRUMENT, "EB")
    plain = qe.estimate(one_sim)["kappa"]
    wf = qe.estimate(one_sim, wiener=True)["kappa"]
    filt = qe.wiener_filter()
    assert filt.max() < 1 and filt.min() >= 0
    np.testing.assert_allclose(geom128.map2fourier(wf), filt * geom128.map2fourier(plain),
                               atol=1e-9 * np.abs(geom128.map2fourier(plain)).max())
    clkk = 0.25 * geom128.ell() ** 4 * interp_spectrum(fiducial.clpp, geom128.ell())
    np.testing.assert_allclose(filt[qe.band], (clkk / (clkk + qe.n0_kappa))[qe.band])


def test_reconstruct_qe_api(geom128, fiducial, one_sim):
    out = reconstruct_qe(geom128, {"Q": one_sim["Q"], "U": one_sim["U"]}, fiducial, INSTRUMENT, estimator="pol")
    assert out["kappa"].shape == geom128.shape and out["phi"].shape == geom128.shape
    assert out["estimator"] == "MV_POL" and out["estimators"] == ("EE", "EB")
    assert out["n0"].shape == out["L"].shape == (out["edges"].size - 1,)
    assert np.all(out["n0"] > 0) and np.all(np.isfinite(out["n0"]))
    # phi and kappa agree: kappa = L^2 phi / 2
    kf, pf = geom128.map2fourier(out["kappa"]), geom128.map2fourier(out["phi"])
    np.testing.assert_allclose(kf, 0.5 * geom128.ell() ** 2 * pf, atol=1e-10 * np.abs(kf).max())
    # modes outside Lmin..Lmax are zero
    ell = geom128.ell()
    assert np.abs(kf[(ell > out["Lmax"]) | (ell < out["Lmin"])]).max() < 1e-10 * np.abs(kf).max()
    # a stack of maps gives the same result map by map
    stack = {k: np.stack([one_sim[k], one_sim[k][::-1]]) for k in "TQU"}
    qe = QuadraticEstimator(geom128, fiducial, INSTRUMENT, "MV")
    many = qe.estimate(stack)["kappa"]
    np.testing.assert_allclose(many[0], qe.estimate(one_sim)["kappa"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(many[1], qe.estimate({k: v[1] for k, v in stack.items()})["kappa"],
                               rtol=1e-12, atol=1e-15)


def test_bilinear_estimate_and_single_precision(geom128, fiducial, one_sim):
    qe = QuadraticEstimator(geom128, fiducial, INSTRUMENT, "MV")
    auto, _ = qe.phi_fourier(one_sim)
    same, _ = qe.phi_fourier(one_sim, one_sim)
    np.testing.assert_allclose(same, auto, rtol=1e-10, atol=1e-12 * np.abs(auto).max())
    single = QuadraticEstimator(geom128, fiducial, INSTRUMENT, "MV", precision="single")
    k64 = qe.estimate(one_sim)["kappa"]
    k32 = single.estimate(one_sim)["kappa"]
    assert np.abs(k32 - k64).max() < 1e-4 * np.abs(k64).max()


def test_window_and_mean_field_arguments(geom128, fiducial, one_sim):
    qe = QuadraticEstimator(geom128, fiducial, INSTRUMENT, "EB")
    w = cosine_window(geom128, 60.0)
    assert w.min() >= 0 and w.max() == 1 and w[0, 0] < 1e-3
    mf = qe.mean_field({k: np.stack([one_sim[k]] * 2) for k in "QU"}, window=w)
    out = qe.estimate(one_sim, window=w, mean_field=mf)["kappa"]
    np.testing.assert_allclose(out, 0.0, atol=1e-12 * np.abs(mf).max())  # its own mean field
    with pytest.raises(InputError, match="window"):
        qe.estimate(one_sim, window=w[:10])
    with pytest.raises(InputError, match="mean_field"):
        qe.estimate(one_sim, mean_field=np.zeros((3, 3)))


# -- bad input ------------------------------------------------------------------------------------
def test_bad_maps_give_clear_errors(geom128, fiducial, one_sim):
    qe = QuadraticEstimator(geom128, fiducial, INSTRUMENT, "MV")
    with pytest.raises(InputError, match=r"maps\['T'\]: shape \(64, 64\)"):
        qe.estimate({"T": np.zeros((64, 64)), "Q": one_sim["Q"], "U": one_sim["U"]})
    bad = dict(one_sim, Q=one_sim["Q"].copy())
    bad["Q"][5, 7] = np.nan
    with pytest.raises(InputError, match=r"maps\['Q'\]: 1 non-finite"):
        qe.estimate(bad)
    with pytest.raises(InputError, match=r"missing map\(s\) \['T'\]"):
        qe.estimate({"Q": one_sim["Q"], "U": one_sim["U"]})
    with pytest.raises(InputError, match="differs"):
        qe.estimate({"T": one_sim["T"], "Q": np.stack([one_sim["Q"]] * 2), "U": one_sim["U"]})
    with pytest.raises(InputError, match="dict"):
        qe.estimate(one_sim["T"])


def test_bad_configuration_gives_clear_errors(geom128, fiducial):
    with pytest.raises(ConfigError, match="outside the map's Fourier band"):
        QuadraticEstimator(geom128, fiducial, INSTRUMENT, "EB", lmax=5000)
    with pytest.raises(ConfigError, match="lmin < lmax"):
        QuadraticEstimator(geom128, fiducial, INSTRUMENT, "EB", lmin=3000, lmax=2000)
    with pytest.raises(ConfigError, match="unknown estimator"):
        QuadraticEstimator(geom128, fiducial, INSTRUMENT, "XY")
    with pytest.raises(ConfigError, match="Lmin < Lmax"):
        QuadraticEstimator(geom128, fiducial, INSTRUMENT, "EB", Lmin=100, Lmax=50)
    with pytest.raises(ConfigError, match="instrument"):
        QuadraticEstimator(geom128, fiducial, {"beam_fwhm_arcmin": 1.0}, "EB")
    with pytest.raises(ConfigError, match="response"):
        QuadraticEstimator(geom128, fiducial, INSTRUMENT, "EB", response="unlensed")
    with pytest.raises(ConfigError, match="mv_covariance"):
        QuadraticEstimator(geom128, fiducial, INSTRUMENT, "MV", mv_covariance="none")
