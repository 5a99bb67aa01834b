"""The MAP estimator on masked maps with a noise map and on non-periodic patches: the data model's own simulations,
the gradient's mean field, the objective with it, MAP with it against the joint MAP, and the stage."""

import h5py
import numpy as np
import pytest

from deepcmb.binning import binned_auto_spectrum, binned_cross_spectrum, linear_bins, mode_weights
from deepcmb.flatsky import gaussian_beam
from deepcmb.cli import main
from deepcmb.errors import InputError
from deepcmb.geometry import FlatSkyGeometry, interp_spectrum
from deepcmb.iterative import LensingPosterior, MapEstimator, PolarizationModel, reconstruct_map
from deepcmb.iterative.meanfield import gradient_mean_field
from deepcmb.qe.masked import MaskedQE, Simulations, effective_noise
from deepcmb.sample import Instrument, sample_rng
from deepcmb.survey import Survey

from survey_factory import SURVEY, without_window, write_masked_sims

GEOM = FlatSkyGeometry((64, 64), 2.34375)
SMALL = FlatSkyGeometry((32, 32), 2.34375)
INSTRUMENT = Instrument(1.0, 1.0 / np.sqrt(2.0), 1.0)
FAST = {"cg_tol": 1e-4, "max_iterations": 30}


def _weights(geom, index, seed=7):
    patch = Survey.from_config(SURVEY).on(geom, periodic=False)
    return patch.mask(sample_rng(seed, index, "mask")), patch.ivar_p(1.0, sample_rng(seed, index, "depth"))


def _observed(fiducial, index, geom=GEOM, seed=3):
    """A non-periodic masked map: lensed sky cut from a periodic box twice the side, noise of its noise map."""
    mask, ivar = _weights(geom, index)
    mqe = MaskedQE(geom, fiducial, INSTRUMENT, "MV_POL", periodic=False, pad=2.0, cg_tol=1e-3, cg_maxiter=500)
    q, u, kappa = Simulations(mqe, fiducial, INSTRUMENT, seed).draw(index, ivar)
    return q, u, kappa, mask, ivar


def _estimator(fiducial, geom, mask, ivar, settings):
    inst = Instrument(1.0, INSTRUMENT.noise_t_uk_arcmin, effective_noise(geom.pixel_arcmin, mask * ivar))
    return MapEstimator(geom, fiducial, inst, settings, periodic=False)


def _rho(geom, a, b, mask, edges):
    cross, aa, bb = (binned_cross_spectrum(geom, mask * x, mask * y, edges) for x, y in ((a, b), (a, a), (b, b)))
    return cross / np.sqrt(aa * bb)


def test_model_simulations_have_the_stated_signal_and_noise(fiducial):
    """At phi = 0 the E power of the simulated data is the prior's times the beam; the noise has the variance of
    the data's inverse-variance map where the weights are positive (an apodised mask does not raise it), none
    where they vanish."""
    cl = fiducial.unlensed_cl("EE")
    quiet = PolarizationModel(GEOM, cl, 1.0, 1e-3, 300, 3500, None, 1e-10)
    quiet.set_phi(np.zeros(GEOM.fourier_shape(), dtype=complex))
    edges = linear_bins(300, 2700, 300)
    power = np.mean([binned_auto_spectrum(GEOM, GEOM.fourier2map(GEOM.qu2eb(p.real, p.imag)[0]), edges)
                     for p in (quiet.simulate(np.random.default_rng(s)) for s in range(30))], axis=0)
    ell, w = GEOM.ell(), mode_weights(GEOM).reshape(GEOM.fourier_shape())
    template = interp_spectrum(cl, ell) * gaussian_beam(1.0, ell) ** 2
    inside = [(ell >= lo) & (ell < hi) for lo, hi in zip(edges[:-1], edges[1:])]
    expected = [np.sum(w * template * b) / np.sum(w * b) for b in inside]  # mode-weighted, as the spectra are
    np.testing.assert_allclose(power, expected, rtol=0.1)

    ivar = np.full(GEOM.shape, 4.0)
    ivar[:, 32:] = 1.0
    mask = np.ones(GEOM.shape)
    mask[:8] = 0.25  # an apodised border: weight 1/4 of the noise's
    mask[40:48, 40:48] = 0.0
    silent = PolarizationModel(GEOM, cl * 1e-20, 1.0, 1.0, 300, 3500, None, 1e-10)
    silent.set_noise(mask * ivar)
    silent.set_phi(np.zeros(GEOM.fourier_shape(), dtype=complex))
    noise = np.stack([silent.simulate(np.random.default_rng(s), noise_ivar=ivar) for s in range(20)])
    var = np.mean(noise.real**2 + noise.imag**2, axis=0) / 2
    for region, expected in ((np.s_[8:, :32], 0.25), (np.s_[8:40, 32:], 1.0), (np.s_[:8, :32], 0.25)):
        assert np.mean(var[region]) == pytest.approx(expected, rel=0.05)
    assert var[40:48, 40:48].max() < 1e-12 * var.mean()  # the 1e-20 signal only


