"""The quadratic estimator on masked maps with a noise map: the C^-1 filter (deepcmb.qe.cinv), the simulated mean
field and Monte Carlo response (deepcmb.qe.masked), and the stage path (deepcmb.qe.masked_stage)."""

import h5py
import numpy as np
import pytest

from deepcmb.binning import binned_fourier_power, linear_bins
from deepcmb.cli import main
from deepcmb.evaluation import run_evaluate
from deepcmb.geometry import FlatSkyGeometry
from deepcmb.qe import QuadraticEstimator
from deepcmb.iterative.operators import pixel_inner
from deepcmb.qe.cinv import CinvFilter
from deepcmb.qe.engine import to_fourier
from deepcmb.qe.masked import MaskedQE, Simulations, effective_noise, monte_carlo, observed_cross
from deepcmb.sample import Instrument, sample_rng
from deepcmb.survey import Survey

from survey_factory import SURVEY, without_window, write_masked_sims

GEOM = FlatSkyGeometry((64, 64), 2.34375)
INSTRUMENT = Instrument(1.0, 1.0 / np.sqrt(2.0), 1.0)
SIGMA2 = (INSTRUMENT.noise_p_uk_arcmin / GEOM.pixel_arcmin) ** 2


def _survey_maps(n, survey=SURVEY, seed=7):
    patch = Survey.from_config(survey).on(GEOM, periodic=survey.get("periodic", True))
    masks = np.stack([patch.mask(sample_rng(seed, i, "mask")) for i in range(n)])
    ivars = np.stack([patch.ivar_p(INSTRUMENT.noise_p_uk_arcmin, sample_rng(seed, i, "depth")) for i in range(n)])
    return masks, ivars


def _masked_qe(fiducial, masks, ivars, periodic, estimator="MV_POL"):
    inst = Instrument(INSTRUMENT.beam_fwhm_arcmin, INSTRUMENT.noise_t_uk_arcmin,
                      effective_noise(GEOM.pixel_arcmin, masks * ivars))
    return MaskedQE(GEOM, fiducial, inst, estimator, periodic=periodic, pad=2.0, cg_tol=1e-3, cg_maxiter=500)


def _random_band_limited(cf, rng):
    return cf._map(cf.band * cf._fourier(rng.standard_normal((2,) + cf.geom.shape)))


# -- the C^-1 filter -----------------------------------------------------------------------------------------

def test_cinv_filter_solves_its_system(fiducial):
    masks, ivars = _survey_maps(1)
    cf = CinvFilter(GEOM, fiducial.lensed, 1.0, 300.0, 3500.0, tol=1e-4, maxiter=500)
    sims = Simulations(_masked_qe(fiducial, masks, ivars, periodic=True), fiducial, INSTRUMENT, 3)
    q, u, _ = sims.draw(0, ivars[0])
    out = cf.filter(np.stack([q, u]), masks[0] * ivars[0])
    b = cf.rhs(np.stack([q, u]))
    r = b - cf.apply(out.sky)
    assert np.sqrt(pixel_inner(r, r) / pixel_inner(b, b)) < 1e-4
    assert 5 < out.iterations < 500  # a masked, inhomogeneous system is not diagonal


