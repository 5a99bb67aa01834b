"""Delensing of B modes by a template built from a lensing reconstruction: the physics of the template
(deepcmb.delensing) on 64 x 64 maps, and the metric of `deepcmb evaluate` (report, summary, figure, results
table, the skip path)."""

import json

import h5py
import numpy as np
import pytest

from deepcmb.binning import bin_theory, binned_fourier_power, linear_bins
from deepcmb.config import resolve
from deepcmb.delensing import gradient_b_template, lensing_b_template, phi_from_kappa, wiener_e_filter
from deepcmb.evaluation import run_evaluate
from deepcmb.evaluation.metrics import delensing_metrics
from deepcmb.figures import plan_figures
from deepcmb.flatsky import gaussian_beam, white_noise_cl, white_noise_map
from deepcmb.geometry import FlatSkyGeometry, interp_spectrum
from deepcmb.io.observations import write_observations
from deepcmb.io.reconstruction import write_reconstruction
from deepcmb.io.report import Report
from deepcmb.qe.stage import run_reconstruct_qe
from deepcmb.results import SCHEMA as RESULTS_SCHEMA
from deepcmb.results import collect, render_rst
from deepcmb.sample import FlatSimulator, Instrument
from deepcmb.simulate import run_simulate

GEOM = FlatSkyGeometry((64, 64), 2.34375)
EDGES = linear_bins(200.0, 2000.0, 200.0)
BAND = (300.0, 3500.0)
EPSILON = 1e-8
FIELDS = ["Q", "U", "Q_lensed", "U_lensed", "E_unlensed", "kappa"]
FAST = {"theory": {"iterative": False}, "jackknife": 16, "examples": 0}


def _power(b):
    return binned_fourier_power(GEOM, b, b, EDGES)


def _sky(fiducial, noise, n, seed):
    """``n`` samples at ``noise`` uK-arcmin (1' beam): the maps of FIELDS and their true lensing B modes."""
    sim = FlatSimulator(GEOM, fiducial, Instrument(1.0, noise / np.sqrt(2), noise))
    for i in range(n):
        s = sim.sample(seed, i, FIELDS)
        s["B_lens"] = GEOM.qu2eb(s["Q_lensed"], s["U_lensed"])[1]
        s["phi_f"] = phi_from_kappa(GEOM, GEOM.map2fourier(s["kappa"]))
        yield s


def test_true_phi_and_unlensed_e_remove_all_lensing_b_and_lensed_e_leaves_a_floor(fiducial):
    """Remapping the true unlensed E by the true phi is exact; on the lensed E (what data hold) remapping leaves a
    few per cent, the first-order template (the one evaluate uses) much less."""
    lens, exact, floor, first = [], [], [], []
    for s in _sky(fiducial, 0.0, 8, 1):
        b = s["B_lens"]
        exact.append(_power(b - lensing_b_template(GEOM, GEOM.map2fourier(s["E_unlensed"]), s["phi_f"], EPSILON)))
        e_lensed = GEOM.qu2eb(s["Q_lensed"], s["U_lensed"])[0]
        floor.append(_power(b - lensing_b_template(GEOM, e_lensed, s["phi_f"], EPSILON)))
        first.append(_power(b - gradient_b_template(GEOM, e_lensed, s["phi_f"])))
        lens.append(_power(b))
    lens = np.sum(lens, axis=0)
    a_exact, a_floor, a_first = (np.sum(x) / lens.sum() for x in (exact, floor, first))
    print(f"A_res: true phi, unlensed E {a_exact:.2e}; true phi, noiseless lensed E {a_floor:.4f} (remapped), "
          f"{a_first:.4f} (first order)")
    # the template lenses exactly as the simulator did: only the NUFFT error remains
    assert a_exact < 1e-8
    # remapping the lensed E (what data hold) double-counts lensing: a few per cent stay (documented)
    assert 0.02 < a_floor < 0.1
    assert a_first < 0.01


def test_zero_phi_template_is_zero_and_removes_nothing(fiducial):
    s = next(_sky(fiducial, 1.0, 1, 2))
    e_wf = wiener_e_filter(GEOM, fiducial.lensed_cl("EE"), 1.0, 1.0, *BAND) * GEOM.qu2eb(s["Q"], s["U"])[0]
    template = gradient_b_template(GEOM, e_wf, np.zeros_like(s["phi_f"]))
    assert not np.any(template) and not np.any(lensing_b_template(GEOM, e_wf, np.zeros_like(s["phi_f"]), EPSILON))
    b = s["B_lens"]
    lens = np.stack([_power(b)] * 3)
    stats = delensing_metrics(lens, np.stack([_power(b - template)] * 3), np.zeros_like(lens), np.zeros_like(lens),
                              np.ones(lens.shape[1], bool), 3.0, 3)
    assert stats["A_res"] == 1.0 and np.all(stats["BB_res_ratio"] == 1.0) and not stats["spurious_flag"]


