"""Params stage end to end: CAMB emulator accuracy, run_params on a synthetic evaluation report, the CLI.

The report is built by hand with h5py (only the datasets the params stage reads), from Gaussian band
powers of known spectra: a network-like method ``T kappa + n`` and a QE-like method ``kappa + n`` whose
noise is the analytic N0 plus 15% (an "N1"), and for the calibration over cosmology a method whose T and N
are linear in Alens and As. CAMB runs five times in all (lmax 2000, cached on disk): the fiducial
cosmology and four As nodes of the emulator grid.
"""

import json

import h5py
import numpy as np
import pytest

from deepcmb.cosmology import PARAM_NAMES, PLANCK2018
from deepcmb.errors import ConfigError, InputError, OutputExistsError
from deepcmb.geometry import FlatSkyGeometry
from deepcmb.params import run_params
from deepcmb.cli import build_parser
from deepcmb.params.calibration import GRADIENT_DEGREE
from deepcmb.params.emulator import binned_clkk, build_emulator
from deepcmb.binning import bin_centres, linear_bins, mode_counts

GEOM = FlatSkyGeometry((128, 128), 2.34375)
EDGES = linear_bins(100.0, 2000.0, 150.0)
CAMB = {"lmax": 2000, "lens_potential_accuracy": 1}
AS_PRIOR = [1.8e-9, 2.4e-9]
AS_NODES = np.linspace(*AS_PRIOR, 4)
N_MAPS = 60
L = bin_centres(GEOM, EDGES)
NN_TRANSFER = 0.9 - 0.3 * L / 2000.0
NN_NOISE = np.full(L.size, 4e-9)
QE_N0 = np.full(L.size, 8e-9)
QE_N1 = 0.15 * QE_N0
FAST = {"Lmax": 1500, "walkers": 16, "steps": 300, "burn": 100, "camb": CAMB}


@pytest.fixture(scope="module")
def cosmologies():
    """(params, binned C^kk) of the three cosmologies: fiducial, Alens = 1.15, As on an emulator node."""
    fid = dict(PLANCK2018)
    clkk0 = binned_clkk(GEOM, EDGES, fid, **CAMB)
    high_as = dict(fid, As=float(AS_NODES[2]))
    return [(fid, clkk0), (dict(fid, Alens=1.15), 1.15 * clkk0), (high_as, binned_clkk(GEOM, EDGES, high_as, **CAMB))]


def constant(transfer, noise):
    """A response independent of cosmology: params -> (transfer, noise), each shape (nb,)."""
    return lambda params: (np.broadcast_to(transfer, L.shape), noise)


DEFAULT_METHODS = {"nn": ("nn", constant(NN_TRANSFER, NN_NOISE)), "qe_eb": ("qe", constant(1.0, QE_N0 + QE_N1))}


def make_report(path, cosmologies, seed=0, skip=(), methods=DEFAULT_METHODS):
    """Write a minimal report.h5; ``skip`` names datasets to leave out.

    ``methods``: label -> (kind 'nn' | 'qe', response), ``response(params) -> (T, N)``, each shape (nb,);
    a 'qe' method gets the analytic N0 ``QE_N0`` of estimator EB.
    """
    rng = np.random.default_rng(seed)
    modes = mode_counts(GEOM, EDGES).astype(int)
    n = N_MAPS * len(cosmologies)
    cosmo_index = np.repeat(np.arange(len(cosmologies)), N_MAPS)
    truth = np.empty((n, L.size))
    per = {label: np.empty((2, n, L.size)) for label in methods}
    response = {label: np.array([np.stack(fn(c[0])) for c in cosmologies])[cosmo_index]
                for label, (_, fn) in methods.items()}
    for b, m in enumerate(modes):
        clkk = np.array([c[1][b] for c in cosmologies])[cosmo_index]
        k = np.sqrt(clkk)[:, None] * rng.standard_normal((n, m))
        truth[:, b] = (k * k).mean(1)
        for label in methods:
            t, noise = response[label][:, 0, b], response[label][:, 1, b]
            rec = t[:, None] * k + np.sqrt(noise)[:, None] * rng.standard_normal((n, m))
            per[label][:, :, b] = [(rec * rec).mean(1), (rec * k).mean(1)]
    data = {
        "bins/edges": EDGES, "bins/L": L, "bins/n_modes": modes.astype(float),
        "meta/index": np.arange(n), "meta/cosmology_index": cosmo_index, "meta/noise_index": np.zeros(n, int),
        "cosmology/clkk": np.array([c[1] for c in cosmologies]), "truth/kappa_auto": truth,
        "theory/n0_EB": QE_N0[None, :],
    }
    data.update({f"cosmology/params/{p}": np.array([c[0][p] for c in cosmologies]) for p in PARAM_NAMES})
    for label, (auto, cross) in per.items():
        data[f"methods/{label}/per_map/auto"] = auto
        data[f"methods/{label}/per_map/cross"] = cross
    with h5py.File(path, "w") as f:
        f.attrs.update(format="deepcmb.evaluation", format_version=1, shape=[128, 128], pixel_arcmin=2.34375,
                       methods=list(methods), periodic=True)
        for name, values in data.items():
            if name not in skip:
                f[name] = values
        for label, (kind, _) in methods.items():
            f[f"methods/{label}"].attrs.update(method=kind, **({"estimator": "EB"} if kind == "qe" else {}))
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory, cosmologies):
    return make_report(tmp_path_factory.mktemp("params") / "report.h5", cosmologies)