def test_cinv_filter_is_the_isotropic_filter_without_mask_and_with_white_noise(fiducial):
    sims = Simulations(_masked_qe(fiducial, np.ones((1,) + GEOM.shape), np.full((1,) + GEOM.shape, 1 / SIGMA2),
                                  periodic=True), fiducial, INSTRUMENT, 3)
    q, u, _ = sims.draw(0, np.full(GEOM.shape, 1 / SIGMA2))
    qe = QuadraticEstimator(GEOM, fiducial, INSTRUMENT, "MV_POL")
    cf = CinvFilter(GEOM, fiducial.lensed, 1.0, qe.lmin, qe.lmax, tol=1e-10, maxiter=50)
    out = cf.filter(np.stack([q, u]), np.full(GEOM.shape, 1 / SIGMA2))
    direct = qe.plan([None, to_fourier(GEOM, q[None]), to_fourier(GEOM, u[None])]).copy()
    filtered = qe.plan.filtered({"E": out.E[None], "B": out.B[None]})
    assert np.abs(filtered - direct).max() < 1e-9 * np.abs(direct).max()
    # the masked estimator with a mask of ones and white noise is the periodic estimator
    mqe = MaskedQE(GEOM, fiducial, INSTRUMENT, "MV_POL", periodic=True, pad=2.0, cg_tol=1e-10, cg_maxiter=50)
    kappa = mqe.to_maps(mqe.kappa_fourier(q, u, np.full(GEOM.shape, 1 / SIGMA2))[0])["kappa"]
    expected = qe.estimate({"Q": q, "U": u})["kappa"]
    assert np.abs(kappa - expected).max() < 1e-9 * np.abs(expected).max()


def test_cinv_system_is_symmetric_and_positive(fiducial):
    masks, ivars = _survey_maps(1)
    cf = CinvFilter(GEOM, fiducial.lensed, 1.0, 300.0, 3500.0, tol=1e-3, maxiter=500)
    cf.set_weight(masks[0] * ivars[0])
    rng = np.random.default_rng(2)
    x, y = _random_band_limited(cf, rng), _random_band_limited(cf, rng)
    a, b = pixel_inner(cf.apply(x), y), pixel_inner(x, cf.apply(y))
    assert abs(a - b) < 1e-12 * np.sqrt(pixel_inner(cf.apply(x), cf.apply(x)) * pixel_inner(y, y))
    assert pixel_inner(x, cf.apply(x)) > 0 and pixel_inner(x, cf.precondition(x)) > 0


# -- mean field and response -----------------------------------------------------------------------------------

def test_mean_field_of_a_map_with_holes_is_measured_and_removed(fiducial):
    """A non-periodic map with holes (and the sharp edge of the observed region), EE: the mean field stands above
    the noise of its estimate at low L, and subtracting it from independent maps with the same mask and noise map
    lowers their power there. (EB's mean field is within the noise of 32 maps here: its response to the mask is
    suppressed by parity.)"""
    survey = {"periodic": False, "mask": {"holes_per_deg2": 6.0, "hole_radius_arcmin": 8.0}}
    masks, ivars = _survey_maps(1, survey, seed=4)
    assert masks.min() == 0 and masks.mean() < 0.95
    mqe = _masked_qe(fiducial, masks, ivars, periodic=False, estimator="EE")
    sims = Simulations(mqe, fiducial, INSTRUMENT, 5)
    edges = linear_bins(GEOM.ell_fundamental, 3500, 2 * GEOM.ell_fundamental)
    n_mf = 32
    mc = monte_carlo(mqe, sims, masks, ivars, n_mf, 2, edges, min_snr=np.inf)  # no response correction
    assert not mc.applied.any()
    mf = mc.correct(mqe, np.zeros(mqe.box.fourier_shape(), complex), 0)["kappa_mean_field"]
    low = slice(0, 2)  # 144 <= L < 720
    mf_power = observed_cross(GEOM, mf, mf, masks[0], edges)[low].sum()
    raw, subtracted = [], []
    for index in range(100, 116):
        q, u, _ = sims.draw(index, ivars[0])
        kappa = mqe.kappa_fourier(q, u, masks[0] * ivars[0])[0]
        raw.append(mqe.to_maps(kappa)["kappa"])
        subtracted.append(mc.correct(mqe, kappa, 0)["kappa"])
    raw, subtracted = np.stack(raw), np.stack(subtracted)
    raw_power = observed_cross(GEOM, raw, raw, masks[:1], edges).mean(axis=0)[low].sum()
    sub_power = observed_cross(GEOM, subtracted, subtracted, masks[:1], edges).mean(axis=0)[low].sum()
    # a zero mean field estimated from n_mf maps would have about the power (raw power) / n_mf
    assert mf_power > 3 * raw_power / n_mf, (mf_power, raw_power / n_mf)
    assert sub_power < 0.95 * raw_power, (sub_power, raw_power)