def test_gradient_with_a_mean_field_equals_finite_difference(fiducial):
    """With a mean field the objective gains -<g_MF, phi> and the gradient -g_MF: still its exact gradient."""
    q, u, _, mask, ivar = _observed(fiducial, 0, SMALL)
    est = _estimator(fiducial, SMALL, mask, ivar, {"nufft_epsilon": 1e-12})
    est.model.set_noise(est.weight(ivar, mask))
    rng = np.random.default_rng(4)
    box = est.box
    white = box.map2fourier(rng.standard_normal(box.shape))
    mean_field = np.where(est.phi_band, white, 0) / np.sqrt(np.where(est.phi_band, est.clpp_grid, 1)) * 1e-3
    post = LensingPosterior(est.model, est.embed(q + 1j * u), est.clpp_grid, 1e-11, 5000, mean_field=mean_field)
    phi = np.where(est.phi_band, box.map2fourier(rng.standard_normal(box.shape)), 0) * np.sqrt(est.clpp_grid) \
        * 0.3 / box.pixel_rad
    direction = np.where(est.phi_band, box.map2fourier(rng.standard_normal(box.shape)), 0) \
        * np.sqrt(est.clpp_grid) * 1e-2 / box.pixel_rad
    grad = post.evaluate(phi).gradient
    fd = (post.evaluate(phi + direction, gradient=False).value
          - post.evaluate(phi - direction, gradient=False).value) / 2
    assert post.inner(grad, direction) == pytest.approx(fd, rel=1e-4)
    plain = LensingPosterior(est.model, est.embed(q + 1j * u), est.clpp_grid, 1e-11, 5000)
    assert post.evaluate(phi, gradient=False).value == pytest.approx(
        plain.evaluate(phi, gradient=False).value - post.inner(post.mean_field, phi), rel=1e-10)


def test_mean_field_is_measured_with_a_mask_and_absent_without(fiducial):
    """Two independent sets of simulations give the same mean field at low L on a masked non-periodic patch (it
    is real), and uncorrelated ones on a periodic patch with white noise (only Monte Carlo noise, as statistical
    isotropy wants); the estimator simulates none there."""
    mask, ivar = _weights(SMALL, 1)
    est = _estimator(fiducial, SMALL, mask, ivar, {**FAST, "mean_field_maps": 6})
    a, b = (est.mean_field(ivar, mask, first_index=k) for k in (0, 6))
    low = est.phi_band & (est.box.ell() < 250)  # the modes of the embedding grid longer than the patch

    def corr(x, y):
        return float(np.vdot(x[low], y[low]).real / np.sqrt(np.vdot(x[low], x[low]).real * np.vdot(y[low], y[low]).real))

    assert corr(a, b) > 0.8

    periodic = MapEstimator(est.box, fiducial, INSTRUMENT, {**FAST, "mean_field_maps": 6})
    assert periodic.mean_field() is None and periodic.weight() is None
    a, b = (gradient_mean_field(periodic.model, periodic.clpp_grid, 6, 0, k, cg_tol=1e-4) for k in (0, 6))
    low = periodic.phi_band & (est.box.ell() < 600)
    assert abs(corr(a, b)) < 0.4


