"""The paper preset's network on a GPU for the time there is, then its N_eff against the MAP on 128 x 128 maps.

Two phases, each re-using what exists in ``OUT`` (the training resumes), so the same command continues a
run cut short::

    KERAS_BACKEND=jax python benchmarks/gpu_paper.py OUT --phase train [--minutes 7] [--workers 16]
    python benchmarks/gpu_paper.py OUT --phase evaluate [--test-maps 200] [--workers 2]

``--phase all`` (the default) runs both on one machine. The training phase needs the GPU; the evaluation
runs the MAP, which is CPU work, and may run on another machine given ``OUT/network.keras`` (33 MB).

Training phase (its timings go to ``OUT/gpu_summary.json``, the table of rates to ``OUT/gpu_rates.rst``):

1. ``OUT/sims_train.h5``: ``--train-maps`` maps of the paper geometry (128 x 128 at 2.34375', 1' beam),
   Planck 2018, 1 and 5 uK-arcmin, simulated by ``--workers`` processes. With ``--data fresh`` (the
   default) it seeds the configuration and the channel statistics, and the network trains on fresh maps
   of that configuration simulated on the fly by ``--workers`` threads; with ``--data memory`` the
   network trains on 90 % of its maps, held in memory and augmented (``data.in_memory``; 256 KiB a map),
   and validates on the rest.
2. The network's own speed: the ResUNet of ``train/paper.yaml``, built and compiled as the training stage
   does, trained with ``model.fit`` on batches held in memory, for each precision and batch of
   ``--rates`` (compilation excluded). With ``--precision auto`` the training uses the faster precision
   at the preset's batch.
3. ``OUT/train``: that network trained (``train/paper.yaml``'s model and training sections, epochs of
   ``--steps`` steps) until ``--minutes`` of wall time since the start of the phase have passed (the
   stage's ``time_limit``: checked after each epoch, the run left resumable, so the same command trains
   on); the stage's maps per second per epoch are in ``OUT/train/history.csv``. ``OUT/network.keras`` is
   its best epoch so far without the optimizer (``model.keras`` once the training has finished), the
   network the evaluation uses.

Evaluation phase: ``OUT/sims_test.h5`` (``--test-maps``, another seed), its MV_POL QE, its MAP
reconstruction (``--workers`` processes) and the network's; ``OUT/eval`` (150-wide bins, the analytic N0
and iterative limit) and ``OUT/results``, whose overview gives N_eff(network) / N_eff(MAP) per noise level.

``--shape 32 --minutes 1 --train-maps 64 --test-maps 8 --rates float32:32`` runs both phases in a few
minutes on a CPU (a check of the script, not a result).
"""

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def geometry(shape: int) -> dict:
    """The simulation config of the paper geometry with ``shape`` x ``shape`` maps (seed and count apart)."""
    return {"geometry": {"kind": "flat", "shape": [shape, shape], "pixel_arcmin": 2.34375},
            "instrument": {"beam_fwhm_arcmin": 1.0, "noise_p_uk_arcmin": [1.0, 5.0]},
            "simulation": {"fields": ["Q", "U", "E_unlensed", "kappa"], "block_size": 16}}


def network_rate(cfg: dict, sims: Path, precision: str, batch: int, steps: int, workers: int) -> dict:
    """Training maps per second of the network alone: ``model.fit`` on 8 fresh batches held in memory.

    The network and its optimizer are built and compiled as the training stage does
    (``bench_train_loop.stage_network``), under the dtype policy ``precision``; one epoch over the 8
    batches compiles the step, then ``steps`` steps are timed (whole epochs over the same 8 batches).
    """
    from concurrent.futures import ThreadPoolExecutor

    import keras
    import numpy as np

    from bench_train_loop import stage_network  # this script's folder, on sys.path when run as a script
    from deepcmb.fields import stored_fields
    from deepcmb.nn.onthefly import FreshBatches
    from deepcmb.nn.train import dtype_policy

    keras.backend.clear_session()
    with dtype_policy(precision):
        model, _ = stage_network({**cfg, "training": {**cfg["training"], "batch_size": batch}}, sims)
    fresh = FreshBatches(sims, stored_fields(cfg["model"]["inputs"]), cfg["model"]["outputs"], batch, 8,
                         seed=cfg["seed"])
    with ThreadPoolExecutor(workers) as pool:
        batches = list(pool.map(fresh.__getitem__, range(8)))
    x = np.concatenate([b[0] for b in batches])
    y = {h: np.concatenate([b[1][h] for b in batches]) for h in cfg["model"]["outputs"]}
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    compile_s = time.perf_counter() - t0
    epochs = max(steps // 8, 1)
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0)
    wall = time.perf_counter() - t0
    return {"precision": precision, "batch": batch, "steps": 8 * epochs, "compile_s": round(compile_s, 1),
            "maps_per_s": round(8 * epochs * batch / wall, 1), "parameters": model.count_params()}


