"""The iterative MAP estimator: operators and their adjoints, the Wiener filter, the posterior gradient,
recovery at high signal-to-noise, and its noise against the QE's and the analytic iterative limit."""

import numpy as np
import pytest

from deepcmb.binning import bin_centres
from deepcmb.errors import ConfigError, InputError
from deepcmb.geometry import FlatSkyGeometry, interp_spectrum
from deepcmb.iterative import (LensingPosterior, MapEstimator, PolarizationModel, conjugate_gradient,
                               reconstruct_map, wiener_filter_e)
from deepcmb.iterative.operators import Lensing
from deepcmb.qe import iterative_noise
from deepcmb.sample import FlatSimulator, Instrument

GEOM = FlatSkyGeometry((64, 64), 2.34375)


def _sample(fiducial, noise, index, seed=11):
    inst = Instrument(1.0, noise / np.sqrt(2), noise)
    return inst, FlatSimulator(GEOM, fiducial, inst).sample(seed, index, ["Q", "U", "phi", "kappa", "E_unlensed"])


def _model(fiducial, noise=1.0, epsilon=1e-10):
    return PolarizationModel(GEOM, fiducial.unlensed_cl("EE"), 1.0, noise, 300, 3500, None, epsilon)


def test_lensing_adjoint_identity(fiducial):
    """<L x, y> = <x, L^T y> for the NUFFT pair, and for the whole data operator A (spin-2, lensing, beam)."""
    _, sim = _sample(fiducial, 1.0, 0)
    rng = np.random.default_rng(0)
    lens = Lensing(GEOM, GEOM.map2fourier(sim["phi"]), epsilon=1e-10)
    x = rng.standard_normal(GEOM.shape) + 1j * rng.standard_normal(GEOM.shape)
    y = rng.standard_normal(GEOM.shape) + 1j * rng.standard_normal(GEOM.shape)
    lhs, rhs = np.vdot(y, lens.forward(x)), np.vdot(lens.adjoint(y), x)
    assert abs(lhs - rhs) < 1e-6 * abs(lhs)

    model = _model(fiducial)
    model.set_phi(GEOM.map2fourier(sim["phi"]))
    e = model.e_coefficients(rng.standard_normal(GEOM.shape))
    lhs, rhs = float(np.vdot(y, model.apply(e)).real), model.inner(model.adjoint(y), e)
    assert abs(lhs - rhs) < 1e-6 * abs(lhs)
    e2 = model.e_coefficients(rng.standard_normal(GEOM.shape))
    a, b = model.inner(e2, model.normal(e)), model.inner(e, model.normal(e2))
    assert abs(a - b) < 1e-6 * abs(a)


def test_forward_model_is_the_simulator(fiducial):
    """The data model reproduces the simulated maps: data minus A E_true is white noise of the stated level."""
    _, sim = _sample(fiducial, 1.0, 1)
    model = _model(fiducial)
    model.set_phi(GEOM.map2fourier(sim["phi"]))
    resid = sim["Q"] + 1j * sim["U"] - model.apply(model.e_coefficients(sim["E_unlensed"]))
    sigma = 1.0 / GEOM.pixel_arcmin
    assert np.std(resid.real) == pytest.approx(sigma, rel=0.05)
    assert np.std(resid.imag) == pytest.approx(sigma, rel=0.05)
    assert np.std(sim["Q"]) > 10 * sigma


def test_wiener_filter_solves_its_system(fiducial):
    """The CG residual is below 1e-5, recomputed from the solution, and the filter recovers the unlensed E."""
    _, sim = _sample(fiducial, 1.0, 2)
    model = _model(fiducial, epsilon=1e-7)
    model.set_phi(GEOM.map2fourier(sim["phi"]))
    pol = sim["Q"] + 1j * sim["U"]
    res = wiener_filter_e(model, pol, tol=1e-5)
    b = model.adjoint(model.residual_leg(pol), beam=False)
    r = b - model.normal(res.x)
    assert np.sqrt(model.inner(r, r) / model.inner(b, b)) < 1e-5
    assert res.residual < 1e-5 and 0 < res.iterations < 200
    truth = model.e_map(model.e_coefficients(sim["E_unlensed"]))
    assert np.corrcoef(model.e_map(res.x).ravel(), truth.ravel())[0, 1] > 0.97


