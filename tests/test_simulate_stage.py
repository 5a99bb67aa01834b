"""The simulate stage end to end: HDF5 layout, determinism across workers, resume, bad input."""

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import yaml

from deepcmb.cli import main
from deepcmb.io.sims import open_sims
from deepcmb.sample import FIELDS

SMALL = {
    "seed": 11,
    "n_maps": 40,
    "geometry": {"shape": [32, 32], "pixel_arcmin": 2.34375},
    "cosmology": {"sampling": "grid", "grid": {"Alens": [1.0, 0.5]}},
    "instrument": {"noise_p_uk_arcmin": [1.0, 5.0]},
    "simulation": {"fields": list(FIELDS), "block_size": 8},
}


def _write(tmp_path, cfg, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _maps(path):
    with h5py.File(path, "r") as f:
        return {k: f["maps"][k][...] for k in f["maps"]}


def test_layout_and_content(tmp_path):
    cfg = _write(tmp_path, SMALL)
    out = tmp_path / "sims.h5"
    assert main(["simulate", "--config", str(cfg), "--out", str(out), "--workers", "1", "--quiet"]) == 0
    with open_sims(out) as f:
        assert f.attrs["n_maps"] == 40 and tuple(f.attrs["shape"]) == (32, 32)
        assert f.attrs["kind"] == "flat" and bool(f.attrs["periodic"])
        for key in ("deepcmb_version", "git_revision", "config", "created", "seed"):
            assert key in f.attrs
        assert yaml.safe_load(f.attrs["config"])["seed"] == 11
        for name in FIELDS:
            d = f["maps"][name]
            assert d.dtype == np.float32 and d.shape == (40, 32, 32) and d.chunks == (1, 32, 32)
            assert np.all(np.isfinite(d[...])) and np.std(d[...]) > 0 or name == "B_unlensed"
        ci, ni = f["meta/cosmology_index"][...], f["meta/noise_index"][...]
        np.testing.assert_array_equal(ci, np.arange(40) % 2)
        np.testing.assert_array_equal(ni, (np.arange(40) // 2) % 2)
        np.testing.assert_array_equal(f["meta/seed_index"][...], np.arange(40))
        np.testing.assert_allclose(f["cosmology/params/Alens"][...], [1.0, 0.5])
        # the lensing potential stored follows Alens; lensed spectra come from the same CAMB run
        pp = f["cosmology/cl_pp"][...]
        np.testing.assert_allclose(pp[1, 10:4000], 0.5 * pp[0, 10:4000], rtol=1e-6)
        assert f["cosmology/cl_unlensed"].shape[:2] == (2, 4) and f["cosmology/cl_pp"].shape[1] >= 5001
        np.testing.assert_allclose(f["instrument/noise_p_uk_arcmin"][...], [1.0, 5.0])
        # noisier maps are noisier: Q minus lensed Q (no beam deconvolution needed at this level)
        resid = f["maps/Q"][...] - f["maps/Q_lensed"][...]
        assert resid[ni == 1].std() > 3 * resid[ni == 0].std()
    assert not (tmp_path / "sims.h5.partial").exists()


def test_same_maps_with_one_and_two_workers(tmp_path):
    cfg = _write(tmp_path, SMALL)
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    assert main(["simulate", "--config", str(cfg), "--out", str(one), "--workers", "1", "--quiet"]) == 0
    assert main(["simulate", "--config", str(cfg), "--out", str(two), "--workers", "2", "--quiet"]) == 0
    a, b = _maps(one), _maps(two)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_resume_after_kill(tmp_path):
    """kill -9 mid-way, re-run the same command: same maps as an uninterrupted run."""
    cfg = dict(SMALL, n_maps=600, geometry={"shape": [64, 64], "pixel_arcmin": 2.34375},
               simulation={"fields": ["Q", "U", "kappa"], "block_size": 8})
    cfg_path = _write(tmp_path, cfg)
    out = tmp_path / "resumed.h5"
    cmd = [sys.executable, "-m", "deepcmb.cli", "simulate", "--config", str(cfg_path), "--out", str(out),
           "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / "resumed.h5.partial"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(partial.glob("unit_*.npz"))) < 5:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_saved = len(list(partial.glob("unit_*.npz")))
    assert 5 <= n_saved < 75, n_saved
    assert not out.exists()
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    full = tmp_path / "full.h5"
    assert main(["simulate", "--config", str(cfg_path), "--out", str(full), "--workers", "1", "--quiet"]) == 0
    a, b = _maps(out), _maps(full)
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def _fails(tmp_path, capsys, cfg, out_name="out.h5", extra=()):
    path = _write(tmp_path, cfg)
    out = tmp_path / out_name
    code = main(["simulate", "--config", str(path), "--out", str(out), "--workers", "1", "--quiet", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() or out_name == "exists.h5"
    assert not list(tmp_path.glob("*.tmp"))
    return err


@pytest.mark.parametrize("cfg, field", [
    (dict(SMALL, n_mapz=3), "n_mapz"),
    (dict(SMALL, geometry={"shape": [32, 32], "pixel_arcmin": -1.0}), "geometry.pixel_arcmin"),
    (dict(SMALL, geometry={"shape": [31, 32]}), "geometry.shape"),
    (dict(SMALL, geometry={"pixl_arcmin": 2.0}), "geometry.pixl_arcmin"),
    (dict(SMALL, cosmology={"sampling": "list", "list": [{"Alens": -0.5}]}), "Alens"),
    (dict(SMALL, cosmology={"sampling": "list", "list": [{"tau": 3.0}]}), "CAMB rejected"),
    (dict(SMALL, cosmology={"sampling": "list", "list": [{"H0": 67, "Omega_k": 0.1}]}), "Omega_k"),
    (dict(SMALL, instrument={"noise_p_uk_arcmin": [-1.0]}), "instrument.noise_p_uk_arcmin"),
    (dict(SMALL, simulation={"fields": ["Q", "kapa"]}), "simulation.fields"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, capsys, cfg, field):
    err = _fails(tmp_path, capsys, cfg)
    assert field in err


@pytest.mark.parametrize("section, key", [("instrument", "beam_fwhm_arcmin"), ("geometry", "shape"),
                                          ("simulation", "nufft_epsilon"), ("simulation", "fields")])
def test_null_is_refused_like_any_bad_value(tmp_path, capsys, section, key):
    err = _fails(tmp_path, capsys, dict(SMALL, **{section: {**SMALL.get(section, {}), key: None}}))
    assert err.startswith(f"deepcmb simulate: error: {section}.{key}: expected ") and err.endswith("got null")


def test_misspelt_key_suggests_the_right_one(tmp_path, capsys):
    err = _fails(tmp_path, capsys, dict(SMALL, geometry={"pixel_arcmn": 2.0}))
    assert "did you mean 'geometry.pixel_arcmin'" in err


def test_existing_output_needs_overwrite(tmp_path, capsys):
    (tmp_path / "exists.h5").write_text("precious")
    err = _fails(tmp_path, capsys, SMALL, out_name="exists.h5")
    assert "--overwrite" in err and (tmp_path / "exists.h5").read_text() == "precious"


def test_unwritable_output_paths(tmp_path, capsys):
    err = _fails(tmp_path, capsys, SMALL, out_name="missing_dir/out.h5")
    assert "missing_dir" in err
    (tmp_path / "afile").write_text("")
    err = _fails(tmp_path, capsys, SMALL, out_name="afile/out.h5")
    assert "afile" in err


def test_missing_and_malformed_config(tmp_path, capsys):
    assert main(["simulate", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o.h5")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    assert main(["simulate", "--config", str(bad), "--out", str(tmp_path / "o.h5")]) == 2
    assert "bad.yaml" in capsys.readouterr().err


def test_cli_subprocess_exit_code(tmp_path):
    path = _write(tmp_path, dict(SMALL, geometry={"pixel_arcmin": 0.0}))
    res = subprocess.run([sys.executable, "-m", "deepcmb.cli", "simulate", "--config", str(path), "--out",
                          str(tmp_path / "o.h5")], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("deepcmb simulate: error: geometry.pixel_arcmin")


def test_dask_scheduler_gives_the_same_maps(tmp_path):
    """--scheduler runs the units on a Dask distributed cluster; the maps are byte-identical."""
    distributed = pytest.importorskip("distributed")
    cfg = _write(tmp_path, SMALL)
    local, remote = tmp_path / "local.h5", tmp_path / "dask.h5"
    assert main(["simulate", "--config", str(cfg), "--out", str(local), "--workers", "1", "--quiet"]) == 0
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        code = main(["simulate", "--config", str(cfg), "--out", str(remote), "--scheduler",
                     cluster.scheduler_address, "--quiet"])
    assert code == 0
    a, b = _maps(local), _maps(remote)
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_curved_sky_patches_stage(tmp_path):
    """geometry.kind = curved: lenspyx full sky cut into patches, same layout plus patch centres."""
    cfg = {"seed": 3, "n_maps": 60, "geometry": {"kind": "curved", "shape": [16, 16], "pixel_arcmin": 6.0},
           "curved": {"lmax": 1200, "patch_nside": 2},
           "simulation": {"fields": ["Q", "U", "kappa"]}}
    out = tmp_path / "curved.h5"
    assert main(["simulate", "--config", str(_write(tmp_path, cfg)), "--out", str(out), "--workers", "1",
                 "--quiet"]) == 0
    with open_sims(out) as f:
        assert f.attrs["kind"] == "curved" and not bool(f.attrs["periodic"])
        assert f["maps/kappa"].shape == (60, 16, 16)
        centres = f["meta/patch_centre"][...]
        # 48 patches per full sky (nside 2): two realisations, the second one cut short
        np.testing.assert_array_equal(f["meta/seed_index"][...], [0] * 48 + [1] * 12)
        np.testing.assert_allclose(centres[48:], centres[:12])
        assert np.all(np.abs(centres[:, 1]) <= 90) and len(np.unique(centres[:48], axis=0)) == 48
        k = f["maps/kappa"][...]
        assert np.all(np.isfinite(k)) and 0.005 < k.std() < 0.1
        assert not np.allclose(k[:12], k[48:])  # a new realisation, not a copy


def test_shards_fill_one_partial_folder_and_a_plain_call_assembles_the_same_file(tmp_path, capsys):
    """``--shard K/N`` (an array job): each shard makes its share of the units and writes no file; a plain call
    then assembles the file a single run writes; a shard never deletes the shared folder."""
    cfg = _write(tmp_path, SMALL)
    single, sharded = tmp_path / "single.h5", tmp_path / "sharded.h5"
    assert main(["simulate", "--config", str(cfg), "--out", str(single), "--workers", "1", "--quiet"]) == 0
    partial = tmp_path / "sharded.h5.partial"
    for k in (2, 1):  # 5 units of 8 maps: shard 1/2 makes units 0, 2, 4 and 2/2 units 1, 3
        assert main(["simulate", "--config", str(cfg), "--out", str(sharded), "--shard", f"{k}/2", "--quiet",
                     "--workers", "1"]) == 0
        assert not sharded.exists()
    assert sorted(p.name for p in partial.glob("unit_*.npz")) == [f"unit_{i:07d}.npz" for i in range(5)]
    capsys.readouterr()
    assert main(["simulate", "--config", str(cfg), "--out", str(sharded), "--workers", "1", "--quiet"]) == 0
    a, b = _maps(single), _maps(sharded)
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    with h5py.File(single) as f, h5py.File(sharded) as g:
        for name in f["meta"]:
            np.testing.assert_array_equal(f["meta"][name][...], g["meta"][name][...])
        assert {k: str(v) for k, v in f.attrs.items() if k != "created"} == \
            {k: str(v) for k, v in g.attrs.items() if k != "created"}
    assert not partial.exists()
    other = _write(tmp_path, {**SMALL, "seed": 12}, "other.yaml")
    assert main(["simulate", "--config", str(cfg), "--out", str(tmp_path / "x.h5"), "--shard", "1/3",
                 "--quiet", "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["simulate", "--config", str(other), "--out", str(tmp_path / "x.h5"), "--shard", "2/3",
                 "--quiet", "--workers", "1"]) == 2
    assert "holds units of another config" in capsys.readouterr().err
    assert (tmp_path / "x.h5.partial" / "unit_0000000.npz").exists()
    assert main(["simulate", "--config", str(cfg), "--out", str(tmp_path / "y.h5"), "--shard", "0/3"]) == 2
    assert "--shard 0/3: expected K/N" in capsys.readouterr().err