def rates_table(rates: list[dict]) -> str:
    """The rates of :func:`network_rate` as an RST grid table."""
    from deepcmb.results import rst_grid

    return "\n".join(rst_grid(["precision", "batch", "maps/s", "steps timed", "first epoch (compile), s"],
                     [[r["precision"], str(r["batch"]), f"{r['maps_per_s']:.0f}", str(r["steps"]),
                       f"{r['compile_s']:.1f}"] for r in rates]))


def train_phase(args, o: Path, summary: dict) -> None:
    """Steps 1-3 of the training phase (module docstring)."""
    import keras
    import yaml

    from deepcmb.interrupts import TimeLimitReached
    from deepcmb.nn.rundir import save_model
    from deepcmb.nn.settings import resolve_config
    from deepcmb.nn.train import run_train
    from deepcmb.simulate import run_simulate

    start = time.perf_counter()
    summary.update(backend=keras.backend.backend(), keras=keras.__version__, machine=platform.node(),
                   cores=os.cpu_count(), shape=args.shape, minutes=args.minutes)
    if keras.backend.backend() == "jax":
        import jax

        summary.update(jax=jax.__version__, devices=[str(dv) for dv in jax.devices()])
    train_sims = o / "sims_train.h5"
    if not train_sims.exists():
        run_simulate({**geometry(args.shape), "seed": 20261203, "n_maps": args.train_maps}, {}, train_sims,
                     workers=args.workers)
        summary["simulate_s"] = round(time.perf_counter() - start, 1)
        save(o, summary)

    paper = yaml.safe_load((ROOT / "train" / "paper.yaml").read_text())
    user = {"seed": paper.get("seed", 1234), "model": paper["model"],
            "data": {**paper.get("data", {}), "on_the_fly": args.data == "fresh", "in_memory": args.data == "memory",
                     "workers": args.workers, "split": [0.9, 0.1, 0.0]},
            "training": {**paper["training"], "epochs": 10_000, "steps_per_epoch": args.steps,
                         "early_stopping": {"patience": 10_000}}}
    rates = summary.setdefault("network_rates", [])
    done = {(r["precision"], r["batch"]) for r in rates}
    for spec in args.rates:
        precision, batch = spec.split(":")
        if (precision, int(batch)) not in done:
            rates.append(network_rate(resolve_config(user), train_sims, precision, int(batch), args.rate_steps,
                                      args.workers))
            print(f"network alone: {rates[-1]}", flush=True)
            save(o, summary)
    (o / "gpu_rates.rst").write_text(rates_table(rates) + "\n")
    preset = [r for r in rates if r["batch"] == paper["training"]["batch_size"]]
    precision = args.precision
    if precision == "auto":
        precision = max(preset, key=lambda r: r["maps_per_s"])["precision"] if preset else "float32"
    summary["training_precision"] = precision
    user["training"]["precision"] = precision

    t0 = time.perf_counter()
    run, network = o / "train", o / "network.keras"
    if not (run / "model.keras").exists():
        try:
            run_train(user, {"sims": train_sims}, run,
                      time_limit=max(60 * args.minutes - (time.perf_counter() - start), 0.0) / 60)
        except TimeLimitReached as stop:
            print(stop, flush=True)
        network.unlink(missing_ok=True)
    summary["train_s"] = round(summary.get("train_s", 0.0) + time.perf_counter() - t0, 1)
    if not network.exists():  # the best epoch so far, without its optimizer
        save_model(keras.saving.load_model(run / "checkpoints" / "best.keras", safe_mode=True), network,
                   include_optimizer=False)
    save(o, summary)