def analytic_alens_error(clkk, alens, transfer, noise, n_test, n_cal=N_MAPS, Lmax=1500):
    """Fisher error of Alens: Gaussian band powers of the test maps plus the noise-calibration error."""
    use = EDGES[1:] <= Lmax
    m = mode_counts(GEOM, EDGES)[use]
    s, c, t2, nl = transfer[use] ** 2 * clkk[use], clkk[use], transfer[use] ** 2, noise[use]
    var = 2 * (alens * s + nl) ** 2 / (m * n_test) + (4 * t2 * c * nl + 2 * nl**2) / (m * n_cal)
    return np.sum(s**2 / var) ** -0.5


def test_emulator_matches_camb_off_grid(cosmologies):
    """Cubic interpolation over four CAMB nodes of As reproduces CAMB at the (off-node) fiducial As."""
    emu = build_emulator(GEOM, EDGES, ["Alens", "As"], PLANCK2018, {"As": AS_PRIOR}, 4, progress=False, **CAMB)
    direct = cosmologies[0][1]
    assert PLANCK2018["As"] not in AS_NODES
    assert np.max(np.abs(emu([1.0, PLANCK2018["As"]]) / direct - 1)) < 2e-3
    assert np.allclose(emu([1.0, AS_NODES[2]]), cosmologies[2][1], rtol=1e-10)
    # Alens scales C^kk exactly
    assert np.allclose(emu([1.37, 2.2e-9]), 1.37 * emu([1.0, 2.2e-9]), rtol=1e-12)
    # C^kk responds to As nearly linearly, more on small scales (non-linear growth)
    response = emu.log_derivatives(emu.base_theta())[1]
    assert np.all((response > 0.95) & (response < 1.5)) and response[-1] > response[0]


