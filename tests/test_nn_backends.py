"""The network on the jax and torch backends (each in a subprocess with KERAS_BACKEND set).

Each backend builds the DeepCMB-style blocks (SELU, batch norm, dropout, periodic padding, the E/B split
of Q and U by FFTs), takes
training steps with a finite loss, round-trips save -> load -> predict bit for bit, and reads a model
saved by tensorflow with the same predictions. jax also trains through `deepcmb train` with data
parallelism over two (virtual CPU) devices and reconstructs with `deepcmb reconstruct`.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

CHILD = r"""
import json, sys
import numpy as np
import keras
from deepcmb.config import resolve
from deepcmb.nn.model import build_resunet
from deepcmb.nn.settings import MODEL_SCHEMA
from deepcmb.nn.reconstruct import load_network

tmp = sys.argv[1]
keras.utils.set_random_seed(0)
cfg = resolve({"filters": [8, 16], "kernel_size": 3, "dropout": 0.1, "inputs": ["E", "B"]}, MODEL_SCHEMA)
model = build_resunet(cfg, (16, 16), {"kappa": (0.0, 0.05), "E": (0.0, 3.0)}, pixel_arcmin=2.0)
model.compile(optimizer="adam", loss="mse")
ref = np.load(tmp + "/ref.npz")
x, y = ref["x"], {"kappa": ref["kappa"], "E_unlensed": ref["e"]}
losses = [float(np.asarray(model.train_on_batch(x, y)[0])) for _ in range(3)]
before = model.predict_on_batch(x)
model.save(tmp + "/own.keras")
loaded, spec = load_network(tmp + "/own.keras")
after = loaded.predict_on_batch(x)
tf_model, _ = load_network(tmp + "/tf.keras")
tf_pred = np.asarray(tf_model.predict_on_batch(x)["kappa"])
result = {
    "backend": keras.backend.backend(), "losses": losses,
    "shapes": {h: list(np.shape(before[h])) for h in before},
    "identical": all(np.asarray(before[h]).tobytes() == np.asarray(after[h]).tobytes() for h in before),
    "tf_max_rel_diff": float(np.max(np.abs(tf_pred - ref["tf_kappa"])) / np.max(np.abs(ref["tf_kappa"]))),
}
if len(sys.argv) > 2:  # the stage, data parallel over the visible devices
    from deepcmb.cli import main
    code = main(["train", "--config", sys.argv[2], "--data", sys.argv[3], "--out", tmp + "/run", "--quiet"])
    code2 = main(["reconstruct", "--method", "nn", "--model", tmp + "/run", "--data", sys.argv[3],
                  "--out", tmp + "/rec.h5", "--quiet"])
    import h5py
    with h5py.File(tmp + "/rec.h5") as f:
        result["stage"] = [code, code2, bool(np.isfinite(f["maps/kappa"][...]).all())]
    result["devices"] = len(keras.distribution.list_devices())
    result["distribution"] = type(keras.distribution.distribution()).__name__
print("RESULT " + json.dumps(result))
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A model saved by tensorflow and its predictions, for the other backends to read."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the reference model is made with the tensorflow backend")
    from deepcmb.config import resolve
    from deepcmb.nn.model import build_resunet
    from deepcmb.nn.settings import MODEL_SCHEMA

    tmp = tmp_path_factory.mktemp("backends")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 16, 16, 2)).astype("f4")
    kappa, e = (rng.normal(size=(4, 16, 16, 1)).astype("f4") for _ in range(2))
    cfg = resolve({"filters": [8, 16], "kernel_size": 3, "dropout": 0.1, "inputs": ["E", "B"]}, MODEL_SCHEMA)
    model = build_resunet(cfg, (16, 16), {"kappa": (0.0, 0.05)})  # takes Q, U: its E/B split is a layer
    model.compile(optimizer="adam", loss="mse")
    model.train_on_batch(x, {"kappa": kappa, "E_unlensed": e})
    model.save(tmp / "tf.keras")
    np.savez(tmp / "ref.npz", x=x, kappa=kappa, e=e, tf_kappa=np.asarray(model.predict_on_batch(x)["kappa"]))
    return tmp


def _run_child(backend, tmp, *args, env=None):
    full_env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    res = subprocess.run([sys.executable, "-c", CHILD, str(tmp), *map(str, args)], capture_output=True, text=True,
                         env=full_env, timeout=600)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert res.returncode == 0 and lines, res.stderr[-3000:]
    return json.loads(lines[-1][7:])


def _check(result, backend):
    assert result["backend"] == backend
    assert result["shapes"] == {"kappa": [4, 16, 16, 1], "E_unlensed": [4, 16, 16, 1]}
    assert np.all(np.isfinite(result["losses"]))
    assert result["identical"]
    assert result["tf_max_rel_diff"] < 1e-4


def test_jax_backend_model_and_data_parallel_stage(reference, tmp_path):
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    import yaml

    from deepcmb.cli import main

    sims = tmp_path / "sims.h5"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "seed": 1, "n_maps": 24, "geometry": {"shape": [16, 16]},
        "simulation": {"fields": ["Q", "U", "E_unlensed", "kappa"], "block_size": 24}}))
    assert main(["simulate", "--config", str(tmp_path / "s.yaml"), "--out", str(sims), "--workers", "1",
                 "--quiet"]) == 0
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({
        "data": {"split": [0.5, 0.25, 0.25]},
        "model": {"filters": [4, 8], "kernel_size": 3, "activation": "relu", "dropout": 0.0},
        "training": {"batch_size": 4, "epochs": 2, "distribution": "data_parallel", "deterministic": False}}))
    for name in ("tf.keras", "ref.npz"):
        (tmp_path / name).write_bytes((reference / name).read_bytes())
    result = _run_child("jax", tmp_path, tmp_path / "t.yaml", sims,
                        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
                                          # XLA's CPU compiler at full optimisation takes ~1 s per function
                                          "--xla_backend_optimization_level=0"})
    _check(result, "jax")
    assert result["devices"] == 2 and result["distribution"] == "DataParallel"
    assert result["stage"] == [0, 0, True]


def test_torch_backend_model(reference):
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    _check(_run_child("torch", reference), "torch")