def test_phi_from_kappa_inverts_the_flat_sky_convergence():
    rng = np.random.default_rng(0)
    phi = GEOM.map2fourier(rng.standard_normal(GEOM.shape))
    phi[0, 0] = 0.0
    np.testing.assert_allclose(phi_from_kappa(GEOM, 0.5 * GEOM.ell() ** 2 * phi), phi, rtol=1e-12, atol=0)


def _first_order_bb(cl_ee_full, clpp):
    """Lensing C^BB (uK^2 sr) on the rfft grid of GEOM, first order in phi, from an E power given on the full
    fft2 grid: C^BB(l) = (1/A) sum_l' [L.l']^2 sin^2(2(phi_l' - phi_l)) C^EE(l') C^pp(|L|), L = l - l', with
    the modes of phi the simulator draws (0 < |L| < Nyquist)."""
    lxf, lyf = (v.ravel() for v in GEOM.lxly(real=False))
    angle, cee = np.arctan2(lyf, lxf), cl_ee_full.ravel()
    lx, ly = GEOM.lxly()
    out = np.zeros(GEOM.fourier_shape())
    for idx in zip(*np.nonzero(GEOM.ell() > 0)):
        Lx, Ly = lx[idx] - lxf, ly[idx] - lyf
        Lm = np.hypot(Lx, Ly)
        cpp = np.where((Lm > 0) & (Lm < GEOM.ell_nyquist), interp_spectrum(clpp, Lm), 0.0)
        kernel = (Lx * lxf + Ly * lyf) ** 2 * np.sin(2 * (angle - np.arctan2(ly[idx], lx[idx]))) ** 2
        out[idx] = np.sum(kernel * cpp * cee) / GEOM.area
    return out


def test_residual_with_true_phi_is_what_the_wiener_filter_implies(fiducial):
    """E_WF from the data an unlensed sky would give (beam, 5 uK-arcmin noise): the template then misses the
    lensing B of the E the Wiener filter cannot recover, E - F E_obs, of power
    C_unl - 2 F B C_unl + F^2 (B^2 C_unl + N) in the band and C_unl outside."""
    noise, rng = 5.0, np.random.default_rng(3)
    filt = wiener_e_filter(GEOM, fiducial.lensed_cl("EE"), 1.0, noise, *BAND)
    beam = gaussian_beam(1.0, GEOM.ell())
    lens, resid = [], []
    for s in _sky(fiducial, noise, 32, 4):
        e_obs = beam * GEOM.map2fourier(s["E_unlensed"]) + GEOM.qu2eb(
            white_noise_map(GEOM, noise, rng), white_noise_map(GEOM, noise, rng))[0]
        r = s["B_lens"] - lensing_b_template(GEOM, filt * e_obs, s["phi_f"], EPSILON)
        lens.append(_power(s["B_lens"]))
        resid.append(_power(r))
    stats = delensing_metrics(np.array(lens), np.array(resid), np.zeros((32, 9)), np.ones((32, 9)),
                              np.zeros(9, bool), 3.0, 16)

    ell = GEOM.ell(real=False)
    inside = ell < GEOM.ell_nyquist
    c_unl = np.where(inside, interp_spectrum(fiducial.unlensed_cl("EE"), ell), 0.0)
    c_len = interp_spectrum(fiducial.lensed_cl("EE"), ell)
    b = gaussian_beam(1.0, ell)
    f = np.where((ell >= BAND[0]) & (ell <= BAND[1]), c_len * b / (c_len * b**2 + white_noise_cl(noise)), 0.0)
    c_res = np.where(inside, c_unl - 2 * f * b * c_unl + f**2 * (b**2 * c_unl + white_noise_cl(noise)), 0.0)
    expected = (bin_theory(GEOM, _first_order_bb(c_res, fiducial.clpp), EDGES).sum()
                / bin_theory(GEOM, _first_order_bb(c_unl, fiducial.clpp), EDGES).sum())
    print(f"A_res {stats['A_res']:.4f} +- {stats['A_res_err']:.4f}, Wiener expectation {expected:.4f}")
    assert 0.02 < expected < 0.1
    assert abs(stats["A_res"] - expected) < 3 * stats["A_res_err"]