def test_run_params_recovers_alens(report, cosmologies, tmp_path):
    out = run_params(dict(FAST, sample=["Alens"]), {"report": report}, tmp_path / "params", progress=False)
    summary = json.loads((out / "summary.json").read_text())
    res = summary["results"]
    assert summary["parameters"] == ["Alens"] and summary["test_cosmologies"] == [1, 2]
    assert summary["derived_parameter"] is None
    for label, t, noise in (("nn", NN_TRANSFER, NN_NOISE), ("qe_eb", np.ones(L.size), QE_N0 + QE_N1)):
        a = res[label]["cosmo1"]["Alens"]
        assert a["truth"] == 1.15 and abs(a["pull"]) < 2 and res[label]["cosmo1"]["within_2sigma"]
        assert a["std"] == pytest.approx(analytic_alens_error(cosmologies[0][1], 1.15, t, noise, N_MAPS), rel=0.2)
        assert a["std"] == pytest.approx(a["fisher_std"], rel=0.2)
    # QE with N0 alone misses N1 and overestimates the amplitude
    qe = res["qe_eb"]["cosmo1"]
    assert qe["n0_only"]["Alens"]["mean"] > qe["Alens"]["mean"] + 3 * qe["Alens"]["std"]
    assert not qe["n0_only"]["within_2sigma"] and "biased high" in summary["notes"]
    # As is not sampled: cosmology 2's extra power goes into Alens, and the notes say so
    ratio = cosmologies[2][1] / cosmologies[0][1]
    assert 1.04 < ratio.min() < ratio.max() < 1.06
    for label in ("nn", "qe_eb"):
        a = res[label]["cosmo2"]["Alens"]
        assert ratio.min() - 3 * a["std"] < a["mean"] < ratio.max() + 3 * a["std"] and a["pull"] > 3
    assert "cosmo2: parameters not sampled differ" in summary["notes"] and "As = 2.2e-09" in summary["notes"]
    assert summary["theory_check"]["emulator_vs_report_max_rel"] < 1e-9
    cal = summary["calibration"]
    nb = len(summary["bins"]["L"])
    assert nb == 9 and summary["bins"]["edges"][-1] <= 1500
    assert np.allclose(cal["nn"]["transfer"], NN_TRANSFER[:nb], rtol=0.05)
    assert np.allclose(cal["qe_eb"]["n0"], QE_N0[:nb])
    assert np.allclose(np.mean(cal["qe_eb"]["noise_residual"]), QE_N1[0], rtol=0.3)
    with h5py.File(out / "chains.h5", "r") as f:
        assert f.attrs["format"] == "deepcmb.params" and list(f.attrs["parameters"]) == ["Alens"]
        g = f["nn/cosmo1"]
        assert g["chain"].shape == (200, 16, 1) and g["log_prob"].shape == (200, 16)
        assert g["data"].shape == (nb,) and g["covariance"].shape == (nb, nb) and g["model_best"].shape == (nb,)
        assert list(g.attrs["param_names"]) == ["Alens"] and g.attrs["truth"][0] == 1.15
        assert 0.2 < g.attrs["acceptance"] < 0.9 and g.attrs["debias"] == "calibrated"
        assert f["qe_eb/cosmo1/n0_only"].attrs["debias"] == "n0"
        assert np.allclose(f["calibration/nn/noise"][()], NN_NOISE[:nb], rtol=0.2)
        assert f["bins/edges"].shape == (nb + 1,)
        # the best-fit model describes the data: chi2 of order the number of bins
        assert g.attrs["chi2_best"] < nb + 5 * np.sqrt(2 * nb)


def test_run_params_alens_as_gives_the_degenerate_amplitude(report, cosmologies, tmp_path):
    cfg = dict(FAST, sample=["Alens", "As"], priors={"As": AS_PRIOR}, emulator_points=4, test_cosmologies=[2],
               methods=["nn"], steps=600, burn=200)
    out = run_params(cfg, {"report": report}, tmp_path / "p2", progress=False)
    summary = json.loads((out / "summary.json").read_text())
    r = summary["results"]["nn"]["cosmo2"]
    d = r["derived"]["Alens_eff"]
    assert summary["derived_parameter"] == "Alens_eff"
    assert 0.95 < d["exponents"]["As"] < 1.5 and d["correlation_with_Alens"]["As"] > 0.98
    assert d["truth"] == pytest.approx((AS_NODES[2] / PLANCK2018["As"]) ** d["exponents"]["As"])
    assert abs(d["pull"]) < 2 and r["within_2sigma"]
    # the data pin the product, not the factors
    assert d["std"] < r["Alens"]["std"] / 3 and r["As"]["prior_std_ratio"] > 0.5
    assert "nearly degenerate" in summary["notes"]
    assert ("nn: constrained: Alens_eff (= Alens * (As/2.101e-09)^" in summary["notes"]
            and "degenerate in the model, marginals set by the priors: Alens, As; prior" in summary["notes"])
    with h5py.File(out / "chains.h5", "r") as f:
        g = f["nn/cosmo2"]
        assert g["chain"].shape == (400, 16, 2) and g["derived"].shape == (400, 16)
        assert g.attrs["derived_name"] == "Alens_eff"


