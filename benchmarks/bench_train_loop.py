"""Where the time of a training step goes: the network alone against the training stage around it.

Run as (after ``evaluate/bench.sh``, whose training files it reads)::

    python benchmarks/bench_train_loop.py [--arch bench] [--steps 30]
        [--sims data/out/run_bench/sims_train.h5] [--qe data/out/run_bench/rec_qe_train.h5] [--workers 1 2]

One process, one network (``train/<arch>.yaml``, built and compiled as the training stage does, with the
statistics of the training file), four ways of running ``--steps`` optimizer steps of the preset's batch:

* ``train_on_batch``: one fixed in-memory batch, repeated (the network's own cost);
* ``fit arrays``: ``model.fit`` on ``--steps`` fresh batches made beforehand and held in memory;
* ``fit fresh, N workers``: ``model.fit`` on the stage's dataset of fresh maps
  (:class:`~deepcmb.nn.onthefly.FreshBatches`), maps simulated while training by N threads, for each N of
  ``--workers`` (default: 1 and 2; the preset's ``data.workers`` is what the stage uses);
* ``stage``: :func:`deepcmb.nn.train.run_train` itself, two epochs of ``--steps`` steps in a temporary folder;
  the second epoch's ``time_s`` per step (it includes the validation pass and the checkpoints).

Each line gives seconds per step and cpu/wall (cpu seconds of this process per wall second; on an idle
machine it is close to the number of cores TensorFlow uses, lower values flag other load).
"""

import argparse
import copy
import csv
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, steps):
    """Seconds per step and cpu/wall of ``fn()``, which runs ``steps`` steps."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    return wall / steps, (time.process_time() - c0) / wall


def stage_network(cfg: dict, sims, qe=None):
    """The network of a resolved training config, built and compiled as the training stage builds it
    (:func:`deepcmb.nn.train.run_train`): the channel statistics of the file's training split, the E/B
    split given the file's pixel and instruments, the preset's loss; under the current dtype policy.

    Returns ``(model, source)``: ``source`` is the :class:`~deepcmb.nn.data.MapSource` of ``sims`` (and
    ``qe``), closed, whose ``shape`` and ``qe`` stay readable.
    """
    from deepcmb.nn.data import MapSource, channel_stats, split_rows
    from deepcmb.nn.model import build_resunet
    from deepcmb.nn.train import compile_model

    m, t, d = cfg["model"], cfg["training"], cfg["data"]
    source = MapSource(sims, qe)
    rows = split_rows(source.n_maps, d["split"], cfg["seed"])["train"][: d["stats_maps"]]
    stats = channel_stats(source, m["inputs"] + m["outputs"], rows)
    model = build_resunet(m, source.shape, stats, pixel_arcmin=source.pixel_arcmin, instruments=source.instruments)
    compile_model(model, t, stats, sims, source.qe)
    source.close()
    return model, source


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="bench", help="preset of train/ (its training section sets the loss and batch)")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per measurement")
    ap.add_argument("--sims", default=str(ROOT / "data/out/run_bench/sims_train.h5"), help="training simulation file")
    ap.add_argument("--qe", default=str(ROOT / "data/out/run_bench/rec_qe_train.h5"),
                    help="its MV_POL QE reconstruction, read only for a kappa_qe input (the bench run writes none: "
                         "benchmarks/ideas.py or `deepcmb reconstruct --method qe --estimator MV_POL` makes it)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="data.workers values to time model.fit on fresh maps with (default: 1 2)")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import yaml

    from deepcmb.fields import stored_fields
    from deepcmb.nn.backend import configure_backend
    from deepcmb.nn.onthefly import FreshBatches
    from deepcmb.nn.settings import resolve_config
    from deepcmb.nn.train import run_train

    user = yaml.safe_load((ROOT / "train" / f"{args.arch}.yaml").read_text())
    cfg = resolve_config(user)
    m, t, d = cfg["model"], cfg["training"], cfg["data"]
    configure_backend(cfg["seed"], t["deterministic"])
    qe = args.qe if "kappa_qe" in m["inputs"] else None
    model, source = stage_network(cfg, args.sims, qe)
    print(f"{args.arch}: {model.count_params():,} parameters, {source.shape[0]} x {source.shape[1]} maps, batch "
          f"{t['batch_size']}, loss {t['loss']}, jit_compile {t['jit_compile']}, deterministic {t['deterministic']}, "
          f"keras {keras.__version__} ({keras.backend.backend()}), {os.cpu_count()} cores", flush=True)

    n = args.steps
    fresh = {w: FreshBatches(args.sims, stored_fields(m["inputs"]), m["outputs"], t["batch_size"], n, seed=cfg["seed"],
                             qe_path=source.qe, workers=w, use_multiprocessing=False) for w in args.workers}
    batches = [fresh[args.workers[0]][i] for i in range(n)]
    x = np.concatenate([b[0] for b in batches])
    y = {h: np.concatenate([b[1][h] for b in batches]) for h in m["outputs"]}
    x0, y0 = batches[0][0], batches[0][1]

    def fit_arrays():
        model.fit(x, y, batch_size=t["batch_size"], epochs=1, shuffle=False, verbose=0)

    def fit_fresh(workers):
        return lambda: model.fit(fresh[workers], epochs=1, steps_per_epoch=n, shuffle=False, verbose=0)

    for warm in (lambda: model.train_on_batch(x0, y0), fit_arrays, fit_fresh(args.workers[0])):  # trace every path
        warm()
    results = [("train_on_batch", *timed(lambda: [model.train_on_batch(x0, y0) for _ in range(n)], n)),
               ("fit arrays", *timed(fit_arrays, n))]
    results += [(f"fit fresh, {w} workers", *timed(fit_fresh(w), n)) for w in args.workers]
    short = copy.deepcopy(user)
    short.setdefault("training", {}).update(epochs=2, steps_per_epoch=n)
    short["training"].pop("early_stopping", None)
    with tempfile.TemporaryDirectory() as tmp:
        c0, t0 = time.process_time(), time.perf_counter()
        run_train(short, {"sims": args.sims, "qe": qe}, Path(tmp) / "run", progress=False)
        load = (time.process_time() - c0) / (time.perf_counter() - t0)
        with (Path(tmp) / "run" / "history.csv").open() as f:
            last = list(csv.DictReader(f))[-1]
        results.append((f"stage (epoch 2, {d['workers']} w)", float(last["time_s"]) / n, load))
    print(f"{'path':22s} {'s/step':>7s} {'samples/s':>10s} {'cpu/wall':>8s}")
    for name, step, load in results:
        print(f"{name:22s} {step:7.3f} {t['batch_size'] / step:10.1f} {load:8.2f}", flush=True)


if __name__ == "__main__":
    main()