# -- the metric of `deepcmb evaluate` ------------------------------------------------------------------------


def _simulate(path, fields, n_maps=64, shape=(64, 64), seed=7):
    cfg = {"seed": seed, "n_maps": n_maps, "geometry": {"shape": list(shape), "pixel_arcmin": GEOM.pixel_arcmin},
           "instrument": {"noise_p_uk_arcmin": [1.0]}, "simulation": {"fields": fields, "block_size": 32}}
    return run_simulate(cfg, {}, path, progress=False, workers=1)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """64 maps at 1 uK-arcmin; methods: the true kappa, zero, the unbiased EB QE (Wiener-filtered by the
    metric) and the EB QE written Wiener-filtered; every bin checked for a spurious correlation (l_cut above
    the last bin)."""
    d = tmp_path_factory.mktemp("delensing")
    sims = _simulate(d / "sims.h5", ["Q", "U", "Q_lensed", "U_lensed", "kappa"])
    with h5py.File(sims, "r") as f:
        kappa = f["maps/kappa"][...]
    recs = {"true": write_reconstruction(d / "true.h5", kappa, sims_path=sims, method="nn", config={},
                                         attrs={"model": "truth"}),
            "zero": write_reconstruction(d / "zero.h5", 0 * kappa, sims_path=sims, method="nn", config={},
                                         attrs={"model": "zero"}),
            "qe_eb": run_reconstruct_qe({"estimator": "EB"}, {"sims": sims}, d / "qe_eb.h5", progress=False),
            "qe_eb_wf": run_reconstruct_qe({"estimator": "EB", "wiener": True}, {"sims": sims}, d / "qe_eb_wf.h5",
                                           progress=False)}
    out = run_evaluate({**FAST, "delensing": {"l_cut": 2000}}, {"sims": sims, "recs": recs}, d / "eval",
                       progress=False)
    return out, json.loads((out / "summary.json").read_text())


def test_report_and_summary_carry_the_delensing_metric(evaluated):
    out, summary = evaluated
    dl = summary["delensing"]
    assert dl["bins"]["edges"] == EDGES.tolist() and dl["cmb_band"] == list(BAND)
    assert dl["l_cut"] == 2000 and dl["n_sigma"] == 3.0 and dl["wiener_filtered"] == ["qe_eb"]
    with h5py.File(out / "report.h5", "r") as f:
        assert f["truth/BB_lens"].shape == (64, 9)
        np.testing.assert_array_equal(f["delensing/edges"][...], EDGES)
        assert f["delensing"].attrs["cmb_lmin"] == BAND[0] and f["delensing"].attrs["l_cut"] == 2000
        for label in ("true", "zero", "qe_eb", "qe_eb_wf"):
            m = f[f"methods/{label}"]
            assert bool(m.attrs["delensing_wiener"]) == (label == "qe_eb")
            for name in ("BB_res", "TB_noise", "TB_lens"):
                assert m[f"per_map/{name}"].shape == (64, 9)
            g = m["groups/noise0"]
            for name in ("BB_lens_mean", "BB_res_mean", "BB_res_ratio", "BB_res_ratio_err", "spurious",
                         "spurious_err"):
                assert g[name].shape == (9,), name
            # the stored numbers are those of the per-map spectra
            np.testing.assert_allclose(g["A_res"][()], m["per_map/BB_res"][...].mean(0).sum()
                                       / f["truth/BB_lens"][...].mean(0).sum(), rtol=1e-12)
            r = dl["results"][label]["noise0"]
            assert r["n_maps"] == 64 and r["A_res"] == pytest.approx(float(g["A_res"][()]))
    with Report(out / "report.h5") as rep:
        assert rep.delensing_skipped() is None and rep.delensing_centres().shape == (9,)
        assert "delensing" in [job.stem for job in plan_figures(rep)]
        fig = next(job for job in plan_figures(rep) if job.stem == "delensing").draw()
        assert len(fig.axes[0].containers) == 4  # one error-bar series per method