def test_conjugate_gradient_on_a_known_system():
    """A dense SPD system: the solution matches numpy's, and too few iterations raise."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((40, 40))
    m = a @ a.T + 40 * np.eye(40)
    b = rng.standard_normal(40)
    res = conjugate_gradient(lambda x: m @ x, lambda r: r / np.diag(m), b, tol=1e-10)
    np.testing.assert_allclose(res.x, np.linalg.solve(m, b), rtol=1e-8)
    from deepcmb.errors import ConvergenceError
    with pytest.raises(ConvergenceError, match="relative residual"):
        conjugate_gradient(lambda x: m @ x, lambda r: r, b, tol=1e-12, maxiter=2)


def test_gradient_equals_finite_difference(fiducial):
    """The analytic gradient of the log-posterior equals its central finite difference along random directions."""
    _, sim = _sample(fiducial, 1.0, 3)
    L = GEOM.ell()
    clpp = np.where((L > 0) & (L <= 3500), interp_spectrum(fiducial.clpp, L), 0.0)
    post = LensingPosterior(_model(fiducial), sim["Q"] + 1j * sim["U"], clpp, cg_tol=1e-12)
    phi = 0.7 * GEOM.map2fourier(sim["phi"])
    grad = post.evaluate(phi).gradient
    rng = np.random.default_rng(4)
    for scale in (1e-3, 1e-2):
        direction = np.where(clpp > 0, GEOM.map2fourier(rng.standard_normal(GEOM.shape)), 0) * np.sqrt(clpp) \
            * scale / GEOM.pixel_rad
        fd = (post.evaluate(phi + direction, gradient=False).value
              - post.evaluate(phi - direction, gradient=False).value) / 2
        assert post.inner(grad, direction) == pytest.approx(fd, rel=1e-4)


def test_high_signal_to_noise_recovers_phi(fiducial):
    """At 0.25 uK-arcmin the MAP kappa converges to the truth (correlation > 0.95 on L = 150-1500; 0.963 measured)
    with less than a third of the QE's decorrelation (0.174 measured)."""
    inst, sim = _sample(fiducial, 0.25, 4)
    est = MapEstimator(GEOM, fiducial, inst, {"max_iterations": 30})
    res = est.estimate(sim["Q"], sim["U"])
    keep = (GEOM.ell() >= 150) & (GEOM.ell() <= 1500)

    def corr(a, b):
        fa, fb = GEOM.map2fourier(a)[keep], GEOM.map2fourier(b)[keep]
        return np.sum((fa * np.conj(fb)).real) / np.sqrt(np.sum(abs(fa) ** 2) * np.sum(abs(fb) ** 2))

    qe = est.qe.estimate({"Q": sim["Q"], "U": sim["U"]})["kappa"]
    assert corr(res.kappa, sim["kappa"]) > 0.95
    assert 1 - corr(res.kappa, sim["kappa"]) < (1 - corr(qe, sim["kappa"])) / 3
    assert res.converged and res.objective > 0


def _noise_over_signal(fiducial, noise, n_maps, edges):
    """N_eff / C per bin (``edges``) for the MAP and the MV_POL QE, measured on the same maps
    (1 / rho^2 - 1, exact for a Gaussian estimator), and the analytic iterative limit and QE N0 over C^pp
    at the bins' mode-weighted centres."""
    inst = Instrument(1.0, noise / np.sqrt(2), noise)
    sim = FlatSimulator(GEOM, fiducial, inst)
    est = MapEstimator(GEOM, fiducial, inst)
    edges = np.asarray(edges, dtype=float)
    L = GEOM.ell()
    bins = [(L >= lo) & (L < hi) for lo, hi in zip(edges[:-1], edges[1:])]
    acc = np.zeros((5, len(bins)))
    for i in range(n_maps):
        s = sim.sample(21, i, ["Q", "U", "kappa"])
        m = GEOM.map2fourier(est.estimate(s["Q"], s["U"]).kappa)
        q = GEOM.map2fourier(est.qe.estimate({"Q": s["Q"], "U": s["U"]})["kappa"])
        t = GEOM.map2fourier(s["kappa"])
        for j, b in enumerate(bins):
            acc[:, j] += [np.sum(abs(m[b]) ** 2), np.sum((m[b] * np.conj(t[b])).real), np.sum(abs(t[b]) ** 2),
                          np.sum(abs(q[b]) ** 2), np.sum((q[b] * np.conj(t[b])).real)]
    mm, mt, tt, qq, qt = acc
    theory = iterative_noise(fiducial, inst, lmin=300, lmax=3500, L=bin_centres(GEOM, edges))
    return {"map": mm * tt / mt**2 - 1, "qe": qq * tt / qt**2 - 1, "iterative": theory["n_iter"] / theory["clpp"],
            "n0": theory["n0_mv_pol"] / theory["clpp"]}


