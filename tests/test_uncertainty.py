"""Per-map uncertainties (deepcmb.uncertainty): the Gaussian posterior per mode, its coverage, the input
score, the calibrate stage, ``reconstruct --uncertainty`` and the coverage in the evaluation."""

import json

import h5py
import numpy as np
import pytest
import yaml

from deepcmb.cli import main
from deepcmb.geometry import FlatSkyGeometry
from deepcmb.uncertainty import posterior_samples
from deepcmb.uncertainty.coverage import NOMINAL, lowpass, mode_coverage, pixel_coverage
from deepcmb.uncertainty.modes import measure, ring_edges
from deepcmb.uncertainty.ood import THRESHOLD, reference

GEOM = FlatSkyGeometry((64, 64), 2.34375)
LMAX = 1000.0


def _field(geom, cl, rng, n):
    """``n`` Gaussian maps with power spectrum ``cl(L)`` (sr): E|k_L|^2 = area * cl."""
    white = geom.map2fourier(rng.standard_normal((n,) + geom.shape))
    return geom.fourier2map(white * np.sqrt(cl(geom.ell())) / geom.pixel_rad)


def _signal(L):
    return 2e-7 / (1.0 + (L / 300.0) ** 2)


def _toy(rng, n, transfer=0.8, noise=3e-8):
    """Truth and a biased, noisy linear estimate of it: k_hat = T k + n, white n of power ``noise``."""
    truth = _field(GEOM, _signal, rng, n)
    return truth, transfer * truth + _field(GEOM, lambda L: np.full_like(L, noise), rng, n)


def test_measured_posterior_is_the_wiener_filter_and_its_variance():
    rng = np.random.default_rng(1)
    truth, est = _toy(rng, 400)
    cal = measure(GEOM, est, truth, np.zeros(400, int), np.array([1.0]), LMAX)
    # ring-averaged expectations: a = T C / (T^2 C + N), R = area C N / (T^2 C + N)
    edges = ring_edges(GEOM, LMAX)
    L, T, N = GEOM.ell(), 0.8, 3e-8
    idx = np.digitize(L, edges) - 1
    for b in range(1, len(edges) - 1):
        cells = idx == b
        C = _signal(L[cells])
        a = np.mean(T * C * C) / np.mean(T**2 * C * C + N * C)  # regression over the modes of the ring
        r = GEOM.area * np.mean(C - a * T * C)
        modes = cells.sum() * 2 * 400
        assert abs(cal.transfer[0, b] / a - 1) < 6 / np.sqrt(modes) + 0.01
        assert abs(cal.residual[0, b] / r - 1) < 6 * np.sqrt(2 / modes) + 0.01


def test_coverage_is_nominal_for_a_calibrated_posterior_and_fails_for_an_overconfident_one():
    rng = np.random.default_rng(2)
    cal = measure(GEOM, *_toy(rng, 400)[::-1], np.zeros(400, int), np.array([1.0]), LMAX)
    # measured on maps with a third of the noise: the same estimator looks better than it is
    sharp = measure(GEOM, *_toy(rng, 400, noise=1e-8)[::-1], np.zeros(400, int), np.array([1.0]), LMAX)
    truth, est = _toy(rng, 300)
    truth_lp = lowpass(GEOM, truth, LMAX)
    edges = np.array([150.0, 450.0, 750.0, 1000.0])
    for c, good in ((cal, True), (sharp, False)):
        mean = c.posterior_mean(GEOM, est, 0)
        sigma = np.full(est.shape, c.pixel_sigma(GEOM, 0))
        pix = pixel_coverage(truth_lp, mean, sigma).mean(axis=0)
        modes = np.nanmean(mode_coverage(GEOM, truth, mean, c.mode_variance(GEOM, 0), edges), axis=0)
        if good:
            # 300 maps of ~100 modes each below LMAX: statistical errors ~0.003 (pixels) and ~0.005 (bins)
            assert abs(pix[0] - NOMINAL[1]) < 0.015 and abs(pix[1] - NOMINAL[2]) < 0.008
            assert np.all(np.abs(modes[:, 0] - NOMINAL[1]) < 0.02) and np.all(np.abs(modes[:, 1] - NOMINAL[2]) < 0.01)
        else:
            assert pix[0] < NOMINAL[1] - 0.05 and pix[1] < NOMINAL[2] - 0.03


def test_pixel_sigma_is_the_scatter_of_the_lowpassed_residual_and_of_the_samples():
    rng = np.random.default_rng(3)
    truth, est = _toy(rng, 400)
    cal = measure(GEOM, est, truth, np.zeros(400, int), np.array([1.0]), LMAX)
    resid = lowpass(GEOM, truth, LMAX) - cal.posterior_mean(GEOM, est, 0)
    sigma = cal.pixel_sigma(GEOM, 0)
    assert abs(resid.std() / sigma - 1) < 0.02  # in-sample: the definition of R, up to cross terms
    draws = cal.sample(GEOM, np.zeros(GEOM.shape), 0, 400, rng)
    assert abs(draws.std() / sigma - 1) < 0.03
    assert np.abs(lowpass(GEOM, draws, LMAX) - draws).max() < 1e-12 * sigma  # draws are band-limited