def test_masked_qe_is_unbiased_in_cross_with_the_truth_over_the_observed_region(fiducial):
    """Non-periodic masked maps with a noise map: after the mean field and the Monte Carlo response, the transfer
    <k_hat k>/<k k> over the observed region is 1 within its errors on 32 independent maps."""
    n_masks = 4
    masks, ivars = _survey_maps(n_masks)
    mqe = _masked_qe(fiducial, masks, ivars, periodic=False)
    sims = Simulations(mqe, fiducial, INSTRUMENT, 9)
    edges = np.array([150.0, 450.0, 750.0, 1050.0, 1500.0])
    mc = monte_carlo(mqe, sims, masks, ivars, 8, 32, edges, min_snr=3.0)
    assert np.all(mc.applied) and np.all(mc.error < 0.05)
    cross, auto = [], []
    for s in range(32):
        g = s % n_masks
        q, u, truth = sims.draw(1000 + s, ivars[g])
        kappa = mc.correct(mqe, mqe.kappa_fourier(q, u, masks[g] * ivars[g])[0], g)["kappa"]
        cross.append(observed_cross(GEOM, kappa, truth, masks[g], edges))
        auto.append(observed_cross(GEOM, truth, truth, masks[g], edges))
    cross, auto = np.array(cross), np.array(auto)
    transfer = cross.sum(axis=0) / auto.sum(axis=0)
    error = np.sqrt(len(cross) * np.var(cross - transfer * auto, axis=0, ddof=1)) / auto.sum(axis=0)
    total = np.hypot(error, mc.error)
    # measured: transfer 0.92, 0.98, 1.05, 1.05 +- 0.04-0.05 (R_MC 0.81 .. 0.94 +- 0.03)
    assert np.all(np.abs(transfer - 1) < 3 * total), (transfer, total)
    assert np.all(total < 0.08), total


# -- the stage ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def masked_sims(tmp_path_factory):
    return write_masked_sims(tmp_path_factory.mktemp("qe_masked"), 64, 6)


def test_stage_writes_the_masked_reconstruction(masked_sims, tmp_path):
    out = tmp_path / "rec.h5"
    assert main(["reconstruct", "--method", "qe", "--sims", str(masked_sims), "--out", str(out), "--mean-field-maps",
                 "2", "--response-maps", "6", "--quiet"]) == 0
    with h5py.File(out, "r") as f, h5py.File(masked_sims, "r") as s:
        assert f.attrs["filter"] == "cinv" and f.attrs["estimator"] == "EB"
        assert "Monte Carlo, 6 maps" in f.attrs["response_correction"] and "2 maps" in f.attrs["mean_field"]
        mask = s["mask"][...]
        assert f.attrs["mask_w2"] == pytest.approx(np.mean(mask.astype(float) ** 2))
        assert f.attrs["mask_w4"] == pytest.approx(np.mean(mask.astype(float) ** 4))
        for name in ("kappa", "phi", "kappa_mean_field"):
            assert f[f"maps/{name}"].shape == (6, 64, 64) and np.all(np.isfinite(f[f"maps/{name}"][...]))
        assert np.all(f["meta/cg_iterations"][...] > 0)
        nbin = len(f["response/edges"]) - 1
        for name in ("R_mc", "R_mc_error", "applied", "n0_mc"):
            assert f[f"response/{name}"].shape == (1, nbin)
        assert np.all(f["response/n0_mc"][...] > 0) and f["n0/kappa"].shape == (1, nbin)
    # evaluated over the observed region: each map's spectra are those of M^2 kappa over <M^4> of its mask
    ev = tmp_path / "eval"
    run_evaluate({"jackknife": 3, "theory": {"iterative": False}}, {"sims": masked_sims, "recs": {"qe_eb": out}}, ev,
                 progress=False)
    with h5py.File(ev / "report.h5", "r") as r, h5py.File(out, "r") as f, h5py.File(masked_sims, "r") as s:
        assert r.attrs["masked"] and r.attrs["apodize_arcmin"] == 0
        edges, m = r["bins/edges"][...], s["mask"][2].astype(float)
        fk, ft = (GEOM.map2fourier(m**2 * x) for x in (f["maps/kappa"][2], s["maps/kappa"][2]))
        expected = binned_fourier_power(GEOM, fk, ft, edges) / np.mean(m**4)
        np.testing.assert_allclose(r["methods/qe_eb/per_map/cross"][2], expected, rtol=1e-6)
    # the same seeds give the same file
    again = tmp_path / "again.h5"
    assert main(["reconstruct", "--method", "qe", "--sims", str(masked_sims), "--out", str(again),
                 "--mean-field-maps", "2", "--response-maps", "6", "--quiet"]) == 0
    with h5py.File(out, "r") as a, h5py.File(again, "r") as b:
        np.testing.assert_array_equal(a["maps/kappa"][...], b["maps/kappa"][...])