def test_map_beats_the_qe_at_low_noise(fiducial):
    """1 uK-arcmin: MAP N_eff below the MV_POL QE's in every bin 150-1500, and within 20 % of the analytic iterative
    limit for L <= 900 (48 maps)."""
    n = _noise_over_signal(fiducial, 1.0, 48, [150, 450, 900, 1500])
    assert np.all(n["map"] < n["qe"]), n
    np.testing.assert_allclose(n["map"][:2], n["iterative"][:2], rtol=0.2)


def test_map_at_high_noise(fiducial):
    """5 uK-arcmin, where lensing B modes barely limit the QE: the MAP N_eff is still below the QE's in every bin
    150-1500 (48 maps; the precise comparison with the analytic limit is the benchmark's, on 1000 maps)."""
    n = _noise_over_signal(fiducial, 5.0, 48, [150, 450, 900, 1500])
    assert np.all(n["map"] < n["qe"]), n


def test_reconstruct_map_function(fiducial):
    """The array function: shapes, per-map statistics, and the refusals."""
    inst, sim = _sample(fiducial, 2.0, 5)
    q, u = np.stack([sim["Q"]] * 2), np.stack([sim["U"]] * 2)
    out = reconstruct_map(GEOM, {"Q": q, "U": u}, fiducial, inst, {"max_iterations": 3})
    assert out["kappa"].shape == out["B_delensed"].shape == (2,) + GEOM.shape
    assert np.all(out["iterations"] <= 3) and out["converged"].dtype == bool
    np.testing.assert_array_equal(out["kappa"][0], out["kappa"][1])
    one = reconstruct_map(GEOM, {"Q": sim["Q"], "U": sim["U"]}, fiducial, inst, {"max_iterations": 3})
    np.testing.assert_allclose(one["kappa"], out["kappa"][0])
    with pytest.raises(InputError, match="needs maps 'Q' and 'U'"):
        reconstruct_map(GEOM, {"Q": q}, fiducial, inst)
    with pytest.raises(ConfigError, match="map.tol"):
        reconstruct_map(GEOM, {"Q": q, "U": u}, fiducial, inst, {"tol": -1})
    with pytest.raises(ConfigError, match="noisy maps"):
        MapEstimator(GEOM, fiducial, Instrument(1.0, 0.0, 0.0))


def test_delensed_b_removes_the_lensing_b_modes(fiducial):
    """At 0.5 uK-arcmin the data's B modes minus the MAP template have well under half the B power of the data."""
    inst, sim = _sample(fiducial, 0.5, 6)
    res = MapEstimator(GEOM, fiducial, inst).estimate(sim["Q"], sim["U"])
    b_obs = GEOM.qu2eb(sim["Q"], sim["U"])[1]
    keep = (GEOM.ell() >= 300) & (GEOM.ell() <= 1500)
    noise = (0.5 * np.pi / 180 / 60) ** 2 * GEOM.area  # white-noise power per mode, <|n(l)|^2> = A N_l
    p_obs = np.mean(abs(b_obs[keep]) ** 2) - noise
    p_res = np.mean(abs(GEOM.map2fourier(res.b_delensed)[keep]) ** 2) - noise
    assert p_res < 0.3 * p_obs


@pytest.fixture(scope="module")
def small_sims(tmp_path_factory):
    from deepcmb.simulate import run_simulate

    out = tmp_path_factory.mktemp("map") / "sims.h5"
    cfg = {"seed": 8, "n_maps": 6, "geometry": {"kind": "flat", "shape": [32, 32], "pixel_arcmin": 2.34375},
           "instrument": {"noise_p_uk_arcmin": [1.0, 5.0]}, "simulation": {"fields": ["Q", "U", "kappa"]}}
    return run_simulate(cfg, {}, out, progress=False, workers=1)