def linear_response(params):
    """A network whose transfer grows with As (like a fiducially normalised QE) and noise with Alens and As."""
    alens, amp = params["Alens"] - 1, params["As"] / PLANCK2018["As"] - 1
    return NN_TRANSFER * (1 + 0.2 * alens + 1.0 * amp), NN_NOISE * (1 + 0.5 * alens + 1.0 * amp)


LINEAR_SLOPES = {"Alens": (0.2, 0.5), "As": (1.0, 1.0)}
"""d ln T / d ln P and d ln N / d ln P of :func:`linear_response` at the fiducial cosmology."""


@pytest.fixture(scope="module")
def over_cosmology(tmp_path_factory, cosmologies):
    """Report of ``linear_response``: calibration cosmologies 0-4 (fiducial, Alens 0.8 and 1.2, As on the
    outer emulator nodes), held-out tests 5-8 (Alens 0.9 and 1.1, As on the inner nodes)."""
    fid, clkk0 = cosmologies[0]
    at_as = [(dict(fid, As=float(a)), binned_clkk(GEOM, EDGES, dict(fid, As=float(a)), **CAMB)) for a in AS_NODES]
    by_alens = [(dict(fid, Alens=a), a * clkk0) for a in (0.8, 1.2, 0.9, 1.1)]
    cosmos = [cosmologies[0], *by_alens[:2], at_as[0], at_as[3], *by_alens[2:], at_as[1], at_as[2]]
    return make_report(tmp_path_factory.mktemp("linear") / "report.h5", cosmos, seed=3,
                       methods={"nn": ("nn", linear_response)})