def test_stage_adds_the_posterior_with_a_calibration_on_masked_maps(masked_sims, tmp_path, capsys):
    """--uncertainty with a calibration made on masked maps by the same estimator and Monte Carlo settings; one
    of other settings, or of maps without a mask, is refused in one line before the Monte Carlo."""
    base = ["reconstruct", "--method", "qe", "--sims", str(masked_sims), "--response-maps", "6", "--quiet"]
    rec, calib = tmp_path / "rec.h5", tmp_path / "calib.h5"
    assert main(base + ["--mean-field-maps", "2", "--out", str(rec)]) == 0
    assert main(["calibrate", "--sims", str(masked_sims), "--rec", str(rec), "--out", str(calib), "--quiet"]) == 0
    assert main(base + ["--mean-field-maps", "2", "--out", str(tmp_path / "uq.h5"), "--uncertainty", str(calib)]) == 0
    with h5py.File(rec) as a, h5py.File(tmp_path / "uq.h5") as b:
        np.testing.assert_array_equal(a["maps/kappa"][...], b["maps/kappa"][...])
        sigma = b["maps/kappa_sigma"][...]
        assert np.all(np.isfinite(sigma)) and np.all(sigma > 0) and sigma.std() > 0.01 * sigma.mean()
        assert b["meta/ood_score"].shape == (6,) and b.attrs["uq_lmax"] == 1000.0
    capsys.readouterr()
    assert main(base + ["--mean-field-maps", "3", "--out", str(tmp_path / "mf3.h5"), "--uncertainty", str(calib)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "calibrates another method or settings (mean_field" in err
    flat = without_window(calib, tmp_path / "flat_calib.h5")
    assert main(base + ["--mean-field-maps", "2", "--out", str(tmp_path / "flat.h5"), "--uncertainty", str(flat)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "calibrated on maps without a mask or noise map" in err
    assert not (tmp_path / "mf3.h5").exists() and not (tmp_path / "flat.h5").exists()


def test_stage_refuses_what_masked_maps_do_not_support(masked_sims, tmp_path, capsys):
    capsys.readouterr()
    base = ["reconstruct", "--method", "qe", "--sims", str(masked_sims), "--quiet"]
    assert main(base + ["--out", str(tmp_path / "tt.h5"), "--estimator", "TT"]) == 2
    assert "only the polarization estimators" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "w.h5"), "--wiener"]) == 2
    assert "qe.wiener" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "seed.h5"), "--mc-seed", "5"]) == 2  # the file's seed
    assert "qe.mc_seed" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("tt.h5", "w.h5", "seed.h5"))
