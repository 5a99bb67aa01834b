"""`deepcmb evaluate` end to end: a small simulation file, fake reconstructions, report.h5 and summary.json."""

import json
import shutil

import h5py
import numpy as np
import pytest
import yaml

from deepcmb import binning as sp
from deepcmb.cosmology import compute_spectra
from deepcmb.errors import ConfigError, InputError, OutputExistsError
from deepcmb.evaluation import run_evaluate
from deepcmb.cli import build_parser
from deepcmb.evaluation.stage import resolve_config
from deepcmb.geometry import FlatSkyGeometry
from deepcmb.qe import QuadraticEstimator, cosine_window, window_moment
from deepcmb.io.reconstruction import write_reconstruction
from deepcmb.sample import Instrument
from deepcmb.simulate import run_simulate

GEOM = FlatSkyGeometry((32, 32), 2.34375)
SIGMA_NN, SIGMA_QE, SIGMA_E = 0.01, 0.02, 1.0  # white noise per pixel of the fake reconstructions
N_NN = SIGMA_NN**2 * GEOM.pixel_rad**2  # their noise spectra (sr)
N_QE = SIGMA_QE**2 * GEOM.pixel_rad**2
QE_ROWS = np.arange(40)[::-1]  # the QE reconstructs rows 39 .. 0 (an unsorted index)
FAST = {"theory": {"iterative": False}, "jackknife": 8, "examples": 3}
SUMMARY_KEYS = {"sims_file", "created", "git_revision", "methods", "n_maps", "bins", "e_bins", "noise_p_uk_arcmin",
                "cosmologies", "results", "theory", "cosmology_dependence", "truth", "delensing"}
RESULT_KEYS = {"n_maps", "rho2", "rho2_err", "n_eff", "n_eff_err", "transfer", "transfer_err", "snr_cumulative",
               "snr_cumulative_err"}


