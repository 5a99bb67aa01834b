"""The observation file (maps deepcmb did not simulate): its reader and writer, and the stages that take it
(reconstruct qe and nn, evaluate without truth)."""

import json

import h5py
import numpy as np
import pytest
import yaml

from deepcmb.cli import main
from deepcmb.errors import InputError, OutputExistsError
from deepcmb.io.maps import open_maps
from deepcmb.io.observations import open_observations, write_observations
from deepcmb.io.reconstruction import open_reconstruction
from deepcmb.io.sims import read_instruments

SHAPE = (64, 64)
PIXEL = 2.34375


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    """8 maps of the shipped network's geometry and instrument (64 x 64 pixels of 2.34', 1 uK', 1' beam)."""
    d = tmp_path_factory.mktemp("obs_sims")
    cfg = {"seed": 11, "n_maps": 8, "geometry": {"shape": list(SHAPE), "pixel_arcmin": PIXEL},
           "instrument": {"beam_fwhm_arcmin": 1.0, "noise_p_uk_arcmin": [1.0]},
           "simulation": {"fields": ["Q", "U", "kappa"], "block_size": 8}}
    (d / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = d / "sims.h5"
    assert main(["simulate", "--config", str(d / "cfg.yaml"), "--out", str(out), "--workers", "1", "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def sky(sims):
    """The simulation's Q, U and instrument, written as observation files in both conventions (and in a
    wrong one: IAU maps declared COSMO)."""
    with h5py.File(sims, "r") as f:
        q, u = f["maps/Q"][...], f["maps/U"][...]
        inst = read_instruments(f)[0]
    kw = {"pixel_arcmin": PIXEL, "beam_fwhm_arcmin": inst.beam_fwhm_arcmin, "noise_p_uk_arcmin": inst.noise_p_uk_arcmin}
    d = sims.parent
    return {"q": q, "u": u, "kw": kw,
            "cosmo": write_observations(d / "cosmo.h5", q, u, **kw),
            "iau": write_observations(d / "iau.h5", q, -u, pol_convention="IAU", **kw),
            "wrong": write_observations(d / "wrong.h5", q, -u, **kw)}


def _valid(path, **over):
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((3, 8, 8))
    kw = {"pixel_arcmin": 2.0, "beam_fwhm_arcmin": 1.5, "noise_p_uk_arcmin": 3.0, **over}
    return write_observations(path, maps, 2 * maps, **kw)


def _qe(data, out, *extra):
    return main(["reconstruct", "--method", "qe", "--sims", str(data), "--out", str(out), "--quiet", *extra])


def test_round_trip_returns_maps_in_the_cosmo_convention(tmp_path):
    rng = np.random.default_rng(1)
    q, u, t = (rng.standard_normal((4, 16, 8)).astype(np.float32) for _ in range(3))
    path = write_observations(tmp_path / "obs.h5", q, u, T=t, pixel_arcmin=1.5, beam_fwhm_arcmin=2.0,
                              noise_p_uk_arcmin=4.0, noise_t_uk_arcmin=3.0, periodic=False, pol_convention="IAU",
                              mask=np.ones((16, 8)), ivar_p=np.full((4, 16, 8), 0.25))
    with open_observations(path) as obs:
        assert (obs.n_maps, obs.shape, obs.pixel_arcmin, obs.periodic) == (4, (16, 8), 1.5, False)
        assert (obs.instrument.beam_fwhm_arcmin, obs.instrument.noise_p_uk_arcmin,
                obs.instrument.noise_t_uk_arcmin) == (2.0, 4.0, 3.0)
        assert obs.fields == ["T", "Q", "U"] and obs.weights == ["mask", "ivar_p"] and not obs.masked
        rows = np.array([3, 1])
        np.testing.assert_array_equal(obs.read("Q", rows), q[rows])
        np.testing.assert_array_equal(obs.read("U", rows), -u[rows])  # IAU -> COSMO
        np.testing.assert_array_equal(obs.read("T", rows), t[rows])
        np.testing.assert_array_equal(obs.read("mask", rows), np.ones((2, 16, 8)))
        np.testing.assert_array_equal(obs.read("ivar_p", rows), np.full((2, 16, 8), 0.25))
        np.testing.assert_array_equal(obs.noise_index, np.zeros(4))
    with open_maps(path) as m:
        assert m.kind == "observations"
    with pytest.raises(OutputExistsError, match="exists"):
        write_observations(path, q, u, pixel_arcmin=1.5, beam_fwhm_arcmin=2.0, noise_p_uk_arcmin=4.0)


def _set_attr(name, value):
    def edit(f):
        f.attrs[name] = value
    return edit


def _del_attr(name):
    def edit(f):
        del f.attrs[name]
    return edit


def _dataset(name, data):
    def edit(f):
        if name in f:
            del f[name]
        f[name] = data
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set_attr("format", "deepcmb.sims"), "not a complete simulation file"),
    (_set_attr("format", "deepcmb.other"), "not a deepcmb simulation or observation file"),
    (_set_attr("format_version", 2), "format_version 2 is not supported"),
    (_del_attr("pixel_arcmin"), "missing root attribute 'pixel_arcmin'"),
    (_del_attr("noise_p_uk_arcmin"), "missing root attribute 'noise_p_uk_arcmin'"),
    (_set_attr("pixel_arcmin", -1.0), "pixel_arcmin = -1.0 must be a finite number > 0"),
    (_set_attr("beam_fwhm_arcmin", np.nan), "beam_fwhm_arcmin = nan"),
    (_del_attr("periodic"), "missing root attribute 'periodic'"),
    (_set_attr("periodic", "yes"), "periodic = 'yes' must be a boolean"),
    (_set_attr("pol_convention", "HEALPIX"), "pol_convention 'HEALPIX' must be 'COSMO' or 'IAU'"),
    (_dataset("maps/U", np.zeros((3, 8, 4))), "/maps/U has shape (3, 8, 4), /maps/Q (3, 8, 8)"),
    (_dataset("maps/Q", np.zeros((8, 8))), "/maps/Q has shape (8, 8), expected (N, ny, nx)"),
    (_dataset("maps/T", np.zeros((3, 8, 8))), "/maps/T needs the root attribute 'noise_t_uk_arcmin'"),
    (_dataset("mask", np.ones((4, 4))), "/mask has shape (4, 4), expected (8, 8) or (3, 8, 8)"),
    (_dataset("mask", np.full((8, 8), 1.5)), "/mask has values in [1.5, 1.5], outside [0, 1]"),
    (_dataset("ivar_p", np.full((3, 8, 8), -1.0)), "/ivar_p has negative values"),
    (_dataset("ivar_p", np.full((8, 8), np.inf)), "/ivar_p holds NaN or infinite values"),
])
def test_malformed_files_are_refused_in_one_line(tmp_path, edit, message):
    path = _valid(tmp_path / "obs.h5")
    with h5py.File(path, "a") as f:
        edit(f)
    with pytest.raises(InputError) as err:
        with open_maps(path) as m:
            m.read("Q", [0])
    text = str(err.value)
    assert "\n" not in text and text.startswith(str(path)) and message in text


