"""The input score against the calibration maps of each noise level (deepcmb.uncertainty.ood): calibrated at
1 and 5 uK-arcmin, it flags maps at the intermediate 2 uK-arcmin that one pooled reference lets through,
and maps at either calibrated level at about the calibration quantile's rate; the per-level reference
round-trips through the calibration file, and files of format version 1 (one pooled reference) are read."""

import shutil

import h5py
import numpy as np
import pytest
import yaml

from deepcmb.cli import main
from deepcmb.errors import InputError
from deepcmb.io.calibration import FORMAT_VERSION, read_calibration, write_calibration
from deepcmb.io.maps import open_maps
from deepcmb.uncertainty.ood import QUANTILE, THRESHOLD, Reference, log_band_powers, reference

PER_LEVEL = 100
"""Calibration maps per noise level (and test maps per level)."""


def _maps(path):
    """Geometry, Q, U (µK) and the noise level of every map of a simulation file."""
    with open_maps(path) as m:
        rows = np.arange(len(m.noise_index))
        return m.geom, m.read("Q", rows), m.read("U", rows), m.noise_index[rows]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """32 x 32 maps: calibration (seed 41) and test (42) maps at 1 and 5 uK-arcmin, and maps at 2 (43); the
    MV_POL QE calibrated on the calibration maps."""
    d = tmp_path_factory.mktemp("ood")
    base = {"geometry": {"shape": [32, 32], "pixel_arcmin": 2.34375},
            "simulation": {"fields": ["Q", "U", "kappa"], "block_size": 50}}
    sets = {"cal": (41, [1.0, 5.0]), "test": (42, [1.0, 5.0]), "mid": (43, [2.0])}
    out = {}
    for name, (seed, noise) in sets.items():
        cfg = {**base, "seed": seed, "n_maps": PER_LEVEL * len(noise), "instrument": {"noise_p_uk_arcmin": noise}}
        (d / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        out[name] = d / f"{name}.h5"
        assert main(["simulate", "--config", str(d / f"{name}.yaml"), "--out", str(out[name]), "--workers", "1",
                     "--quiet"]) == 0
    assert main(["reconstruct", "--method", "qe", "--estimator", "MV_POL", "--sims", str(out["cal"]), "--out",
                 str(d / "cal_qe.h5"), "--quiet"]) == 0
    out["calib"] = d / "calib.h5"
    assert main(["calibrate", "--sims", str(out["cal"]), "--rec", str(d / "cal_qe.h5"), "--out", str(out["calib"]),
                 "--quiet"]) == 0
    return d, out


def test_an_intermediate_noise_level_is_flagged_and_the_calibrated_levels_are_not(files, caplog):
    d, f = files
    _, _, ref = read_calibration(f["calib"])
    np.testing.assert_array_equal(ref.noise_p, [1.0, 5.0])
    geom, q, u, levels = _maps(f["test"])
    score = ref.score(geom, q, u)
    for k in (0, 1):  # fresh maps at either calibrated level: a few per cent (the 0.99 quantile of 100 scores is
        # a noisy estimate, and the calibration maps fitted the mean and std)
        assert np.mean(score[levels == k] > THRESHOLD) <= 0.08
    with h5py.File(f["calib"]) as c:  # the calibration maps' own scores: at most 1 - q above, per level
        own = c["ood/scores"][...]
    cal_levels = _maps(f["cal"])[3]
    for k in (0, 1):
        assert np.mean(own[cal_levels == k] > THRESHOLD) <= 1 - QUANTILE + 1.0 / PER_LEVEL

    geom, q, u, _ = _maps(f["mid"])
    assert np.all(ref.score(geom, q, u) > 3 * THRESHOLD)
    # the defect the per-level reference removes: one reference pooled over 1 and 5 uK-arcmin flags almost none
    cal = _maps(f["cal"])
    pooled = reference(geom, cal[1], cal[2], len(ref.edges) - 1)
    assert np.mean(pooled.score(geom, q, u) > THRESHOLD) < 0.2

    # the reconstruction stage records the same score, the threshold 1, and warns
    assert main(["reconstruct", "--method", "qe", "--estimator", "MV_POL", "--sims", str(f["mid"]), "--out",
                 str(d / "mid_qe.h5"), "--uncertainty", str(f["calib"]), "--quiet"]) == 0
    with h5py.File(d / "mid_qe.h5") as r:
        assert r.attrs["ood_threshold"] == THRESHOLD == 1.0
        np.testing.assert_allclose(r["meta/ood_score"][...], ref.score(geom, q, u), rtol=1e-6)
    assert "of every noise level" in caplog.text


def test_the_per_level_reference_round_trips_through_the_calibration_file(files, tmp_path):
    _, f = files
    geom, q, u, levels = _maps(f["cal"])
    with h5py.File(f["calib"]) as c:
        assert c.attrs["format_version"] == FORMAT_VERSION == 3
        nbin = c["ood/edges"].shape[0] - 1
        assert c["ood/mean"].shape == c["ood/std"].shape == (2, 2 * nbin)
        assert c["ood/threshold"].shape == c["ood/noise_p"].shape == c["ood/n_maps"].shape == (2,)
        np.testing.assert_array_equal(c["ood/n_maps"][...], [PER_LEVEL, PER_LEVEL])
    direct = reference(geom, q, u, nbin, levels, np.array([1.0, 5.0]))
    identity, modes, ref = read_calibration(f["calib"])
    for name in ("edges", "mean", "std", "thresholds", "noise_p", "n_maps"):
        np.testing.assert_allclose(getattr(ref, name), getattr(direct, name), rtol=1e-12, err_msg=name)
    # each level's reference is that of its maps alone (to the rounding of FFTs of other batch sizes)
    one = reference(geom, q[levels == 1], u[levels == 1], nbin)
    np.testing.assert_allclose(ref.mean[1], one.mean[0], rtol=1e-9)
    np.testing.assert_allclose(ref.thresholds[1], one.thresholds[0], rtol=1e-9)

    # any reference, written and read: the same arrays
    rng = np.random.default_rng(0)
    three = Reference(edges=ref.edges, mean=rng.normal(size=(3, 2 * nbin)), std=rng.uniform(1, 2, (3, 2 * nbin)),
                      thresholds=rng.uniform(1, 3, 3), noise_p=np.array([0.5, 1.0, 5.0]), n_maps=np.array([4, 5, 6]))
    write_calibration(tmp_path / "three.h5", {}, identity, modes, three, np.zeros(15), f["cal"], f["cal"])
    back = read_calibration(tmp_path / "three.h5")[2]
    for name in ("edges", "mean", "std", "thresholds", "noise_p", "n_maps"):
        np.testing.assert_array_equal(getattr(back, name), getattr(three, name), err_msg=name)

    with pytest.raises(ValueError, match="at least 2 calibration maps per noise level"):
        reference(geom, q[:3], u[:3], nbin, np.array([0, 0, 1]), np.array([1.0, 5.0]))


def test_a_format_1_calibration_file_is_read_as_one_pooled_level(files, tmp_path):
    d, f = files
    geom, q, u, _ = _maps(f["cal"])
    old = tmp_path / "calib_v1.h5"
    shutil.copy(f["calib"], old)
    with h5py.File(old, "a") as c:  # the layout of format version 1: one reference over all the maps
        g = c["ood"]
        nbin = g["edges"].shape[0] - 1
        edges = g["edges"][...]
        p = log_band_powers(geom, q, u, edges)
        mean, std = p.mean(axis=0), p.std(axis=0, ddof=1)
        s = np.mean(((p - mean) / std) ** 2, axis=-1)
        for name in ("mean", "std", "threshold", "noise_p", "n_maps", "scores"):
            del g[name]
        g["mean"], g["std"], g["scores"] = mean, std, s
        g.attrs["threshold"] = t = float(np.quantile(s, QUANTILE))
        c.attrs["format_version"] = 1
    _, modes, ref = read_calibration(old)
    assert ref.mean.shape == (1, 2 * nbin) and np.isnan(ref.noise_p[0]) and ref.n_maps[0] == 2 * PER_LEVEL
    assert modes.noise_p.tolist() == [1.0, 5.0]
    np.testing.assert_allclose(ref.score(geom, q, u), s / t, rtol=1e-12)  # the old score over its threshold
    np.testing.assert_allclose(ref.thresholds, [t])

    # a reconstruction still takes it
    assert main(["reconstruct", "--method", "qe", "--estimator", "MV_POL", "--sims", str(f["test"]), "--out",
                 str(tmp_path / "test_qe.h5"), "--uncertainty", str(old), "--quiet"]) == 0
    with h5py.File(tmp_path / "test_qe.h5") as r:
        assert r.attrs["ood_threshold"] == 1.0 and r["meta/ood_score"].shape == (2 * PER_LEVEL,)

    with h5py.File(old, "a") as c:
        c.attrs["format_version"] = 4
    with pytest.raises(InputError, match="format_version 4 is not supported"):
        read_calibration(old)