def test_true_kappa_delenses_without_spurious_correlation_and_the_qe_is_flagged(evaluated):
    _, summary = evaluated
    res = summary["delensing"]["results"]
    true, zero, qe = (res[k]["noise0"] for k in ("true", "zero", "qe_eb"))
    print("A_res true {:.4f} +- {:.4f}, EB QE {:.4f} +- {:.4f}".format(true["A_res"], true["A_res_err"], qe["A_res"],
                                                                      qe["A_res_err"]))
    print("spurious EB QE per bin", np.round(qe["spurious"], 3), "+-", np.round(qe["spurious_err"], 3))
    # the true kappa removes all but what the Wiener filter of E misses at 1 uK-arcmin (0.038 at 5 uK-arcmin, see
    # above) and the first-order floor (0.003); the QE much less; zero nothing
    assert 0.003 < true["A_res"] < 0.038 and true["A_res_err"] > 0
    assert true["A_res"] + 5 * qe["A_res_err"] < qe["A_res"] < 0.6
    assert zero["A_res"] == 1.0 and all(v == 1.0 for v in zero["BB_res_ratio"])
    # hygiene: the true kappa knows nothing of the noise; the QE read the B noise it is then compared with
    spurious, err = np.array(true["spurious"]), np.array(true["spurious_err"])
    assert np.all(np.abs(spurious) < 3 * err) and not true["spurious_flag"]
    spurious, err = np.array(qe["spurious"]), np.array(qe["spurious_err"])
    assert spurious[-1] > 5 * err[-1] and qe["spurious_flag"]
    assert summary["delensing"]["spurious_flagged"] == [f"{label}/{group}" for label in ("qe_eb", "qe_eb_wf")
                                                        for group in ("all", "noise0", "cosmo0_noise0")]
    # the metric's Wiener filter of an unbiased QE is the one the QE stage applies
    wf = res["qe_eb_wf"]["noise0"]
    assert wf["A_res"] == pytest.approx(qe["A_res"], rel=1e-4)
    np.testing.assert_allclose(wf["spurious"], qe["spurious"], rtol=1e-3, atol=1e-5)


def test_results_table_has_an_a_res_column(evaluated, tmp_path):
    _, summary = evaluated
    # the table needs a finite rho^2 of every method: leave out the zero map
    summary = json.loads(json.dumps(summary))
    summary["methods"].remove("zero")
    for entry in (summary["results"], summary["cosmology_dependence"], summary["delensing"]["results"]):
        del entry["zero"]
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    res = collect({"test": tmp_path}, resolve(None, RESULTS_SCHEMA))
    table = res["sets"]["test"][0]["delensing"]
    assert table["lmin"] == 200 and table["lmax"] == 2000 and table["methods"]["qe_eb"]["spurious_flag"]
    rst = render_rst(res)
    assert "A_res qe_eb" in rst and f"{summary['delensing']['results']['true']['noise0']['A_res']:.3f} +- " in rst
    assert "(!)" in rst


def test_skipped_without_lensed_maps_for_observations_and_when_disabled(tmp_path):
    sims = _simulate(tmp_path / "sims.h5", ["Q", "U", "kappa"], n_maps=8, shape=(32, 32))
    with h5py.File(sims, "r") as f:
        kappa, q, u = f["maps/kappa"][...], f["maps/Q"][...], f["maps/U"][...]
    rec = write_reconstruction(tmp_path / "rec.h5", kappa, sims_path=sims, method="nn", config={},
                               attrs={"model": "truth"})
    out = run_evaluate(FAST, {"sims": sims, "recs": {"nn": rec}}, tmp_path / "eval", progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["delensing"] == {"skipped": "the simulation file has no Q_lensed, U_lensed (add them to "
                                               "simulation.fields)"}
    with Report(out / "report.h5") as rep, h5py.File(out / "report.h5", "r") as f:
        assert rep.delensing_skipped() == summary["delensing"]["skipped"]
        assert "BB_res" not in f["methods/nn/per_map"] and "BB_lens" not in f["truth"]
        assert "delensing" not in [job.stem for job in plan_figures(rep)]
    assert "Delensing" not in render_rst(collect({"test": out}, resolve(None, RESULTS_SCHEMA)))

    obs = write_observations(tmp_path / "obs.h5", q, u, pixel_arcmin=GEOM.pixel_arcmin, beam_fwhm_arcmin=1.0,
                             noise_p_uk_arcmin=1.0)
    qe = run_reconstruct_qe({"estimator": "EB"}, {"sims": obs}, tmp_path / "qe.h5", progress=False)
    out = run_evaluate(FAST, {"sims": obs, "recs": {"qe_eb": qe}}, tmp_path / "eval_obs", progress=False)
    skipped = json.loads((out / "summary.json").read_text())["delensing"]["skipped"]
    assert skipped.startswith("an observation file has no truth")

    out = run_evaluate({**FAST, "delensing": {"enabled": False}}, {"sims": sims, "recs": {"nn": rec}},
                       tmp_path / "eval_off", progress=False)
    assert json.loads((out / "summary.json").read_text())["delensing"] == {
        "skipped": "evaluate.delensing.enabled is false"}
