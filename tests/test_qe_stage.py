"""`deepcmb reconstruct --method qe`: simulation file -> QE kappa maps with N0, provenance, errors."""

import h5py
import numpy as np
import pytest
import yaml

from deepcmb import binning as sp
from deepcmb.cli import main
from deepcmb.geometry import FlatSkyGeometry
from deepcmb.io.reconstruction import open_reconstruction


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    d = tmp_path_factory.mktemp("qe_stage")
    cfg = {"seed": 5, "n_maps": 64, "geometry": {"shape": [64, 64], "pixel_arcmin": 2.34375},
           "instrument": {"noise_p_uk_arcmin": [1.0, 5.0]},
           "simulation": {"fields": ["Q", "U", "kappa"], "block_size": 16}}
    (d / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = d / "sims.h5"
    assert main(["simulate", "--config", str(d / "cfg.yaml"), "--out", str(out), "--workers", "1", "--quiet"]) == 0
    return out


def _rho(kappa, truth, geom, edges):
    cross = sp.binned_cross_spectrum(geom, kappa, truth, edges).mean(axis=0)
    auto = sp.binned_auto_spectrum(geom, kappa, edges).mean(axis=0)
    true = sp.binned_auto_spectrum(geom, truth, edges).mean(axis=0)
    return cross / np.sqrt(auto * true), cross / true


def test_qe_stage_writes_unbiased_kappa_and_n0(sims, tmp_path):
    out = tmp_path / "rec.h5"
    assert main(["reconstruct", "--method", "qe", "--estimator", "EB", "--data", str(sims), "--out", str(out),
                 "--quiet"]) == 0
    with open_reconstruction(out, sims_path=sims) as f, h5py.File(sims, "r") as s:
        assert f.attrs["method"] == "qe" and f.attrs["estimator"] == "EB" and f.attrs["n_maps"] == 64
        assert "git_revision" in f.attrs and "config" in f.attrs
        kappa, truth = f["maps/kappa"][...], s["maps/kappa"][...]
        assert kappa.shape == truth.shape and kappa.dtype == np.float32
        np.testing.assert_array_equal(f["meta/index"][...], np.arange(64))
        levels = f["meta/noise_index"][...]
        np.testing.assert_array_equal(levels, s["meta/noise_index"][...])
        n0 = f["n0/kappa"][...]
        assert n0.shape == (2, len(f["n0/L"])) and np.all(np.isfinite(n0)) and np.all(n0 > 0)
        assert np.all(n0[1] > 5 * n0[0])  # 5 uK' is much noisier than 1 uK'
    geom = FlatSkyGeometry((64, 64), 2.34375)
    edges = np.array([150.0, 450.0, 900.0])
    rho_low, transfer = _rho(kappa[levels == 0], truth[levels == 0], geom, edges)
    rho_high, _ = _rho(kappa[levels == 1], truth[levels == 1], geom, edges)
    assert np.all(rho_low > 0.6) and np.all(rho_low > rho_high)
    assert np.all(np.abs(transfer - 1) < 0.25)  # unbiased within the scatter of 32 small maps


def test_wiener_option_and_bad_input(sims, tmp_path, capsys):
    out = tmp_path / "wiener.h5"
    assert main(["reconstruct", "--method", "qe", "--estimator", "mv_pol", "--wiener", "--data", str(sims),
                 "--out", str(out), "--quiet"]) == 0
    with h5py.File(out, "r") as f:
        assert bool(f.attrs["wiener"]) and list(f.attrs["estimators"]) == ["EE", "EB"]
    capsys.readouterr()
    # TT needs temperature maps the file does not have
    assert main(["reconstruct", "--method", "qe", "--estimator", "TT", "--data", str(sims), "--out",
                 str(tmp_path / "tt.h5"), "--quiet"]) == 2
    assert "missing T" in capsys.readouterr().err
    assert not (tmp_path / "tt.h5").exists()
    assert main(["reconstruct", "--method", "qe", "--data", str(sims), "--out", str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["reconstruct", "--method", "qe", "--estimator", "XY", "--data", str(sims), "--out",
                 str(tmp_path / "xy.h5"), "--quiet"]) == 2
    assert "XY" in capsys.readouterr().err


def test_curved_patches_are_apodised_with_mean_field(tmp_path):
    cfg = {"seed": 9, "n_maps": 48, "geometry": {"kind": "curved", "shape": [32, 32], "pixel_arcmin": 4.0},
           "curved": {"lmax": 2700, "patch_nside": 2}, "simulation": {"fields": ["Q", "U", "kappa"]}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    sims = tmp_path / "curved.h5"
    assert main(["simulate", "--config", str(tmp_path / "c.yaml"), "--out", str(sims), "--workers", "1",
                 "--quiet"]) == 0
    out = tmp_path / "rec.h5"
    assert main(["reconstruct", "--method", "qe", "--lmax", "2600", "--mean-field-maps", "24", "--data", str(sims),
                 "--out", str(out), "--quiet"]) == 0
    with h5py.File(out, "r") as f, h5py.File(sims, "r") as s:
        assert f.attrs["apodize_arcmin"] == 60.0 and "half-split" in f.attrs["mean_field"]
        assert 0 < f.attrs["window_w2"] < 1
        kappa, truth = f["maps/kappa"][...], s["maps/kappa"][...]
    assert np.all(np.isfinite(kappa))
    geom = FlatSkyGeometry((32, 32), 4.0)
    rho, _ = _rho(kappa, truth, geom, np.array([200.0, 600.0]))
    assert rho[0] > 0.3