def test_calibration_over_cosmology_recovers_held_out_cosmologies(over_cosmology, tmp_path):
    """T(theta), N(theta) linear in (Alens, As) from five calibration cosmologies: every held-out cosmology is
    recovered within 2 sigma, while a calibration on the fiducial maps alone is biased by many sigma."""
    cfg = dict(FAST, sample=["Alens", "As"], priors={"As": AS_PRIOR}, emulator_points=4, steps=400, burn=150,
               calibration_cosmologies=[0, 1, 2, 3, 4])
    out = run_params(cfg, {"report": over_cosmology}, tmp_path / "linear", progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["calibration_cosmologies"] == [0, 1, 2, 3, 4] and summary["test_cosmologies"] == [5, 6, 7, 8]
    res = summary["results"]["nn"]
    for c in (5, 6, 7, 8):
        assert res[f"cosmo{c}"]["within_2sigma"], (c, res[f"cosmo{c}"])
    # the derived amplitude's truth counts Alens once: Alens = 0.9 at the fiducial As gives 0.9
    assert res["cosmo5"]["derived"]["Alens_eff"]["truth"] == pytest.approx(0.9)
    # the measured cosmology dependence is the simulated one
    cal = summary["calibration"]["nn"]
    assert cal["cosmologies"] == [0, 1, 2, 3, 4] and cal["linear_fit"]["dof"] == 2 * len(summary["bins"]["L"])
    smoothing = cal["gradient_smoothing"]
    n_bins = len(summary["bins"]["L"])
    assert smoothing["dof"] == (n_bins - GRADIENT_DEGREE - 1 if n_bins > GRADIENT_DEGREE + 1 else 0)
    assert set(smoothing["chi2_noise"]) == {"Alens", "As"}
    for name, (dlnt, dlnn) in LINEAR_SLOPES.items():
        g = cal["gradients"][name]
        assert abs(g["dlnT_dlnP"] - dlnt) < 4 * g["dlnT_dlnP_err"]
        assert abs(g["dlnN_dlnP"] - dlnn) < 4 * g["dlnN_dlnP_err"]
    assert "measured cosmology dependence" in summary["notes"] and "rejected" not in summary["notes"]
    with h5py.File(out / "chains.h5", "r") as f:
        assert list(f.attrs["calibration_cosmologies"]) == [0, 1, 2, 3, 4]
        g = f["calibration/nn"]
        assert g["transfer_gradient"].shape == g["noise_gradient_err"].shape == (2, len(summary["bins"]["L"]))
        assert list(g.attrs["parameter_names"]) == ["Alens", "As"]
        assert g.attrs["smooth_dof"] == smoothing["dof"] and g.attrs["smooth_chi2_noise"].shape == (2,)
    # the same data with a constant T, N from the fiducial maps: every test cosmology is off by many sigma
    out = run_params(dict(cfg, calibration_cosmologies=[0], test_cosmologies=[5, 6, 7, 8]), {"report": over_cosmology}, tmp_path / "constant", progress=False)
    single = json.loads((out / "summary.json").read_text())
    res = single["results"]["nn"]
    assert all(abs(res[f"cosmo{c}"]["derived"]["Alens_eff"]["pull"]) > 4 for c in (5, 6, 7, 8))
    assert not any(res[f"cosmo{c}"]["within_2sigma"] for c in (5, 6, 7, 8))
    assert "gradients" not in single["calibration"]["nn"] and "calibrate on several cosmologies" in single["notes"]


def test_chains_are_reproducible_and_outputs_protected(report, tmp_path):
    cfg = dict(FAST, sample=["Alens"], methods=["nn"], test_cosmologies=[1], steps=30, burn=10)
    a = run_params(cfg, {"report": report}, tmp_path / "a", progress=False)
    b = run_params(cfg, {"report": report}, tmp_path / "b", progress=False)
    with h5py.File(a / "chains.h5", "r") as fa, h5py.File(b / "chains.h5", "r") as fb:
        assert np.array_equal(fa["nn/cosmo1/chain"][()], fb["nn/cosmo1/chain"][()])
    with pytest.raises(OutputExistsError, match="chains.h5"):
        run_params(cfg, {"report": report}, a, progress=False)
    run_params(dict(cfg, seed=2), {"report": report}, a, overwrite=True, progress=False)
    with h5py.File(a / "chains.h5", "r") as fa, h5py.File(b / "chains.h5", "r") as fb:
        assert not np.array_equal(fa["nn/cosmo1/chain"][()], fb["nn/cosmo1/chain"][()])


@pytest.mark.parametrize("skip, cfg, error, match", [
    (("truth/kappa_auto",), {}, InputError, "/truth/kappa_auto"),
    (("theory/n0_EB",), {}, InputError, "n0_EB"),
    ((), {"methods": ["cnn"]}, InputError, "params.methods"),
    ((), {"test_cosmologies": [5]}, ConfigError, "params.test_cosmologies"),
    ((), {"calibration_cosmologies": [7]}, ConfigError, "params.calibration_cosmologies"),
    ((), {"calibration_cosmologies": [0, 2]}, ConfigError, "params.calibration_cosmologies: .* not sampled: As"),
    ((), {"calibration_cosmologies": [0, 1], "sample": ["Alens", "As"], "priors": {"As": AS_PRIOR}}, ConfigError,
     "params.calibration_cosmologies: .* As = 2.101e-09 take the same value"),
    ((), {"Lmin": 1460, "Lmax": 1500}, ConfigError, "params.Lmin"),
    ((), {"sample": ["Alens", "As"], "priors": {"As": [2.2e-9, 2.4e-9]}}, ConfigError, "params.priors.As"),
])
def test_unusable_report_or_config_is_refused(cosmologies, tmp_path, skip, cfg, error, match):
    path = make_report(tmp_path / "report.h5", cosmologies, skip=skip)
    with pytest.raises(error, match=match):
        run_params({**FAST, "sample": ["Alens"], **cfg}, {"report": path}, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_reads_the_params_section(report, tmp_path):
    parser = build_parser("params")
    config = tmp_path / "evaluate.yaml"
    config.write_text("evaluate:\n  examples: 2\nparams:\n  sample: [Alens]\n  methods: [qe_eb]\n"
                      "  test_cosmologies: [1]\n  Lmax: 1500\n  walkers: 8\n  steps: 20\n  burn: 5\n"
                      "  camb: {lmax: 2000}\n")
    args = parser.parse_args(["params", "--config", str(config), "--report", str(report), "--out",
                              str(tmp_path / "cli"), "--quiet"])
    args.func(args)
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["results"]["qe_eb"]["cosmo1"]["n_maps"] == N_MAPS
    config.write_text("params:\n  sampel: [Alens]\n")
    args = parser.parse_args(["params", "--config", str(config), "--report", str(report), "--out",
                              str(tmp_path / "cli2")])
    with pytest.raises(ConfigError, match="did you mean 'params.sample'"):
        args.func(args)
