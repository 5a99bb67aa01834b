"""The prepared GPU run (``benchmarks/gpu_paper.py``) works end to end, here on a CPU at 32 x 32.

A GPU session is rare and short: the script must not have rotted when one comes. This runs both phases
with the smallest settings (a check of the script, not a result): the network-alone rate, a training
stopped by its time limit (so ``network.keras`` is the best checkpoint, the run left resumable), and
the evaluation against the MV_POL QE and the MAP with the results table.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_script_runs_both_phases_and_resumes(tmp_path):
    out = tmp_path / "gpu"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_paper.py"), str(out), "--shape", "32", "--minutes", "0",
           "--train-maps", "64", "--test-maps", "8", "--rates", "float32:32", "--rate-steps", "8", "--steps", "2",
           "--workers", "2"]
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stopped at the time limit (0 min) after epoch 1/10000" in done.stdout
    summary = json.loads((out / "gpu_summary.json").read_text())
    (rate,) = summary["network_rates"]
    assert rate["precision"] == "float32" and rate["batch"] == 32 and rate["maps_per_s"] > 0
    assert summary["training_precision"] == "float32"
    assert "| float32   | 32    |" in (out / "gpu_rates.rst").read_text()
    # the time limit left the run resumable: no model.keras, the network is the best checkpoint
    assert not (out / "train" / "model.keras").exists() and (out / "network.keras").exists()
    state = json.loads((out / "train" / "checkpoints" / "last.json").read_text())
    assert state["epoch"] == 1 and not state["finished"]
    with h5py.File(out / "rec_nn.h5") as f:
        assert f["maps/kappa"].shape == (8, 32, 32)
    table = (out / "results" / "results.rst").read_text()
    assert "N nn / N map" in table and "map_near_iterative" in table
    # the same command continues the training for another epoch and re-uses everything else
    done = subprocess.run(cmd + ["--phase", "train"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "after epoch 2/10000" in done.stdout
    assert json.loads((out / "train" / "checkpoints" / "last.json").read_text())["epoch"] == 2