def test_stage_writes_the_reconstruction_layout_alike_with_any_workers(small_sims, tmp_path):
    """``deepcmb reconstruct --method map``: kappa, phi, delensed E and B, the convergence per map, the same
    with worker processes as inline, and the array function's result for each map."""
    import h5py

    from deepcmb.cosmology import compute_spectra
    from deepcmb.iterative.stage import run_reconstruct_map
    from deepcmb.io.reconstruction import open_reconstruction

    cfg = {"max_iterations": 3, "maps_per_task": 4}
    one = run_reconstruct_map(cfg, {"sims": small_sims}, tmp_path / "a.h5", progress=False, workers=1)
    two = run_reconstruct_map(cfg, {"sims": small_sims}, tmp_path / "b.h5", progress=False, workers=2)
    with open_reconstruction(one, small_sims) as a, h5py.File(two) as b, h5py.File(small_sims) as s:
        assert a.attrs["method"] == "map" and set(a["maps"]) == {"kappa", "phi", "E_delensed", "B_delensed"}
        for name in a["maps"]:
            np.testing.assert_array_equal(a["maps"][name][:], b["maps"][name][:])
        assert a["maps/E_delensed"].attrs["units"] == "uK"
        np.testing.assert_array_equal(a["meta/noise_index"][:], [0, 1, 0, 1, 0, 1])
        assert np.all(a["meta/iterations"][:] <= 3) and a["meta/cg_iterations"][:].min() > 0
        geom = FlatSkyGeometry((32, 32), 2.34375)
        inst = Instrument(1.0, 5.0 / np.sqrt(2), 5.0)
        ref = reconstruct_map(geom, {"Q": s["maps/Q"][1], "U": s["maps/U"][1]}, compute_spectra({}), inst,
                              {"max_iterations": 3})
        np.testing.assert_allclose(a["maps/kappa"][1], ref["kappa"], rtol=1e-5, atol=1e-6)


def test_stage_refuses_what_it_cannot_reconstruct(small_sims, tmp_path):
    from deepcmb.io.observations import write_observations
    from deepcmb.iterative.stage import run_reconstruct_map

    q = np.zeros((2, 32, 32))
    mask = np.ones((2, 32, 32))
    mask[1] = 0
    obs = write_observations(tmp_path / "blind.h5", q, q, pixel_arcmin=2.34375, beam_fwhm_arcmin=1.0,
                             noise_p_uk_arcmin=1.0, mask=mask)
    with pytest.raises(InputError, match="map 1 has no observed pixel"):
        run_reconstruct_map({}, {"sims": obs}, tmp_path / "r.h5", progress=False, workers=1)
    with pytest.raises(ConfigError, match="cg_tol"):
        run_reconstruct_map({"cg_tol": 2}, {"sims": small_sims}, tmp_path / "r.h5", progress=False, workers=1)
    assert not (tmp_path / "r.h5").exists()