def evaluate_phase(args, o: Path, summary: dict) -> None:
    """The evaluation phase (module docstring)."""
    from deepcmb.evaluation.stage import run_evaluate
    from deepcmb.iterative.stage import run_reconstruct_map
    from deepcmb.nn.reconstruct import run_reconstruct_nn
    from deepcmb.qe.stage import run_reconstruct_qe
    from deepcmb.results import run_results
    from deepcmb.simulate import run_simulate

    test_sims = o / "sims_test.h5"
    if not test_sims.exists():
        run_simulate({**geometry(args.shape), "seed": 20261204, "n_maps": args.test_maps}, {}, test_sims,
                     workers=args.workers)
    recs = {"qe_mv_pol": o / "rec_qe_mv_pol.h5", "map": o / "rec_map.h5", "nn": o / "rec_nn.h5"}
    if not recs["qe_mv_pol"].exists():
        run_reconstruct_qe({"estimator": "MV_POL"}, {"sims": test_sims}, recs["qe_mv_pol"])
    if not recs["map"].exists():
        t0 = time.perf_counter()
        run_reconstruct_map({}, {"sims": test_sims}, recs["map"], workers=args.workers)
        summary["map_core_s_per_map"] = round((time.perf_counter() - t0) / args.test_maps * args.workers, 2)
    if not recs["nn"].exists():
        run_reconstruct_nn({}, {"sims": test_sims, "model": o / "network.keras"}, recs["nn"])
    evaluate = {"bins": {"Lmin": 150, "Lmax": 2100, "width": 150}, "e_bins": {"lmin": 150, "lmax": 3000},
                "theory": {"qe_estimators": ["MV_POL"], "iterative": True}}
    if not (o / "eval" / "summary.json").exists():
        run_evaluate(evaluate, {"sims": test_sims, "recs": recs}, o / "eval", overwrite=True)
    run_results({}, {"evaluations": {"test": o / "eval"}}, o / "results", overwrite=True)
    save(o, summary)
    print((o / "results" / "results.rst").read_text())


def save(o: Path, summary: dict) -> None:
    """Write ``OUT/gpu_summary.json`` (after every step, so a run cut short keeps what it measured)."""
    (o / "gpu_summary.json").write_text(json.dumps(summary, indent=1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="working folder")
    parser.add_argument("--phase", choices=["train", "evaluate", "all"], default="all", help="default: all")
    parser.add_argument("--minutes", type=float, default=7.0,
                        help="wall time of the training phase, its simulation and rates included (default 7)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per epoch (default 300)")
    parser.add_argument("--rates", nargs="*", default=["float32:32", "mixed_bfloat16:32", "mixed_bfloat16:128"],
                        help="PRECISION:BATCH of the network-alone rates (default: float32:32 mixed_bfloat16:32 "
                             "mixed_bfloat16:128)")
    parser.add_argument("--rate-steps", type=int, default=96, help="steps timed per rate (default 96)")
    parser.add_argument("--precision", default="auto",
                        help="training precision: float32, mixed_bfloat16, or auto, the faster measured at the "
                             "preset's batch (default)")
    parser.add_argument("--data", choices=["fresh", "memory"], default="fresh",
                        help="train on fresh maps simulated on the fly (default), or on the training file's maps "
                             "held in memory (then give --train-maps enough maps)")
    parser.add_argument("--train-maps", type=int, default=2048, help="maps of the training file (default 2048)")
    parser.add_argument("--test-maps", type=int, default=200, help="test maps, half per noise level (default 200)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="CPU processes and threads (default: this process's cores)")
    parser.add_argument("--shape", type=int, default=128, help="map side, pixels (default 128)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    o = args.out
    o.mkdir(parents=True, exist_ok=True)
    path = o / "gpu_summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    if args.phase in ("train", "all"):
        train_phase(args, o, summary)
    if args.phase in ("evaluate", "all"):
        evaluate_phase(args, o, summary)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