def test_non_finite_maps_are_refused_when_read_and_never_written(tmp_path):
    path = _valid(tmp_path / "obs.h5")
    with h5py.File(path, "a") as f:
        f["maps/U"][2, 3, 4] = np.nan
    with open_observations(path) as obs:
        obs.read("U", [0, 1])
        with pytest.raises(InputError, match=r"obs.h5: /maps/U holds NaN or infinite values \(map 2\)$"):
            obs.read("U", [2])
    bad = np.ones((2, 4, 4))
    bad[1, 0, 0] = np.inf
    with pytest.raises(InputError, match=r"new.h5: /maps/Q holds NaN"):
        write_observations(tmp_path / "new.h5", bad, bad, pixel_arcmin=1.0, beam_fwhm_arcmin=0.0, noise_p_uk_arcmin=1.0)
    assert list(tmp_path.iterdir()) == [path]


def test_qe_on_observations_equals_qe_on_the_simulation_in_either_convention(sims, sky, tmp_path, capsys):
    recs = {}
    for name, data in (("sims", sims), ("cosmo", sky["cosmo"]), ("iau", sky["iau"]), ("wrong", sky["wrong"])):
        assert _qe(data, tmp_path / f"{name}.h5") == 0
        with open_reconstruction(tmp_path / f"{name}.h5", data) as f:
            recs[name] = f["maps/kappa"][...]
            if name == "cosmo":  # the reconstruction file records the observation file and its instrument's N0
                assert f.attrs["sims_file"] == str(sky["cosmo"].resolve()) and f.attrs["sims_git_revision"] == ""
                assert f["n0/kappa"].shape[0] == 1 and np.all(np.isfinite(f["n0/kappa"][...]))
                np.testing.assert_array_equal(f["meta/noise_index"][...], np.zeros(8))
    np.testing.assert_array_equal(recs["cosmo"], recs["sims"])
    np.testing.assert_array_equal(recs["iau"], recs["sims"])
    # the convention matters: IAU maps read as COSMO mix E and B, and give another kappa
    assert np.std(recs["wrong"] - recs["sims"]) > 0.5 * np.std(recs["sims"])
    # a reconstruction of one observation file is not one of another (the identity is the content)
    with pytest.raises(InputError, match="was reconstructed from"):
        open_reconstruction(tmp_path / "cosmo.h5", sky["iau"])