def _holes(seed=0, n=6, radius=4):
    """A mask with ``n`` circular holes of ``radius`` pixels (about 7 % of a 64 x 64 map)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:64, :64]
    mask = np.ones((64, 64))
    for cy, cx in rng.integers(0, 64, (n, 2)):
        mask[np.hypot(y - cy, x - cx) < radius] = 0.0
    return mask


def test_pixel_weights_keep_the_operators_adjoint_and_reduce_to_white_noise(fiducial):
    """With a masked, inhomogeneous inverse-variance map: A^T N^-1 A stays self-adjoint, the gradient equals a
    finite difference; a constant map gives the white-noise model's Wiener filter."""
    _, sim = _sample(fiducial, 1.0, 7)
    rng = np.random.default_rng(5)
    sigma2 = (1.0 / GEOM.pixel_arcmin) ** 2
    ivar = _holes() * (1 + 0.5 * rng.random(GEOM.shape)) / sigma2
    model = _model(fiducial)
    model.set_noise(ivar)
    model.set_phi(GEOM.map2fourier(sim["phi"]))
    e1, e2 = (model.e_coefficients(rng.standard_normal(GEOM.shape)) for _ in range(2))
    a, b = model.inner(e2, model.normal(e1)), model.inner(e1, model.normal(e2))
    assert abs(a - b) < 1e-6 * abs(a)
    pol = sim["Q"] + 1j * sim["U"]
    assert wiener_filter_e(model, pol, tol=1e-5).residual < 1e-5

    L = GEOM.ell()
    clpp = np.where((L > 0) & (L <= 3500), interp_spectrum(fiducial.clpp, L), 0.0)
    post = LensingPosterior(model, pol, clpp, cg_tol=1e-12)
    phi = 0.7 * GEOM.map2fourier(sim["phi"])
    grad = post.evaluate(phi).gradient
    direction = np.where(clpp > 0, GEOM.map2fourier(rng.standard_normal(GEOM.shape)), 0) * np.sqrt(clpp) \
        * 1e-2 / GEOM.pixel_rad
    fd = (post.evaluate(phi + direction, gradient=False).value - post.evaluate(phi - direction, gradient=False).value) / 2
    assert post.inner(grad, direction) == pytest.approx(fd, rel=1e-4)

    white = _model(fiducial)
    white.set_phi(GEOM.map2fourier(sim["phi"]))
    model.set_noise(np.full(GEOM.shape, 1 / sigma2))
    model.set_phi(GEOM.map2fourier(sim["phi"]))  # the posterior moved it
    x_white, x_const = (wiener_filter_e(m, pol, tol=1e-10).x for m in (white, model))
    np.testing.assert_allclose(x_const, x_white, rtol=0, atol=1e-8 * np.abs(x_white).max())
    with pytest.raises(InputError, match="inverse-variance map"):
        model.set_noise(-np.ones(GEOM.shape))


def test_map_with_pixel_weights_converges(fiducial):
    """1 uK-arcmin with 6 % of the map in holes (inverse variance zero there): the MAP from phi = 0 converges and
    raises the objective. (Without a mean field for the holes its kappa is no better than the QE's yet.)"""
    inst, sim = _sample(fiducial, 1.0, 8)
    mask = _holes(1)
    est = MapEstimator(GEOM, fiducial, inst, {"max_iterations": 40})
    res = est.estimate(sim["Q"] * mask, sim["U"] * mask, ivar=mask * GEOM.pixel_arcmin**2)
    assert res.converged and res.objective > 0 and res.iterations > 1


def test_stage_resumes_after_an_interruption(small_sims, tmp_path, monkeypatch):
    """Tasks finished before a failure are kept in OUT.partial/; the same command then does only the rest and
    writes the same file as an uninterrupted run."""
    import h5py

    import deepcmb.iterative.stage as stage

    cfg = {"max_iterations": 2, "maps_per_task": 2}
    whole = stage.run_reconstruct_map(cfg, {"sims": small_sims}, tmp_path / "whole.h5", progress=False, workers=1)
    real, calls, kill = stage.reconstruct_task, [], [True]

    def dies_on_the_fourth(key, *args):
        calls.append(key)
        if len(calls) == 4 and kill and kill.pop():
            raise RuntimeError("killed")
        return real(key, *args)

    monkeypatch.setattr(stage, "reconstruct_task", dies_on_the_fourth)
    out = tmp_path / "cut.h5"
    with pytest.raises(RuntimeError, match="killed"):
        stage.run_reconstruct_map(cfg, {"sims": small_sims}, out, progress=False, workers=1)
    saved = {int(p.stem[5:]) for p in (tmp_path / "cut.h5.partial").glob("task_*.npz")}
    assert not out.exists() and 3 in calls and 3 not in saved and saved
    calls.clear()
    stage.run_reconstruct_map(cfg, {"sims": small_sims}, out, progress=False, workers=1)
    assert sorted(calls) == sorted(set(range(6)) - saved) and not (tmp_path / "cut.h5.partial").exists()
    with h5py.File(whole) as a, h5py.File(out) as b:
        for name in ("maps/kappa", "maps/B_delensed", "meta/iterations", "meta/gradient_ratio"):
            np.testing.assert_array_equal(a[name][:], b[name][:])