def _simulate(path, n_maps, seed, cosmology=None, noise=(1.0,)):
    cfg = {"seed": seed, "n_maps": n_maps, "geometry": {"shape": list(GEOM.shape), "pixel_arcmin": GEOM.pixel_arcmin},
           "instrument": {"noise_p_uk_arcmin": list(noise)},
           "simulation": {"fields": ["Q", "U", "E_unlensed", "kappa"], "block_size": 32}}
    if cosmology:
        cfg["cosmology"] = cosmology
    return run_simulate(cfg, {}, path, progress=False, workers=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """64 maps, 2 cosmologies (Alens 1 and 0.5) x 2 noise levels; nn = kappa + noise with an E head on all
    rows, qe = 0.8 kappa + noise on rows 39 .. 0."""
    d = tmp_path_factory.mktemp("evaluate")
    sims = _simulate(d / "sims.h5", 64, 21, {"sampling": "grid", "grid": {"Alens": [1.0, 0.5]}}, (1.0, 5.0))
    with h5py.File(sims, "r") as f:
        kappa, e = f["maps/kappa"][...], f["maps/E_unlensed"][...]
    rng = np.random.default_rng(0)
    nn = write_reconstruction(d / "nn.h5", kappa + SIGMA_NN * rng.standard_normal(kappa.shape),
                              {"E_unlensed": e + SIGMA_E * rng.standard_normal(e.shape)}, sims_path=sims,
                              method="nn", config={}, attrs={"model": "fake"})
    qe_maps = 0.8 * kappa[QE_ROWS] + SIGMA_QE * rng.standard_normal((40,) + GEOM.shape)
    qe = write_reconstruction(d / "qe.h5", qe_maps, sims_path=sims, method="qe", config={},
                              meta={"index": QE_ROWS}, attrs={"estimator": "EB"})
    return {"dir": d, "sims": sims, "nn": nn, "qe": qe}


@pytest.fixture(scope="module")
def evaluated(files):
    out = files["dir"] / "eval"
    run_evaluate(FAST, {"sims": files["sims"], "recs": {"nn": files["nn"], "qe_eb": files["qe"]}}, out, progress=False)
    return out


def test_report_layout_and_physics(files, evaluated):
    with h5py.File(evaluated / "report.h5", "r") as f, h5py.File(files["sims"], "r") as s:
        a = f.attrs
        assert a["format"] == "deepcmb.evaluation" and a["format_version"] == 1 and a["stage"] == "evaluate"
        assert list(a["methods"]) == ["nn", "qe_eb"] and tuple(a["shape"]) == (32, 32) and bool(a["periodic"])
        assert a["window_w2"] == 1.0 and a["apodize_arcmin"] == 0.0 and a["n_maps"] == 40
        assert json.loads(a["config"])["evaluate"]["jackknife"] == 8
        # the rows common to both reconstructions, with their cosmology and noise level
        rows = f["meta/index"][...]
        np.testing.assert_array_equal(rows, np.arange(40))
        np.testing.assert_array_equal(f["meta/cosmology_index"][...], s["meta/cosmology_index"][:40])
        np.testing.assert_array_equal(f["meta/noise_index"][...], s["meta/noise_index"][:40])
        edges, n_modes = f["bins/edges"][...], f["bins/n_modes"][...]
        nb = len(edges) - 1
        assert edges[0] == 100.0 and np.allclose(np.diff(edges), 2 * GEOM.ell_fundamental) and np.all(n_modes > 0)
        np.testing.assert_array_equal(n_modes, sp.mode_counts(GEOM, edges))
        assert f["e_bins/L"].shape == (len(f["e_bins/edges"]) - 1,)
        # theory binned on the same modes; Alens = 0.5 halves it
        clkk = f["cosmology/clkk"][...]
        np.testing.assert_allclose(clkk[0], sp.bin_theory(GEOM, s["cosmology/cl_kk"][0], edges))
        np.testing.assert_allclose(clkk[1], 0.5 * clkk[0], rtol=1e-5)
        np.testing.assert_allclose(f["cosmology/params/Alens"][...], [1.0, 0.5])
        np.testing.assert_allclose(f["instrument/noise_p_uk_arcmin"][...], [1.0, 5.0])
        assert f["instrument"].attrs["beam_fwhm_arcmin"] == 1.0
        n0_eb, n0_mv = f["theory/n0_EB"][...], f["theory/n0_MV_POL"][...]
        assert n0_eb.shape == (2, nb) and np.all(n0_eb[1] > 3 * n0_eb[0]) and np.all(n0_mv <= n0_eb)
        assert "n_iterative" not in f["theory"]
        # per-map spectra: independent recomputation, through the QE's unsorted index
        truth = s["maps/kappa"][:40].astype(float)
        np.testing.assert_allclose(f["truth/kappa_auto"][...], sp.binned_auto_spectrum(GEOM, truth, edges), rtol=1e-6)
        with h5py.File(files["qe"], "r") as q:
            qe_maps = q["maps/kappa"][...][np.argsort(QE_ROWS)].astype(float)
        m = f["methods/qe_eb"]
        assert m.attrs["method"] == "qe" and m.attrs["estimator"] == "EB" and m.attrs["file"] == str(files["qe"])
        np.testing.assert_allclose(m["per_map/cross"][...], sp.binned_cross_spectrum(GEOM, qe_maps, truth, edges),
                                   rtol=1e-6)
        assert "E_auto" not in m["per_map"] and "E_rho" not in m["groups/all"]
        groups = {"all", "noise0", "noise1"} | {f"cosmo{c}_noise{j}" for c in (0, 1) for j in (0, 1)}
        assert set(m["groups"]) == groups
        g = m["groups/cosmo1_noise0"]
        assert (g.attrs["cosmology_index"], g.attrs["noise_index"], g.attrs["n_maps"]) == (1, 0, 10)
        assert m["groups/all"].attrs["cosmology_index"] == -1
        # kappa_hat = 0.8 kappa + n: transfer 0.8, effective noise N / 0.64, rho^2 = C / (C + N_eff)
        g = m["groups/all"]
        assert np.all(np.abs(g["transfer"][...] - 0.8) < 4 * g["transfer_err"][...])
        assert np.all(np.abs(g["n_eff"][...] - N_QE / 0.64) < 4 * g["n_eff_err"][...])
        np.testing.assert_allclose(g["clkk_theory"][...], 0.75 * clkk[0], rtol=1e-5)
        assert np.all(np.isfinite(g["snr_cumulative"][...])) and np.all(np.diff(g["snr_cumulative"][...]) > 0)
        nn = f["methods/nn"]
        assert nn.attrs["model"] == "fake"
        g = nn["groups/noise1"]
        assert np.all(np.abs(g["transfer"][...] - 1) < 4 * g["transfer_err"][...])
        assert np.all(np.abs(g["n_eff"][...] - N_NN) < 4 * g["n_eff_err"][...])
        # the E head: E_hat = E + white noise of known level
        nbe = len(f["e_bins/L"])
        assert nn["per_map/E_resid"].shape == (40, nbe) and f["truth/E_auto"].shape == (40, nbe)
        g = nn["groups/all"]
        n_e = SIGMA_E**2 * GEOM.pixel_rad**2
        assert np.all(np.abs(g["E_resid_mean"][...] / n_e - 1) < 0.1)
        c_e = g["E_truth_mean"][...]
        assert np.all(np.abs(g["E_rho"][...] ** 2 - c_e / (c_e + n_e)) < 4 * 2 * g["E_rho_err"][...] + 0.01)
        # examples: the first rows, sims maps and each method's maps
        np.testing.assert_array_equal(f["examples/index"][...], [0, 1, 2])
        np.testing.assert_array_equal(f["examples/kappa"][...], s["maps/kappa"][:3])
        np.testing.assert_array_equal(f["examples/Q"][...], s["maps/Q"][:3])
        np.testing.assert_allclose(f["examples/qe_eb/kappa"][...], qe_maps[:3], rtol=1e-6)
        assert f["examples/nn/E_unlensed"].shape == (3, 32, 32) and "E_unlensed" not in f["examples/qe_eb"]


def test_summary_json(files, evaluated):
    s = json.loads((evaluated / "summary.json").read_text())
    assert set(s) == SUMMARY_KEYS
    assert s["truth"] is True
    assert s["delensing"] == {"skipped": "the simulation file has no Q_lensed, U_lensed (add them to "
                                         "simulation.fields)"}
    assert s["methods"] == ["nn", "qe_eb"] and s["sims_file"] == str(files["sims"].resolve()) and s["n_maps"] == 40
    nb = len(s["bins"]["L"])
    assert len(s["bins"]["edges"]) == nb + 1 and s["noise_p_uk_arcmin"] == [1.0, 5.0]
    assert [c["index"] for c in s["cosmologies"]] == [0, 1] and s["cosmologies"][1]["params"]["Alens"] == 0.5
    for label in ("nn", "qe_eb"):
        for group, r in s["results"][label].items():
            assert RESULT_KEYS <= set(r) and len(r["rho2"]) == nb and isinstance(r["snr_cumulative"], float)
    assert "E_rho2" in s["results"]["nn"]["all"] and "E_rho2" not in s["results"]["qe_eb"]["all"]
    assert set(s["theory"]) == {"clkk", "n0_EB", "n0_MV_POL"}
    assert set(s["theory"]["n0_EB"]) == {"noise0", "noise1"} and set(s["theory"]["clkk"]) >= {"all", "noise0"}
    # Alens = 0.5 maps reconstruct less power, as expected from the pooled transfer and noise
    for label in ("nn", "qe_eb"):
        dep = s["cosmology_dependence"][label]
        assert dep["cosmo1"]["amplitude"] < 1 < dep["cosmo0"]["amplitude"]
        for d in dep.values():
            assert d["n_maps"] == 20 and abs(d["amplitude"] - d["theory_amplitude"]) < 4 * d["amplitude_err"]


def test_theory_curves_with_iterative_limit(files, tmp_path):
    """One noise level, fiducial cosmology: N_iter < N0(MV_POL) <= N0(EB), the QE N0 on the maps' modes."""
    sims = _simulate(tmp_path / "one.h5", 8, 3)
    with h5py.File(sims, "r") as f:
        rec = write_reconstruction(tmp_path / "rec.h5", f["maps/kappa"][...], sims_path=sims, method="nn", config={})
    out = run_evaluate({"examples": 0}, {"sims": sims, "recs": {"nn": rec}}, tmp_path / "ev", progress=False)
    with h5py.File(out / "report.h5", "r") as f:
        edges, n_iter, n0_mv, n0_eb = (f[k][...] for k in ("bins/edges", "theory/n_iterative", "theory/n0_MV_POL",
                                                           "theory/n0_EB"))
        assert f["examples/index"].shape == (0,) and f["examples/nn/kappa"].shape == (0, 32, 32)
        rho = f["methods/nn/groups/all/rho"][...]
    assert n_iter.shape == n0_mv.shape == (1, len(edges) - 1)
    assert np.all(n_iter < n0_mv) and np.all(n0_mv <= n0_eb)
    assert np.all((n_iter / n0_mv > 0.25) & (n_iter / n0_mv < 0.7))  # cf. 0.35 - 0.44 at 1 uK-arcmin (docs/qe.rst)
    qe = QuadraticEstimator(GEOM, compute_spectra({}), Instrument(1.0, 1.0 / np.sqrt(2.0), 1.0), "EB", lmin=300,
                            lmax=3500, Lmin=edges[0], Lmax=edges[-1])
    np.testing.assert_allclose(n0_eb[0], qe.n0_binned(edges), rtol=1e-10)
    np.testing.assert_allclose(rho, 1.0, rtol=1e-6)  # the truth itself


def test_window_correction(files, tmp_path):
    """Apodised: spectra divided by w2 keep the power level of the unwindowed evaluation."""
    out = run_evaluate(dict(FAST, apodize_arcmin=15.0), {"sims": files["sims"], "recs": {"nn": files["nn"]}}, tmp_path / "ev",
                       progress=False)
    with h5py.File(out / "report.h5", "r") as f, \
            h5py.File(files["dir"] / "eval" / "report.h5", "r") as ref:
        w2 = window_moment(cosine_window(GEOM, 15.0), 2)
        assert f.attrs["apodize_arcmin"] == 15.0 and f.attrs["window_w2"] == pytest.approx(w2) and w2 < 0.7
        g, r = f["methods/nn/groups/all"], ref["methods/nn/groups/all"]
        ratio = g["truth_mean"][...] / g["clkk_theory"][...]
        assert np.all((ratio > 0.75) & (ratio < 1.25))
        np.testing.assert_allclose(g["rho2"][...], r["rho2"][...], atol=0.02)


def _copy(src, dst, edit):
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def test_mismatched_reconstructions_are_refused(files, tmp_path):
    sims = files["sims"]
    other = _simulate(tmp_path / "other.h5", 8, 99)
    with h5py.File(other, "r") as f:
        foreign = write_reconstruction(tmp_path / "foreign.h5", f["maps/kappa"][...], sims_path=other, method="nn",
                                       config={})
    cases = {
        "reconstructed from": foreign,
        "shape": _copy(files["nn"], tmp_path / "shape.h5", lambda f: f.attrs.__setitem__("shape", [16, 16])),
        "pixels": _copy(files["nn"], tmp_path / "pix.h5", lambda f: f.attrs.__setitem__("pixel_arcmin", 3.0)),
        "n_maps": _copy(files["nn"], tmp_path / "count.h5", lambda f: f.attrs.__setitem__("n_maps", 63)),
        "non-finite": _copy(files["nn"], tmp_path / "nan.h5", lambda f: f["maps/kappa"].__setitem__(5, np.nan)),
    }
    for message, rec in cases.items():
        with pytest.raises(InputError, match=message):
            run_evaluate(FAST, {"sims": sims, "recs": {"nn": rec}}, tmp_path / "out", progress=False)
    with h5py.File(sims, "r") as f:
        kappa = f["maps/kappa"][...]
    a = write_reconstruction(tmp_path / "a.h5", kappa[:10], sims_path=sims, method="nn", config={})
    b = write_reconstruction(tmp_path / "b.h5", kappa[10:20], sims_path=sims, method="nn", config={},
                             meta={"index": np.arange(10, 20)})
    with pytest.raises(InputError, match="no simulation row in common"):
        run_evaluate(FAST, {"sims": sims, "recs": {"a": a, "b": b}}, tmp_path / "out", progress=False)
    for label in ("bad-label", "kappa"):
        with pytest.raises(InputError, match="label"):
            run_evaluate(FAST, {"sims": sims, "recs": {label: a}}, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "report.h5").exists()


def test_config_errors_and_existing_output(files, evaluated, tmp_path):
    sims, rec = files["sims"], {"nn": files["nn"]}
    bad = [({"binz": {}}, "evaluate.binz"), ({"jackknife": 1}, "evaluate.jackknife"),
           ({"bins": {"width": 10.0}}, "evaluate.bins"), ({"theory": {"qe_estimators": ["XY"]}}, "qe_estimators"),
           ({"apodize_arcmin": 200.0}, "evaluate.apodize_arcmin"), ({"snr": {"Lmax": 50.0}}, "evaluate.snr.Lmax"),
           ({"e_bins": {"lmin": 3000.0, "lmax": 100.0}}, "evaluate.e_bins")]
    for cfg, message in bad:
        with pytest.raises(ConfigError, match=message):
            run_evaluate(dict(FAST, **cfg), {"sims": sims, "recs": rec}, tmp_path / "out", progress=False)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run_evaluate(FAST, {"sims": sims, "recs": rec}, evaluated, progress=False)


@pytest.mark.parametrize("cfg, message", [
    ({"jackknife": None}, r"^evaluate\.jackknife: expected an integer >= 2, got null$"),
    ({"examples": -1}, r"^evaluate\.examples: expected an integer >= 0, got -1$"),
    ({"apodize_arcmin": -1.0}, r"^evaluate\.apodize_arcmin: expected a number >= 0 or null"),
    ({"bins": {"width": 0}}, r"^evaluate\.bins\.width: expected a number > 0 or null"),
    ({"e_bins": {"lmin": -5}}, r"^evaluate\.e_bins\.lmin: expected a number >= 0"),
])
def test_config_values_are_checked_before_any_file_is_read(cfg, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(cfg)


def test_config_keeps_widths_and_tapers_as_given():
    cfg = resolve_config({"bins": {"width": 150, "Lmin": 150}, "apodize_arcmin": 30})
    assert type(cfg["bins"]["width"]) is int and type(cfg["apodize_arcmin"]) is int
    assert cfg["bins"]["Lmin"] == 150.0 and type(cfg["bins"]["Lmin"]) is float
    assert cfg["e_bins"]["width"] is None


def test_command_line(files, tmp_path):
    parser = build_parser("evaluate")
    config = tmp_path / "evaluate.yaml"
    config.write_text(yaml.safe_dump({"evaluate": FAST, "params": {"anything": 1}, "figures": None}))
    out = tmp_path / "ev"
    argv = ["evaluate", "--config", str(config), "--sims", str(files["sims"]), "--rec", f"nn={files['nn']}",
            "--rec", f"qe_eb={files['qe']}", "--out", str(out), "--quiet"]
    args = parser.parse_args(argv)
    args.func(args)
    assert json.loads((out / "summary.json").read_text())["methods"] == ["nn", "qe_eb"]
    args = parser.parse_args(argv + ["--overwrite"])
    args.func(args)  # replaces the report
    args = parser.parse_args(argv[:5] + ["--rec", "nn"] + argv[9:])
    with pytest.raises(ConfigError, match="LABEL=FILE"):
        args.func(args)
    config.write_text(yaml.safe_dump({"params": {}}))
    args = parser.parse_args(argv)
    with pytest.raises(ConfigError, match="evaluate"):
        args.func(args)


def test_windowed_qe_is_compared_with_w2_kappa(files, tmp_path):
    """A QE run on maps apodised with W returns ~W^2 kappa: the evaluation compares it with W^2 kappa
    (a noise-free W^2 kappa is then the truth itself), and refuses a QE made with another window."""
    window = cosine_window(GEOM, 15.0)
    with h5py.File(files["sims"], "r") as f:
        kappa = f["maps/kappa"][...]
    fake = write_reconstruction(tmp_path / "qe_w.h5", window**2 * kappa, sims_path=files["sims"], method="qe",
                                config={}, attrs={"estimator": "EB", "apodize_arcmin": 15.0})
    out = run_evaluate(dict(FAST, apodize_arcmin=15.0), {"sims": files["sims"], "recs": {"qe_eb": fake, "nn": files["nn"]}},
                       tmp_path / "ev", progress=False)
    with h5py.File(out / "report.h5", "r") as f:
        assert f.attrs["window_w4"] == pytest.approx(window_moment(window, 4))
        g = f["methods/qe_eb/groups/all"]
        np.testing.assert_allclose(g["transfer"][...], 1.0, rtol=1e-6)
        np.testing.assert_allclose(g["rho2"][...], 1.0, rtol=1e-6)
        # a network's kappa (made from unwindowed maps) is windowed by the evaluation: its transfer stays one
        np.testing.assert_allclose(f["methods/nn/groups/all/transfer"][...], 1.0, atol=0.05)
    with pytest.raises(ConfigError, match="apodize_arcmin: 15"):
        run_evaluate(dict(FAST, apodize_arcmin=20.0), {"sims": files["sims"], "recs": {"qe_eb": fake}}, tmp_path / "ev2",
                     progress=False)


def test_masked_maps_are_evaluated_over_the_observed_region(tmp_path):
    """On masked maps the window is each map's mask: a reconstruction that is the truth where the mask observes
    and garbage in the holes and on the edge scores as the truth itself (transfer and rho^2 one); evaluated over
    the whole patch (apodize_arcmin on an unmasked copy of the file) it does not. A QE made from apodised maps
    is refused on masked maps."""
    cfg = {"seed": 3, "n_maps": 24, "geometry": {"shape": list(GEOM.shape), "pixel_arcmin": GEOM.pixel_arcmin},
           "instrument": {"noise_p_uk_arcmin": [1.0]},
           "simulation": {"fields": ["Q", "U", "kappa"], "block_size": 8},
           "survey": {"periodic": False, "mask": {"edge_arcmin": 10.0, "holes_per_deg2": 20.0,
                                                   "hole_radius_arcmin": 4.0, "hole_apodization_arcmin": 0.0}}}
    sims = run_simulate(cfg, {}, tmp_path / "masked.h5", progress=False, workers=1)
    with h5py.File(sims, "r") as f:
        kappa, mask = f["maps/kappa"][...], f["mask"][...].astype(float)
    assert np.mean(mask == 0) > 0.15  # holes and edge: a good part of every patch is unobserved
    garbage = np.where(mask > 0, kappa, 50 * kappa.std() * np.random.default_rng(1).standard_normal(kappa.shape))
    rec = write_reconstruction(tmp_path / "rec.h5", garbage, sims_path=sims, method="nn", config={})
    out = run_evaluate(FAST, {"sims": sims, "recs": {"nn": rec}}, tmp_path / "ev", progress=False)
    with h5py.File(out / "report.h5", "r") as f:
        assert f.attrs["masked"] and f.attrs["apodize_arcmin"] == 0
        assert f.attrs["window_w2"] == pytest.approx(np.mean(mask**2), rel=1e-6)
        g = f["methods/nn/groups/all"]
        np.testing.assert_allclose(g["transfer"][...], 1.0, rtol=1e-6)
        np.testing.assert_allclose(g["rho2"][...], 1.0, rtol=1e-6)
        # the truth's pseudo-spectrum over the mask, divided by w4, estimates C_L^kk
        ratio = f["truth/kappa_auto"][...].mean(axis=0) / f["cosmology/clkk"][0]
        assert np.all(np.abs(ratio[1:] - 1) < 0.35), ratio
    # the same maps without their masks (evaluated over the whole patch with a taper): the garbage counts
    unmasked = tmp_path / "unmasked.h5"
    shutil.copy(sims, unmasked)
    with h5py.File(unmasked, "a") as f:
        del f["mask"]
    rec2 = write_reconstruction(tmp_path / "rec2.h5", garbage, sims_path=unmasked, method="nn", config={})
    out = run_evaluate(dict(FAST, apodize_arcmin=10.0), {"sims": unmasked, "recs": {"nn": rec2}}, tmp_path / "ev2",
                       progress=False)
    with h5py.File(out / "report.h5", "r") as f:
        assert not f.attrs["masked"] and f.attrs["apodize_arcmin"] == 10
        assert np.all(f["methods/nn/groups/all/rho2"][...] < 0.5)
    tapered = write_reconstruction(tmp_path / "qe.h5", kappa, sims_path=sims, method="qe", config={},
                                   attrs={"estimator": "EB", "apodize_arcmin": 15.0})
    with pytest.raises(ConfigError, match="masked maps are evaluated over their mask"):
        run_evaluate(FAST, {"sims": sims, "recs": {"qe_eb": tapered}}, tmp_path / "ev3", progress=False)