def test_masked_observations_go_to_the_masked_qe_and_are_refused_by_the_network(sky, tmp_path, capsys):
    mask = np.ones(SHAPE)
    mask[:4] = 0
    masked = write_observations(tmp_path / "masked.h5", sky["q"], sky["u"], mask=mask, **sky["kw"])
    assert _qe(masked, tmp_path / "rec.h5", "--mean-field-maps", "2", "--response-maps", "4") == 0
    with open_reconstruction(tmp_path / "rec.h5", masked) as f:
        assert f.attrs["filter"] == "cinv" and f.attrs["mask_w2"] == pytest.approx(60 / 64)
        assert np.all(np.isfinite(f["maps/kappa"][...])) and f["maps/kappa_mean_field"].shape == (8,) + SHAPE
    capsys.readouterr()
    assert main(["reconstruct", "--method", "nn", "--sims", str(masked), "--out", str(tmp_path / "nn.h5"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "masked maps" in err and "reads the mask and the noise map (--model survey)" in err
    assert not (tmp_path / "nn.h5").exists()
    # a constant ivar_p and an all-ones mask are trivial: accepted
    trivial = write_observations(tmp_path / "trivial.h5", sky["q"][:2], sky["u"][:2], mask=np.ones(SHAPE),
                                 ivar_p=np.full(SHAPE, 3.0), **sky["kw"])
    assert _qe(trivial, tmp_path / "trivial_rec.h5") == 0


def test_non_periodic_observations_are_apodised_with_a_mean_field(sky, tmp_path):
    patch = write_observations(tmp_path / "patch.h5", sky["q"], sky["u"], periodic=False, **sky["kw"])
    assert _qe(patch, tmp_path / "rec.h5") == 0
    with open_reconstruction(tmp_path / "rec.h5", patch) as f:
        assert f.attrs["apodize_arcmin"] == 60 and f.attrs["mean_field"].startswith("half-split")
        assert np.all(np.isfinite(f["maps/kappa"][...]))


def test_network_on_observations_equals_network_on_the_simulation(sims, sky, tmp_path):
    pytest.importorskip("keras")
    kappa = {}
    for name, data in (("sims", sims), ("cosmo", sky["cosmo"]), ("iau", sky["iau"])):
        out = tmp_path / f"{name}.h5"
        assert main(["reconstruct", "--method", "nn", "--sims", str(data), "--out", str(out), "--quiet"]) == 0
        with open_reconstruction(out, data) as f:
            kappa[name] = f["maps/kappa"][...]
    assert np.std(kappa["sims"]) > 0
    np.testing.assert_array_equal(kappa["cosmo"], kappa["sims"])
    np.testing.assert_array_equal(kappa["iau"], kappa["sims"])


def test_evaluate_without_truth_compares_the_methods(sky, tmp_path, capsys):
    obs = sky["cosmo"]
    for est in ("EB", "EE"):
        assert _qe(obs, tmp_path / f"{est}.h5", "--estimator", est) == 0
    cfg = tmp_path / "ev.yaml"
    cfg.write_text(yaml.safe_dump({"evaluate": {"theory": {"iterative": False}, "jackknife": 4, "examples": 2}}))
    out = tmp_path / "ev"
    assert main(["evaluate", "--config", str(cfg), "--sims", str(obs), "--rec", f"eb={tmp_path / 'EB.h5'}",
                 "--rec", f"ee={tmp_path / 'EE.h5'}", "--out", str(out), "--quiet"]) == 0
    with h5py.File(out / "report.h5", "r") as f, h5py.File(tmp_path / "EB.h5", "r") as eb:
        assert not f.attrs["truth"] and "truth" not in f and f.attrs["sims_file"] == str(obs.resolve())
        auto, cross = f["methods/eb/per_map/auto"][...], f["methods/eb/per_map/cross_ee"][...]
        np.testing.assert_array_equal(cross, f["methods/ee/per_map/cross_eb"][...])
        g = f["methods/eb/groups/all"]
        np.testing.assert_allclose(g["auto_mean"][...], auto.mean(axis=0))
        rho = g["rho_ee"][...]
        ee_auto = f["methods/ee/per_map/auto"][...]
        np.testing.assert_allclose(rho, cross.mean(0) / np.sqrt(auto.mean(0) * ee_auto.mean(0)))
        assert np.all(np.abs(rho) <= 1) and np.all(rho > 0) and np.all(np.isfinite(g["rho_ee_err"][...]))
        # the unbiased EB estimate's power is its analytic N0 plus the fiducial C^kk (8 small maps: 25 %)
        expected = f["theory/n0_EB"][0] + f["cosmology/clkk"][0]
        np.testing.assert_allclose(g["auto_mean"][...] / expected, 1, atol=0.25)
        np.testing.assert_array_equal(f["examples/eb/kappa"][...], eb["maps/kappa"][:2])
        np.testing.assert_array_equal(f["examples/U"][...], sky["u"][:2])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["truth"] is False and summary["methods"] == ["eb", "ee"]
    assert summary["results"]["eb"]["all"]["rho"]["ee"] == pytest.approx(list(rho))
    capsys.readouterr()
    assert main(["figures", "--report", str(out / "report.h5"), "--out", str(tmp_path / "figs"), "--quiet"]) == 2
    assert "evaluated without truth" in capsys.readouterr().err
