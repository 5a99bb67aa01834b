"""The paper preset's network on a GPU for the time there is, then its N_eff against the MAP on 128 x 128 maps.

Run on a machine with a GPU (the jax backend; from the repository root)::

    KERAS_BACKEND=jax python benchmarks/gpu_paper.py OUT [--minutes 6] [--test-maps 200] [--workers 16]

Every step re-uses its output when it exists (the training resumes), so the same command continues a run
cut short:

1. ``OUT/sims_train.h5``: ``--train-maps`` maps of the paper geometry (128 x 128 at 2.34375', 1' beam),
   Planck 2018, 1 and 5 uK-arcmin. The network trains on fresh maps of that configuration drawn on the
   fly by ``--workers`` threads (``data.on_the_fly``); the file seeds the configuration and the
   channel statistics.
2. ``OUT/train``: the network of ``train/paper.yaml`` (its model and training sections) trained until
   ``--minutes`` of wall time have passed (checked after each epoch of ``--steps`` steps); the maps per
   second of each epoch go to ``OUT/gpu_summary.json``.
3. ``OUT/sims_test.h5`` (``--test-maps``, another seed), its MV_POL QE, its MAP reconstruction (on
   ``--workers`` processes) and the network's.
4. ``OUT/eval`` (150-wide bins, with the analytic N0 and iterative limit) and ``OUT/results``: the
   results table, whose overview gives N_eff(network) / N_eff(MAP) per noise level.

``--shape 32 --minutes 0.5 --train-maps 64 --test-maps 8`` runs the same steps in a minute on a CPU
(a check of the script, not a result).
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="working folder")
    parser.add_argument("--minutes", type=float, default=6.0, help="training wall time (default 6)")
    parser.add_argument("--steps", type=int, default=200, help="steps per epoch (default 200)")
    parser.add_argument("--train-maps", type=int, default=2048, help="maps of the training file (default 2048)")
    parser.add_argument("--test-maps", type=int, default=200, help="test maps, half per noise level (default 200)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="CPU processes and threads")
    parser.add_argument("--shape", type=int, default=128, help="map side, pixels (default 128)")
    args = parser.parse_args(argv)

    import keras
    import yaml

    from deepcmb.evaluation.stage import run_evaluate
    from deepcmb.iterative.stage import run_reconstruct_map
    from deepcmb.nn.reconstruct import run_reconstruct_nn
    from deepcmb.nn.train import run_train
    from deepcmb.qe.stage import run_reconstruct_qe
    from deepcmb.results import run_results
    from deepcmb.simulate import run_simulate

    o = args.out
    o.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent
    sims = {"geometry": {"kind": "flat", "shape": [args.shape, args.shape], "pixel_arcmin": 2.34375},
            "instrument": {"beam_fwhm_arcmin": 1.0, "noise_p_uk_arcmin": [1.0, 5.0]},
            "simulation": {"fields": ["Q", "U", "E_unlensed", "kappa"], "block_size": 16}}
    summary = {"backend": keras.backend.backend(), "machine": platform.node(), "shape": args.shape,
               "minutes": args.minutes}
    if keras.backend.backend() == "jax":
        import jax

        summary["devices"] = [str(d) for d in jax.devices()]
    t0 = time.perf_counter()
    train_sims, test_sims = o / "sims_train.h5", o / "sims_test.h5"
    if not train_sims.exists():
        run_simulate({**sims, "seed": 20261203, "n_maps": args.train_maps}, {}, train_sims, workers=args.workers)
    if not test_sims.exists():
        run_simulate({**sims, "seed": 20261204, "n_maps": args.test_maps}, {}, test_sims, workers=args.workers)
    summary["simulate_s"] = round(time.perf_counter() - t0, 1)

    paper = yaml.safe_load((root / "train" / "paper.yaml").read_text())
    train_cfg = {"seed": paper.get("seed", 1234), "model": paper["model"],
                 "data": {**paper.get("data", {}), "on_the_fly": True, "workers": args.workers,
                          "split": [0.9, 0.1, 0.0]},
                 "training": {**paper["training"], "epochs": 10_000, "steps_per_epoch": args.steps,
                              "validation_steps": 8, "early_stopping": {"patience": 10_000}}}
    rates = []

    class TimeLimit(keras.callbacks.Callback):
        """Stop after the epoch in which the wall-time budget runs out; record maps per second."""

        def __init__(self):
            super().__init__()
            self.start = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self.t_epoch = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            dt = time.perf_counter() - self.t_epoch
            rates.append(round(args.steps * paper["training"]["batch_size"] / dt, 1))
            print(f"epoch {epoch + 1}: {rates[-1]:.0f} maps/s, loss {logs.get('loss', float('nan')):.4g}", flush=True)
            if time.perf_counter() - self.start > 60 * args.minutes:
                self.model.stop_training = True

    t0 = time.perf_counter()
    if not (o / "train" / "model.keras").exists():
        run_train(train_cfg, {"sims": train_sims}, o / "train", callbacks=[TimeLimit()])
    summary.update(train_s=round(time.perf_counter() - t0, 1), maps_per_s=rates,
                   maps_per_s_median=sorted(rates)[len(rates) // 2] if rates else None)

    t0 = time.perf_counter()
    recs = {"qe_mv_pol": o / "rec_qe_mv_pol.h5", "map": o / "rec_map.h5", "nn": o / "rec_nn.h5"}
    if not recs["qe_mv_pol"].exists():
        run_reconstruct_qe({"estimator": "MV_POL"}, {"sims": test_sims}, recs["qe_mv_pol"])
    t1 = time.perf_counter()
    if not recs["map"].exists():
        run_reconstruct_map({}, {"sims": test_sims}, recs["map"], workers=args.workers)
    summary["map_s_per_map"] = round((time.perf_counter() - t1) / args.test_maps * args.workers, 2)
    if not recs["nn"].exists():
        run_reconstruct_nn({}, {"sims": test_sims, "model": o / "train"}, recs["nn"])
    summary["reconstruct_s"] = round(time.perf_counter() - t0, 1)
    evaluate = {"bins": {"Lmin": 150, "Lmax": 2100, "width": 150}, "e_bins": {"lmin": 150, "lmax": 3000},
                "theory": {"qe_estimators": ["MV_POL"], "iterative": True}}
    if not (o / "eval" / "summary.json").exists():
        run_evaluate(evaluate, {"sims": test_sims, "recs": recs}, o / "eval", overwrite=True)
    run_results({}, {"evaluations": {"test": o / "eval"}}, o / "results", overwrite=True)
    (o / "gpu_summary.json").write_text(json.dumps(summary, indent=1))
    print((o / "results" / "results.rst").read_text())
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
