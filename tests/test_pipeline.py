"""``deepcmb run``: the whole pipeline end to end on a tiny preset, stage re-use and re-runs.

The tiny preset has the structure of ``evaluate/quick.yaml`` (train and test sims, a network that also
reads the QE kappa, two quadratic estimators, evaluation, parameters, figures) at a size CI can afford: 32 x 32 maps, a
two-level network trained for two epochs, three test cosmologies differing in Alens only (values that
other tests use too, so CAMB runs once).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from deepcmb.errors import ConfigError
from deepcmb.pipeline import find_preset, plan_stages

GEOMETRY = {"kind": "flat", "shape": [32, 32], "pixel_arcmin": 2.34375}
INSTRUMENT = {"beam_fwhm_arcmin": 1.0, "noise_p_uk_arcmin": [1.0]}

TRAIN_SIMS = {"seed": 11, "n_maps": 384, "geometry": GEOMETRY, "cosmology": {"sampling": "fiducial"},
              "instrument": INSTRUMENT, "simulation": {"fields": ["Q", "U", "E_unlensed", "kappa"]}}
TEST_SIMS = {"seed": 12, "n_maps": 240, "geometry": GEOMETRY,
             "cosmology": {"sampling": "list", "list": [{}, {"Alens": 0.8}, {"Alens": 0.5}]},
             "instrument": INSTRUMENT,
             "simulation": {"fields": ["T", "Q", "U", "Q_lensed", "U_lensed", "E_unlensed", "kappa"],
                            "block_size": 40}}
NOISE_SIMS = {"seed": 13, "n_maps": 60, "geometry": GEOMETRY,
              "cosmology": {"sampling": "list", "list": [{}, {"Alens": 0.8}]},
              "instrument": {"beam_fwhm_arcmin": 1.0, "noise_p_uk_arcmin": [2.0]},
              "simulation": {"fields": ["Q", "U", "E_unlensed", "kappa"], "block_size": 30}}
CALIB_SIMS = {"seed": 14, "n_maps": 96, "geometry": GEOMETRY, "cosmology": {"sampling": "fiducial"},
              "instrument": INSTRUMENT, "simulation": {"fields": ["Q", "U", "kappa"], "block_size": 48}}
TRAIN = {"seed": 3, "data": {"split": [0.9, 0.1, 0.0]},
         "model": {"inputs": ["Q", "U", "kappa_qe"], "filters": [8, 16], "outputs": ["kappa", "E_unlensed"]},
         "training": {"batch_size": 32, "epochs": 2}}
PRESET = {
    "run": {"train_sims": "sims/tiny_train.yaml", "test_sims": "sims/tiny_test.yaml", "train": "train/tiny.yaml",
            "qe_estimators": ["EB", "MV_POL"], "map": {"max_iterations": 4},
            "robustness": {"noise2": "sims/tiny_noise.yaml"}, "results": True,
            "uncertainty": {"sims": "sims/tiny_calib.yaml"}},
    "evaluate": {"bins": {"Lmin": 300, "Lmax": 2000, "width": 300}, "e_bins": {"lmin": 300, "lmax": 3000},
                 "snr": {"Lmax": 2000}, "examples": 2, "jackknife": 8,
                 "theory": {"qe_estimators": ["EB", "MV_POL"], "iterative": False}},
    "params": {"sample": ["Alens"], "priors": {"Alens": [0.4, 1.8]}, "Lmin": 300, "Lmax": 2000,
               "walkers": 8, "steps": 300, "burn": 100},
    "figures": {},
    "results": {"low_noise": 1.0, "high_noise": 5.0},
}


def _write_root(root, preset=PRESET):
    for folder, name, content in (("sims", "tiny_train", TRAIN_SIMS), ("sims", "tiny_test", TEST_SIMS),
                                  ("sims", "tiny_noise", NOISE_SIMS), ("sims", "tiny_calib", CALIB_SIMS),
                                  ("train", "tiny", TRAIN), ("evaluate", "tiny", preset)):
        (root / folder).mkdir(exist_ok=True)
        (root / folder / f"{name}.yaml").write_text(yaml.safe_dump(content))


STAGE_LINE = re.compile(r"^\[\s*\d+/\d+\]\s+(\S+)\s+(done in|re-used)")


def _stage_lines(stdout):
    """``[(stage, 'done in' | 're-used'), ...]`` from the one line per stage of ``deepcmb run``."""
    return [m.groups() for m in map(STAGE_LINE.match, stdout.splitlines()) if m]


def _run(root, out):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    return subprocess.run([sys.executable, "-m", "deepcmb.cli", "run", "--preset", "tiny", "--root", str(root),
                           "--out", str(out), "--workers", "1"], capture_output=True, text=True, env=env,
                          timeout=900)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    _write_root(root)
    out = root / "out"
    first = _run(root, out)
    assert first.returncode == 0, first.stderr[-3000:]
    return root, out, first


STAGES = ["simulate_train", "reconstruct_qe_train", "train", "simulate_calibration", "reconstruct_qe_eb_calibration",
          "reconstruct_qe_mv_pol_calibration", "reconstruct_map_calibration", "reconstruct_nn_calibration",
          "calibrate_qe_eb", "calibrate_qe_mv_pol", "calibrate_map", "calibrate_nn", "simulate_test", "reconstruct_qe_eb",
          "reconstruct_qe_mv_pol", "reconstruct_map", "reconstruct_nn", "evaluate", "simulate_noise2", "reconstruct_qe_eb_noise2",
          "reconstruct_qe_mv_pol_noise2", "reconstruct_nn_noise2", "evaluate_noise2", "params", "figures", "results"]


def test_one_line_per_stage_and_every_output(tiny_run):
    root, out, first = tiny_run
    lines = _stage_lines(first.stdout)
    assert [name for name, _ in lines] == STAGES
    assert all(status == "done in" for _, status in lines)
    started = [m.group(1) for m in map(re.compile(r"^\[\s*\d+/\d+\]\s+(\S+)\s+started\s").match,
                                       first.stdout.splitlines()) if m]
    assert started == STAGES  # a line when each stage starts, before the one when it ends
    assert "\r" not in first.stderr and "cuda" not in first.stderr.lower()  # records, no bars, no backend start-up
    for name in ("sims_train.h5", "sims_test.h5", "rec_qe_train.h5", "train/model.keras", "rec_nn.h5", "rec_qe_eb.h5",
                 "rec_map.h5",
                 "rec_qe_mv_pol.h5", "eval/report.h5", "eval/summary.json", "params/chains.h5",
                 "params/summary.json", "figures/index.json", "robust_noise2/sims.h5", "robust_noise2/rec_nn.h5",
                 "robust_noise2/eval/summary.json", "results/results.json", "results/results.rst"):
        assert (out / name).exists(), name
    record = json.loads((out / "pipeline.json").read_text())
    assert set(record) == set(STAGES) and all(r["finished"] for r in record.values())


def test_the_network_is_evaluated_on_maps_it_never_saw(tiny_run):
    _, out, _ = tiny_run
    with h5py.File(out / "rec_nn.h5") as rec, h5py.File(out / "sims_test.h5") as test, \
            h5py.File(out / "sims_train.h5") as train:
        assert rec.attrs["sims_file"] == str((out / "sims_test.h5").resolve())
        assert test.attrs["seed"] != train.attrs["seed"]
        assert not np.allclose(test["maps/kappa"][0], train["maps/kappa"][0])
        # its kappa_qe channel is the MV_POL QE of the very same test maps
        assert json.loads(rec.attrs["config"])["qe"] == str((out / "rec_qe_mv_pol.h5").resolve())


def test_summary_compares_every_method_per_cosmology(tiny_run):
    _, out, _ = tiny_run
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert set(summary["methods"]) == {"nn", "qe_eb", "qe_mv_pol", "map"}
    for label in summary["methods"]:
        groups = summary["results"][label]
        assert {"all", "cosmo0_noise0", "cosmo1_noise0", "cosmo2_noise0"} <= set(groups)
        rho2 = np.array(groups["all"]["rho2"], dtype=float)
        assert np.all((rho2 > 0) & (rho2 <= 1)), (label, rho2)
    # the QE is unbiased: its transfer function is one within a few per cent where it has signal
    transfer = np.array(summary["results"]["qe_mv_pol"]["all"]["transfer"], dtype=float)
    assert np.all(np.abs(transfer[:3] - 1) < 0.1), transfer
    params = json.loads((out / "params" / "summary.json").read_text())
    assert set(params["results"]) == {"nn", "qe_eb", "qe_mv_pol", "map"}
    assert set(params["results"]["qe_mv_pol"]) == {"cosmo1", "cosmo2"}


def test_every_method_gets_a_calibrated_posterior_and_the_table_its_coverage(tiny_run):
    _, out, _ = tiny_run
    summary = json.loads((out / "eval" / "summary.json").read_text())
    for label in summary["methods"]:
        with h5py.File(out / f"rec_{label}.h5") as f:
            assert f.attrs["uq_calibration"] == str((out / "calibration" / f"calib_{label}.h5").resolve())
            assert f["maps/kappa_sigma"].shape == f["maps/kappa"].shape
        r = summary["results"][label]["cosmo0_noise0"]
        # the calibration's cosmology, 80 maps of 32 x 32 (about 40 modes below uq_lmax each): statistical
        # error 0.008; calibrated on 96 maps, whose few modes per ring leave sigma uncertain by ~2.5 % (0.012)
        assert abs(r["coverage_1sigma"] - 0.683) < 0.05 and abs(r["coverage_2sigma"] - 0.954) < 0.025, (label, r)
        # Alens = 0.5, far from the calibration maps: its inputs score as unlike them more often
        assert summary["results"][label]["cosmo2_noise0"]["ood_outside"] > r["ood_outside"]
    noise2 = json.loads((out / "robust_noise2" / "eval" / "summary.json").read_text())
    assert noise2["results"]["nn"]["all"]["ood_outside"] > 0.9  # calibrated at 1 uK', applied at 2 uK'
    table = (out / "results" / "results.rst").read_text()
    assert "Coverage of the per-map uncertainties" in table and "uq_coverage" in table


def _documented_summary_keys():
    """First-column keys of the ``summary.json`` layout in the docstring of :mod:`deepcmb.io.report`
    (the layout the documentation's file-formats page shows)."""
    import deepcmb.io.report as report

    doc = report.__doc__
    block = doc[doc.index("``summary.json``"):]
    block = block[block.index("::\n\n") + 4:]
    keys = set()
    for line in block.splitlines():
        head = re.match(r"^    (\w+(?:, \w+)*)\s", line)  # 4 spaces: a key; continuation lines are deeper
        if head:
            keys.update(head.group(1).split(", "))
    return keys


def test_summary_has_every_key_the_readme_documents(tiny_run):
    _, out, _ = tiny_run
    summary = json.loads((out / "eval" / "summary.json").read_text())
    documented = _documented_summary_keys()
    assert {"results", "theory", "cosmology_dependence", "methods"} <= documented
    assert documented <= set(summary), documented - set(summary)
    group = summary["results"]["nn"]["all"]
    for key in ("n_maps", "rho2", "rho2_err", "n_eff", "n_eff_err", "transfer", "transfer_err",
                "snr_cumulative", "snr_cumulative_err", "E_rho2", "E_rho2_err"):
        assert key in group, key
    assert {"cosmo0", "cosmo1", "cosmo2"} <= set(summary["cosmology_dependence"]["nn"])
    # the test maps carry the noise-free lensed Q, U: every method's delensing template is measured
    delensing = summary["delensing"]["results"]
    assert set(delensing) == set(summary["methods"]) and "A_res" in delensing["map"]["noise0"]
    robust = json.loads((out / "robust_noise2" / "eval" / "summary.json").read_text())
    assert "Q_lensed" in robust["delensing"]["skipped"]


def test_rerun_reuses_every_stage_and_a_changed_config_reruns_what_follows(tiny_run, tmp_path):
    root, out, _ = tiny_run
    again = _run(root, out)
    assert again.returncode == 0, again.stderr[-3000:]
    lines = _stage_lines(again.stdout)
    assert all(status == "re-used" for _, status in lines) and len(lines) == len(STAGES)

    changed = json.loads(json.dumps(PRESET))
    changed["evaluate"]["jackknife"] = 6
    _write_root(root, changed)
    rerun = _run(root, out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    status = dict(_stage_lines(rerun.stdout))
    rerun_stages = ("evaluate", "evaluate_noise2", "params", "figures", "results")
    assert [s for s in STAGES if status[s] == "re-used"] == [s for s in STAGES if s not in rerun_stages]
    _write_root(root)


def test_preset_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="no preset 'nope'"):
        find_preset("nope", tmp_path)
    _write_root(tmp_path, {**PRESET, "evaluation": {}})
    with pytest.raises(ConfigError, match="unknown section"):
        plan_stages(*find_preset("tiny", tmp_path), tmp_path / "out")
    _write_root(tmp_path, {**PRESET, "run": {**PRESET["run"], "models": {"nn": "data/pretrained/quick"}}})
    with pytest.raises(ConfigError, match="taken"):
        plan_stages(*find_preset("tiny", tmp_path), tmp_path / "out")


def test_robustness_sets_get_their_own_stages_and_settings(tmp_path):
    preset = json.loads(json.dumps(PRESET))
    preset["run"]["robustness"] = {"curved": {"sims": "sims/tiny_noise.yaml", "qe": {"apodize_arcmin": 20},
                                              "evaluate": {"apodize_arcmin": 20, "bins": {"width": 600}}}}
    _write_root(tmp_path, preset)
    stages = {s.name: s for s in plan_stages(*find_preset("tiny", tmp_path), tmp_path / "out")}
    assert stages["simulate_curved"].output == tmp_path / "out" / "robust_curved" / "sims.h5"
    assert stages["reconstruct_qe_eb_curved"].config["apodize_arcmin"] == 20
    assert "apodize_arcmin" not in stages["reconstruct_qe_eb"].config
    assert stages["reconstruct_nn_curved"].inputs == ["train", "simulate_curved", "reconstruct_qe_mv_pol_curved",
                                                      "calibrate_nn"]
    # a reconstruction gets the calibration of its method only when made with the calibrated settings
    calib = tmp_path / "out" / "calibration"
    assert stages["reconstruct_nn_curved"].files["uncertainty"] == calib / "calib_nn.h5"
    assert stages["reconstruct_qe_eb"].files["uncertainty"] == calib / "calib_qe_eb.h5"
    assert "uncertainty" not in stages["reconstruct_qe_eb_curved"].files
    assert stages["calibrate_map"].files == {"sims": calib / "sims.h5", "rec": calib / "rec_map.h5"}
    ev = stages["evaluate_curved"].config
    assert ev["apodize_arcmin"] == 20 and ev["bins"] == {"Lmin": 300, "Lmax": 2000, "width": 600}
    assert stages["evaluate"].config["bins"]["width"] == 300
    assert stages["results"].inputs == ["evaluate", "evaluate_curved"]
    assert stages["reconstruct_nn_curved"].config == stages["reconstruct_nn"].config == {}
    assert "reconstruct_map_curved" not in stages and stages["reconstruct_map"].config == {"max_iterations": 4}
    preset["run"]["robustness"] = {"curved": {"sims": "sims/tiny_noise.yaml", "map": {"tol": 0.05}}}
    _write_root(tmp_path, preset)
    stages = {s.name: s for s in plan_stages(*find_preset("tiny", tmp_path), tmp_path / "out")}
    assert stages["reconstruct_map_curved"].config == {"max_iterations": 4, "tol": 0.05}
    assert stages["reconstruct_map_curved"].output == tmp_path / "out" / "robust_curved" / "rec_map.h5"
    assert "reconstruct_map_curved" in stages["evaluate_curved"].inputs
    preset["run"]["robustness"] = {"curved": {"sims": "sims/tiny_noise.yaml", "map": {"tol": -1}}}
    _write_root(tmp_path, preset)
    with pytest.raises(ConfigError, match="run.robustness.curved.map.tol"):
        plan_stages(*find_preset("tiny", tmp_path), tmp_path / "out")
    preset["run"]["robustness"] = {"big": {"sims": "sims/tiny_noise.yaml", "any_shape": True}}
    _write_root(tmp_path, preset)
    stages = {s.name: s for s in plan_stages(*find_preset("tiny", tmp_path), tmp_path / "out")}
    assert stages["reconstruct_nn_big"].config == {"any_shape": True} and stages["reconstruct_nn"].config == {}
    assert "uncertainty" not in stages["reconstruct_nn_big"].files  # calibrated at the training size only
    assert stages["reconstruct_qe_eb_big"].files["uncertainty"] == calib / "calib_qe_eb.h5"
    # maps of another shape than the calibration maps get no calibration, whatever the method
    bigger = dict(NOISE_SIMS, geometry=dict(GEOMETRY, shape=[2 * n for n in GEOMETRY["shape"]]))
    (tmp_path / "sims" / "tiny_big.yaml").write_text(yaml.safe_dump(bigger))
    preset["run"]["robustness"] = {"big": {"sims": "sims/tiny_big.yaml", "any_shape": True}}
    _write_root(tmp_path, preset)
    (tmp_path / "sims" / "tiny_big.yaml").write_text(yaml.safe_dump(bigger))
    big = {s.name: s for s in plan_stages(*find_preset("tiny", tmp_path), tmp_path / "out")}
    assert not any("uncertainty" in s.files for name, s in big.items() if name.endswith("_big"))
    assert big["reconstruct_qe_eb"].files["uncertainty"] == calib / "calib_qe_eb.h5"
    preset["run"]["robustness"] = {"big": {"sims": "sims/tiny_noise.yaml", "any_shape": True}}
    _write_root(tmp_path, preset)
    plain = {name: s.config for name, s in stages.items()}
    preset["run"]["symmetrize"] = True
    _write_root(tmp_path, preset)
    stages = {s.name: s for s in plan_stages(*find_preset("tiny", tmp_path), tmp_path / "out")}
    assert stages["reconstruct_nn_big"].config == {"any_shape": True, "symmetrize": True}
    assert stages["reconstruct_nn"].config == {"symmetrize": True}
    assert all(s.config == plain[name] for name, s in stages.items() if not name.startswith("reconstruct_nn"))
    preset["run"]["symmetrize"] = "yes"
    _write_root(tmp_path, preset)
    with pytest.raises(ConfigError, match="symmetrize"):
        plan_stages(*find_preset("tiny", tmp_path), tmp_path / "out")
    del preset["run"]["symmetrize"]
    for bad in ({"Test": "sims/tiny_noise.yaml"}, {"ood": {"sims": "sims/tiny_noise.yaml", "extra": 1}},
                {"ood": "sims/missing.yaml"}, {"big": {"sims": "sims/tiny_noise.yaml", "any_shape": "yes"}}):
        preset["run"]["robustness"] = bad
        _write_root(tmp_path, preset)
        with pytest.raises(ConfigError, match="run.robustness"):
            plan_stages(*find_preset("tiny", tmp_path), tmp_path / "out")


def test_shipped_presets_resolve():
    for name in ("quick", "bench", "paper"):
        path, root = find_preset(name)
        stages = plan_stages(path, root, root / "data" / "out" / f"run_{name}")
        names = [s.name for s in stages]
        assert names[0] == "simulate_train" and "simulate_test" in names
        assert names[-1] == ("figures" if name == "quick" else "results")
        # the shipped presets' networks read E, B or Q, U alone: no QE of the training maps
        assert "reconstruct_qe_train" not in names
        assert names.index("train") < names.index("reconstruct_nn")
        for s in stages:
            assert set(s.inputs) <= set(names[:names.index(s.name)]), s.name


def test_dry_run_prints_commands_that_do_what_the_run_did(tiny_run, tmp_path):
    """``--dry-run``: one ``deepcmb`` command per selected stage, configs under RUN_DIR/commands; run in order
    in another folder they write the same maps as ``deepcmb run`` did."""
    import shlex

    from deepcmb.pipeline import run_pipeline

    root, out, _ = tiny_run
    lines = []
    other = tmp_path / "chain"
    run_pipeline("tiny", out=other, root=root, echo=lines.append, dry_run=True,
                 only=["simulate_calibration", "reconstruct_qe_mv_pol_calibration", "reconstruct_map_calibration",
                       "calibrate_qe_mv_pol", "calibrate_map", "simulate_test", "reconstruct_qe_mv_pol",
                       "reconstruct_map"])
    assert [shlex.split(c)[1:3] for c in lines] == [["simulate", "--out"]] + [["reconstruct", "--method"]] * 2 \
        + [["calibrate", "--sims"]] * 2 + [["simulate", "--out"]] + [["reconstruct", "--method"]] * 2
    assert (other / "commands" / "simulate_test.yaml").exists() and not (other / "sims_test.h5").exists()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    for command in lines:
        args = shlex.split(command)
        done = subprocess.run([sys.executable, "-m", "deepcmb.cli", *args[1:], "--quiet"], capture_output=True,
                              text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    for name in ("sims_test.h5", "rec_qe_mv_pol.h5", "rec_map.h5"):
        with h5py.File(out / name) as a, h5py.File(other / name) as b:
            for field in a["maps"]:
                np.testing.assert_array_equal(a["maps"][field][:], b["maps"][field][:])


def test_only_from_until_select_stages_and_refuse_unfinished_inputs(tiny_run, tmp_path):
    from deepcmb.pipeline import run_pipeline, select_steps

    root, out, _ = tiny_run
    steps = plan_stages(*find_preset("tiny", root), out)
    names = [s.name for s in select_steps(steps, start="reconstruct_qe_eb", until="reconstruct_map")]
    assert names == ["reconstruct_qe_eb", "reconstruct_qe_mv_pol", "reconstruct_map"]
    assert [s.name for s in select_steps(steps, only=["evaluate", "figures"])] == ["evaluate", "figures"]
    with pytest.raises(ConfigError, match="--only evaluat: not a stage of this run; its stages: simulate_train"):
        select_steps(steps, only=["evaluat"])
    lines = []
    run_pipeline("tiny", out=out, root=root, echo=lines.append, only=["reconstruct_map"])
    assert len(lines) == 2 and "re-used" in lines[0]
    with pytest.raises(ConfigError, match="evaluate reads the output of reconstruct_qe_eb"):
        run_pipeline("tiny", out=tmp_path / "empty", root=root, echo=lines.append, only=["evaluate"])


def test_the_stage_key_holds_the_version(tmp_path, monkeypatch):
    import deepcmb.pipeline as pipeline

    _write_root(tmp_path)
    keys = {s.name: s.key for s in plan_stages(*find_preset("tiny", tmp_path), tmp_path / "out")}
    monkeypatch.setattr(pipeline, "__version__", "9.9.9")
    other = {s.name: s.key for s in plan_stages(*find_preset("tiny", tmp_path), tmp_path / "out")}
    assert all(keys[n] != other[n] for n in keys)


def test_a_models_weights_key_its_steps_not_its_path(tmp_path):
    """A network of run.models is known by the SHA-256 of its weights: the same weights in another folder (another
    checkout, a moved run) re-use its reconstructions, other weights under the same path do not."""
    import shutil

    from deepcmb import shipped

    _write_root(tmp_path)
    for name in ("a", "b"):
        shutil.copytree(shipped.network("quick"), tmp_path / name)

    def keys(model):
        preset = {**PRESET, "run": {**PRESET["run"], "models": {"extra": model}}}
        (tmp_path / "evaluate" / "tiny.yaml").write_text(yaml.safe_dump(preset))
        return {s.name: s.key for s in plan_stages(*find_preset("tiny", tmp_path), tmp_path / "out")
                if s.name.startswith("reconstruct_extra")}

    first = keys("a")
    assert first and keys("b") == first
    shutil.copy2(shipped.network("bench") / "model.keras", tmp_path / "b" / "model.keras")
    assert all(keys("b")[n] != first[n] for n in first)