def test_score_flags_another_noise_level():
    rng = np.random.default_rng(4)

    def qu(noise, n):
        e = _field(GEOM, lambda L: 1e-4 * np.exp(-(L / 2500.0) ** 2) + noise, rng, n)
        b = _field(GEOM, lambda L: np.full_like(L, noise), rng, n)
        return GEOM.eb2qu(GEOM.map2fourier(e), GEOM.map2fourier(b))

    ref = reference(GEOM, *qu(1e-6, 300), n_bins=8)
    same = qu(1e-6, 100)
    assert 0.7 < np.median(ref.level_scores(GEOM, *same)) < 1.4  # S: about 1 for a map like the calibration's
    assert np.mean(ref.score(GEOM, *same) > THRESHOLD) < 0.05
    assert np.all(ref.score(GEOM, *qu(4e-6, 100)) > THRESHOLD)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("uq")
    base = {"n_maps": 160, "geometry": {"shape": [64, 64], "pixel_arcmin": 2.34375},
            "instrument": {"noise_p_uk_arcmin": [1.0]}, "simulation": {"fields": ["Q", "U", "kappa"], "block_size": 40}}
    out = {}
    for name, seed in (("cal", 31), ("test", 32)):
        (d / f"{name}.yaml").write_text(yaml.safe_dump({**base, "seed": seed}))
        out[name] = d / f"{name}.h5"
        assert main(["simulate", "--config", str(d / f"{name}.yaml"), "--out", str(out[name]), "--workers", "1",
                     "--quiet"]) == 0
    qe = ["reconstruct", "--method", "qe", "--estimator", "MV_POL", "--quiet"]
    assert main(qe + ["--sims", str(out["cal"]), "--out", str(d / "cal_qe.h5")]) == 0
    assert main(["calibrate", "--sims", str(out["cal"]), "--rec", str(d / "cal_qe.h5"), "--out", str(d / "calib.h5"),
                 "--quiet"]) == 0
    assert main(qe + ["--sims", str(out["test"]), "--out", str(d / "test_qe.h5"), "--uncertainty",
                      str(d / "calib.h5")]) == 0
    return d, out


def test_reconstruction_carries_the_posterior_and_it_covers_the_truth(files, tmp_path):
    d, sims = files
    with h5py.File(d / "test_qe.h5") as f, h5py.File(sims["test"]) as s:
        assert f.attrs["uq_lmax"] == LMAX and f.attrs["ood_threshold"] == THRESHOLD == 1.0
        mean, sigma = f["maps/kappa_mean"][...], f["maps/kappa_sigma"][...]
        assert mean.shape == sigma.shape == (160, 64, 64) and np.all(sigma > 0)
        assert f["meta/ood_score"].shape == (160,) and np.all(f["meta/uq_level"][...] == 0)
        truth = s["maps/kappa"][...].astype(float)
    pix = pixel_coverage(lowpass(GEOM, truth, LMAX), mean, sigma).mean(axis=0)
    # 160 maps, calibrated on 160 others: a wrong sigma by a factor 1.5 would move the 1-sigma coverage by 0.2
    assert abs(pix[0] - NOMINAL[1]) < 0.04 and abs(pix[1] - NOMINAL[2]) < 0.02
    draws = posterior_samples(d / "test_qe.h5", 3, 64)
    assert draws.shape == (64, 64, 64) and abs(draws.std(axis=0).mean() / sigma[3, 0, 0] - 1) < 0.1

    cfg = {"evaluate": {"bins": {"Lmin": 150, "Lmax": 1500, "width": 150}, "snr": {"Lmax": 1500},
                        "theory": {"iterative": False}, "jackknife": 4}}
    (tmp_path / "ev.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["evaluate", "--sims", str(sims["test"]), "--rec", f"qe={d / 'test_qe.h5'}", "--out",
                 str(tmp_path / "ev"), "--config", str(tmp_path / "ev.yaml"), "--quiet"]) == 0
    r = json.loads((tmp_path / "ev" / "summary.json").read_text())["results"]["qe"]["all"]
    assert r["coverage_1sigma"] == pytest.approx(pix[0]) and r["coverage_2sigma"] == pytest.approx(pix[1])
    assert r["mode_coverage_1sigma"][-1] is None  # bins above uq_lmax have no posterior modes
    assert 0 <= r["ood_outside"] <= 0.1


def test_a_calibration_of_other_settings_is_refused(files, tmp_path, capsys):
    d, sims = files
    capsys.readouterr()
    assert main(["reconstruct", "--method", "qe", "--estimator", "EB", "--sims", str(sims["test"]), "--out",
                 str(tmp_path / "eb.h5"), "--uncertainty", str(d / "calib.h5"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "calibrates another method or settings" in err and "estimator" in err
    assert not (tmp_path / "eb.h5").exists()


def test_notebook_posterior_equals_the_stage_and_the_shipped_calibration_is_the_networks(files):
    import deepcmb
    from deepcmb import shipped
    from deepcmb.io.calibration import file_sha256, read_calibration

    d, sims = files
    maps = deepcmb.read_maps(sims["test"], fields=["Q", "U"])
    with h5py.File(d / "test_qe.h5") as f:
        kappa = f["maps/kappa"][...]
        stored = {k: f["maps"][k][...] for k in ("kappa_mean", "kappa_sigma")}
        score = f["meta/ood_score"][...]
    post = deepcmb.posterior(kappa, maps, d / "calib.h5")
    for k, v in stored.items():
        np.testing.assert_allclose(post[k], v, rtol=1e-5, atol=1e-6 * np.abs(v).max())
    np.testing.assert_allclose(post["ood_score"], score, rtol=1e-5)
    net = shipped.network("quick")
    identity = read_calibration(net / "calibration.h5")[0]
    assert identity == {"method": "nn", "model_sha256": file_sha256(net / "model.keras"), "symmetrize": False}
