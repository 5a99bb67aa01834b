"""Training and inference speed of the ResUNet presets, beside the quadratic estimator's maps/s.

Run as::

    python benchmarks/bench_nn.py [--archs quick,paper] [--seconds 20] [--qe-maps 64]
    KERAS_BACKEND=jax python benchmarks/bench_nn.py        # another backend (GPU if one is visible)

For each architecture (the ``model`` section of ``train/<arch>.yaml``, on the map size and batch of its
preset: quick 64 x 64, paper 128 x 128, batch 32) it prints

* training samples/s: ``train_on_batch`` on a fixed batch after two warm-up steps (compilation), with
  the preset's loss weights, XLA setting and optimizer (the Fourier-weighted loss, whose weights come from
  a simulation file, is timed as the plain MSE: it only adds the FFT of the kappa residual and its adjoint);
* inference maps/s: ``predict_on_batch`` on batches of 32 (inputs and outputs in physical units);

and, when :mod:`deepcmb.qe` is importable, the maps/s of the flat-sky EB and polarization-MV
quadratic estimators on the same map sizes (setup excluded, FFT threads = all cores). ``cpu/wall``
below the number of cores flags other load on the machine. Inputs are random: speed does not depend on
the values.
"""

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"quick": (64, 64), "paper": (128, 128)}
PIXEL_ARCMIN = 2.34375
"""Pixel side of both presets' maps, arcmin (the E/B split of a network with E/B inputs needs it)."""


def timed(fn, min_seconds, min_calls=3):
    """Seconds per call and cpu/wall of ``fn()`` repeated for at least ``min_seconds`` and ``min_calls``."""
    c0, t0, n = time.process_time(), time.perf_counter(), 0
    while n < min_calls or time.perf_counter() - t0 < min_seconds:
        fn()
        n += 1
    wall = time.perf_counter() - t0
    return wall / n, (time.process_time() - c0) / wall


def device_description():
    import keras

    backend = keras.backend.backend()
    gpu = None
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        gpu = tf.config.experimental.get_device_details(gpus[0]).get("device_name") if gpus else None
    elif backend == "jax":
        import jax

        devs = [d for d in jax.devices() if d.platform == "gpu"]
        gpu = devs[0].device_kind if devs else None
    elif backend == "torch":
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    where = f"GPU {gpu}" if gpu else f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return f"keras {keras.__version__}, backend {backend}, {where}"


def bench_network(arch, seconds):
    import keras
    import yaml

    from deepcmb.nn.model import build_resunet
    from deepcmb.nn.settings import resolve_config
    from deepcmb.nn.train import compile_model

    cfg = resolve_config(yaml.safe_load((ROOT / "train" / f"{arch}.yaml").read_text()))
    if cfg["training"]["loss"] == "fourier_mse":  # its weights come from a simulation file, which there is not
        cfg["training"]["loss"] = "mse"
    shape, bs = SHAPES[arch], cfg["training"]["batch_size"]
    stats = {n: (0.0, 1.0) for n in cfg["model"]["inputs"] + cfg["model"]["outputs"]}
    keras.utils.set_random_seed(0)
    model = build_resunet(cfg["model"], shape, stats, pixel_arcmin=PIXEL_ARCMIN)
    compile_model(model, cfg["training"], stats)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(bs, *shape, len(cfg["model"]["inputs"]))).astype("f4")
    y = {h: rng.normal(size=(bs, *shape, 1)).astype("f4") for h in cfg["model"]["outputs"]}
    for _ in range(2):
        model.train_on_batch(x, y)
    step, train_load = timed(lambda: model.train_on_batch(x, y), seconds)
    xp = x[:32] if bs >= 32 else np.concatenate([x] * (-(-32 // bs)))[:32]
    model.predict_on_batch(xp)
    pred, pred_load = timed(lambda: model.predict_on_batch(xp), seconds / 2)
    return {"arch": arch, "params": model.count_params(), "shape": shape, "batch": bs,
            "train_samples_s": bs / step, "s_per_step": step, "train_cpu_wall": train_load,
            "infer_maps_s": 32 / pred, "infer_cpu_wall": pred_load}


def bench_qe(shape, n_maps, seconds):
    try:
        from deepcmb.cosmology import compute_spectra
        from deepcmb.geometry import FlatSkyGeometry
        from deepcmb.qe import QuadraticEstimator
        from deepcmb.sample import Instrument
    except ImportError as exc:
        return {"error": f"deepcmb.qe not importable ({exc})"}
    geom = FlatSkyGeometry(shape, PIXEL_ARCMIN)
    spectra = compute_spectra({})
    rng = np.random.default_rng(1)
    maps = {k: 5 * rng.normal(size=(n_maps, *shape)) for k in ("Q", "U")}
    out = {}
    for est in ("EB", "MV_POL"):
        t0 = time.perf_counter()
        qe = QuadraticEstimator(geom, spectra, Instrument(1.0, 0.71, 1.0), estimator=est,
                                nthreads=os.cpu_count() or 1)
        setup = time.perf_counter() - t0
        per_call, load = timed(lambda: qe.estimate(maps), seconds / 2, min_calls=2)
        out[est] = {"maps_s": n_maps / per_call, "setup_s": setup, "cpu_wall": load}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", default="quick,paper", help="comma-separated presets of train/ (quick, paper)")
    ap.add_argument("--seconds", type=float, default=20.0, help="minimum timing per measurement")
    ap.add_argument("--qe-maps", type=int, default=64, help="maps per QE call")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(device_description())
    print(f"{'arch':6s} {'params':>10s} {'maps':>9s} {'batch':>5s} {'train samples/s':>16s} {'s/step':>7s} "
          f"{'cpu/wall':>8s} {'infer maps/s':>13s} {'cpu/wall':>8s} {'QE-EB maps/s':>13s} {'QE-MVpol maps/s':>16s}")
    for arch in args.archs.split(","):
        r = bench_network(arch, args.seconds)
        qe = bench_qe(r["shape"], args.qe_maps, args.seconds)
        if "error" in qe:
            qe_cols = f"{'n/a':>13s} {'n/a':>16s}"
        else:
            qe_cols = f"{qe['EB']['maps_s']:13.1f} {qe['MV_POL']['maps_s']:16.1f}"
        print(f"{arch:6s} {r['params']:10,d} {r['shape'][0]:4d}x{r['shape'][1]:<4d} {r['batch']:5d} "
              f"{r['train_samples_s']:16.1f} {r['s_per_step']:7.2f} {r['train_cpu_wall']:8.2f} "
              f"{r['infer_maps_s']:13.1f} {r['infer_cpu_wall']:8.2f} {qe_cols}", flush=True)
        if "error" in qe:
            print(f"  QE: {qe['error']}")
        else:
            print(f"  QE setup (filters, normalisation, N0): EB {qe['EB']['setup_s']:.2f} s, "
                  f"MV_POL {qe['MV_POL']['setup_s']:.2f} s; cpu/wall {qe['EB']['cpu_wall']:.2f}")


if __name__ == "__main__":
    main()