def test_mean_field_makes_the_masked_map_estimate_track_the_truth(fiducial):
    """On a masked, non-periodic map with a noise map, MAP with the simulated mean field correlates with the true
    kappa over the observed region far better at low L than the joint MAP without it, which follows the mask."""
    q, u, kappa, mask, ivar = _observed(fiducial, 2)
    est = _estimator(fiducial, GEOM, mask, ivar, {**FAST, "mean_field_maps": 8})
    with_mf = est.estimate(q, u, ivar, mask, est.mean_field(ivar, mask))
    joint = est.estimate(q, u, ivar, mask)
    edges = np.array([100.0, 450.0, 1000.0])
    rho_mf, rho_joint = (_rho(GEOM, r.kappa, kappa, mask, edges) for r in (with_mf, joint))
    assert with_mf.converged and rho_mf[0] > 0.75 and rho_mf[0] > rho_joint[0] + 0.1
    assert rho_mf[1] > 0.6


@pytest.fixture(scope="module")
def masked_small(tmp_path_factory):
    return write_masked_sims(tmp_path_factory.mktemp("map_masked"), 32, 3)


def test_stage_reconstructs_masked_maps_as_the_function_does(masked_small, tmp_path, fiducial, capsys):
    """The stage simulates one mean field per mask and noise map, then writes what the Python function gives on
    the same maps; with a calibration on masked maps it adds the posterior, and refuses one of maps without a
    mask in one line."""
    out = tmp_path / "rec.h5"
    opts = ["--mean-field-maps", "2", "--cg-tol", "1e-4", "--max-iterations", "5", "--maps-per-task", "2"]
    assert main(["reconstruct", "--method", "map", "--sims", str(masked_small), "--out", str(out), "--workers", "1",
                 "--quiet", *opts]) == 0
    with h5py.File(masked_small, "r") as s:
        maps = {k: s[f"maps/{k}"][...].astype(float) for k in ("Q", "U")}
        maps.update(mask=s["mask"][...].astype(float), ivar_p=s["ivar_p"][...].astype(float))
    inst = Instrument(1.0, INSTRUMENT.noise_t_uk_arcmin,
                      effective_noise(SMALL.pixel_arcmin, maps["mask"] * maps["ivar_p"]))
    ref = reconstruct_map(SMALL, maps, fiducial, inst, {"mean_field_maps": 2, "cg_tol": 1e-4, "max_iterations": 5},
                          periodic=False)
    with h5py.File(out, "r") as f:
        assert f.attrs["start"] == "phi = 0" and "2 simulations per mask" in f.attrs["mean_field"]
        np.testing.assert_allclose(f["maps/kappa"][...], ref["kappa"], rtol=1e-5, atol=1e-6 * np.abs(ref["kappa"]).max())
        np.testing.assert_array_equal(f["meta/iterations"][...], ref["iterations"])
    calib = tmp_path / "calib.h5"
    assert main(["calibrate", "--sims", str(masked_small), "--rec", str(out), "--out", str(calib), "--quiet"]) == 0
    uq = ["reconstruct", "--method", "map", "--sims", str(masked_small), "--workers", "1", "--uncertainty", str(calib),
          "--quiet", *opts]
    assert main(uq + ["--out", str(tmp_path / "uq.h5")]) == 0
    with h5py.File(out, "r") as a, h5py.File(tmp_path / "uq.h5", "r") as b:
        np.testing.assert_array_equal(a["maps/kappa"][...], b["maps/kappa"][...])
        sigma = b["maps/kappa_sigma"][...]
        assert np.all(np.isfinite(sigma)) and np.all(sigma > 0) and sigma.std() > 0.01 * sigma.mean()
    capsys.readouterr()
    flat = without_window(calib, tmp_path / "flat_calib.h5")
    assert main([a if a != str(calib) else str(flat) for a in uq] + ["--out", str(tmp_path / "flat.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "calibrated on maps without a mask or noise map" in err
    with pytest.raises(InputError, match="shape"):
        MapEstimator(SMALL, fiducial, INSTRUMENT, periodic=False).weight(np.ones((3, 3)))
