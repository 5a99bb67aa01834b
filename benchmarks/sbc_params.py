"""Simulation-based calibration of ``deepcmb params``: rank statistics of Alens and As, through the CLI.

Run as::

    python benchmarks/sbc_params.py OUT [--k 30] [--batch 15] [--maps 40] [--map-batches N]
                                        [--steps 1500] [--burn 500] [--walkers 32] [--workers 1]
                                        [--figure docs/sbc_params.png] [--rst docs/results/sbc_params.rst]

Draws ``--k`` held-out cosmologies from the prior of the fit, Alens and As uniform in the bench network's
training ranges (Alens 0.8-1.2, As 1.9-2.3e-9, which are also the params priors here), each from its own
seeded stream (cosmology ``i`` does not depend on ``--k``). They are simulated in batches of ``--batch``:
each batch is one simulation file (``deepcmb simulate``, its own seed) of the five cosmologies of
``sims/bench.yaml`` (Planck 2018 and one step to each edge of Alens and As: the points the network was
trained on, on fresh maps), which calibrate the transfer and noise of every method and their dependence
on Alens and As (``params.calibration_cosmologies``; the first, Planck 2018, also gives the band-power
covariance), followed by the batch's held-out cosmologies, ``--maps`` maps of 64 x 64 at 1 uK-arcmin
each. Every map is reconstructed with the MV_POL QE, the shipped bench network (``--model bench
--symmetrize``) and, in the first ``--map-batches`` batches (default: all), the MAP estimator
(``--method map``); the batch is evaluated (``deepcmb evaluate``) and fitted (``deepcmb params``, emcee
with ``--walkers`` x ``--steps``, ``--burn`` discarded). A batch calibrates on its own maps, so a
fluctuation of one calibration is shared by its batch only.

From ``chains.h5`` it takes, per method (the QE twice: calibrated, and the textbook N0-only fit) and
parameter (Alens, As and the derived ``Alens_eff`` the data constrain), the rank of the truth among the
posterior samples normalised to [0, 1] (:func:`deepcmb.params.sbc.normalized_rank`), and whether the
central 68 % and 95 % intervals hold the truth. It prints the coverages with their binomial errors
``sqrt(q (1 - q) / K)`` and a chi-square test of the uniformity of the ranks (K / 5 bins, 3 to 10), writes
``OUT/sbc.json``, the rank histograms (``--figure``) and, with ``--rst``, the table.

Every output already in OUT is reused (a rerun resumes, and a larger ``--k`` adds batches). The cost
is dominated by CAMB at lmax 5000, once per new cosmology (cached in ``~/.cache/deepcmb``): about 20-30 s
on a free core, 35-70 s on a shared one. A batch of 15 (800 maps) then takes about 5 minutes on a free
core (MAP 3 minutes, network 20 s, params 2 minutes) and 13 on a core shared with a training job (MAP
9 minutes, params 3). Measured: ``--k 60`` (otherwise the defaults) took 50 minutes of wall time on
2 cores, mostly shared with a training job. 40 maps a cosmology keep the Hartlap factor of the band-power
covariance (9 bands) at 0.74 and the MAP, at about 0.3-0.7 s a map, affordable for every batch.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import yaml

from deepcmb.params.sbc import LEVELS, coverage, draws_needed, normalized_rank, rank_uniformity
from deepcmb.results import rst_grid

ALENS_RANGE = (0.8, 1.2)
AS_RANGE = (1.9e-9, 2.3e-9)
SEED = 20261122
CALIBRATION = [{}, {"Alens": 0.8}, {"Alens": 1.2}, {"As": 1.9e-9}, {"As": 2.3e-9}]
NOISE = 1.0
PARAMS = ("Alens", "As", "Alens_eff")
METHODS = {"qe": "QE MV_POL (calibrated)", "qe/n0_only": "QE MV_POL (N0 only)", "nn": "bench network",
           "map": "MAP"}
CONFIG = {
    "evaluate": {"bins": {"Lmin": 150, "Lmax": 1500, "width": 150}, "snr": {"Lmax": 1500},
                 "theory": {"qe_estimators": ["MV_POL"], "iterative": False}, "delensing": {"enabled": False},
                 "examples": 0, "jackknife": 2},
    "params": {"calibration_cosmologies": list(range(len(CALIBRATION))), "test_cosmologies": None,
               "noise_index": 0, "sample": ["Alens", "As"],
               "priors": {"Alens": list(ALENS_RANGE), "As": list(AS_RANGE)}, "emulator_points": 7,
               "Lmin": 150, "Lmax": 1500, "camb": {"lmax": 2500, "lens_potential_accuracy": 1}},
}


def draw(index, seed=SEED):
    """The held-out cosmology ``index``: Alens and As uniform in the training ranges (the params prior)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    alens, a_s = rng.uniform(*ALENS_RANGE), rng.uniform(*AS_RANGE)
    return {"Alens": round(float(alens), 4), "As": float(f"{a_s:.4e}")}


def deepcmb(*args):
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "deepcmb.cli", *args, "--quiet"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"deepcmb {' '.join(args)}\n{done.stderr[-3000:]}")
    print(f"  deepcmb {args[0]} {' '.join(a for a in args[1:3])} ... {time.time() - t0:.0f} s", flush=True)


def sims_config(batch, tests, maps):
    cosmologies = CALIBRATION + tests
    return {"seed": SEED + 1 + batch, "n_maps": maps * len(cosmologies),
            "geometry": {"kind": "flat", "shape": [64, 64], "pixel_arcmin": 2.34375},
            "cosmology": {"sampling": "list", "list": cosmologies, "lmax": 5000},
            "instrument": {"beam_fwhm_arcmin": 1.0, "noise_p_uk_arcmin": [NOISE]},
            "simulation": {"fields": ["Q", "U", "kappa"], "block_size": 64}}


def run_batch(folder, batch, tests, args, with_map):
    """Simulate, reconstruct, evaluate and fit one batch (each step skipped when its output exists)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = sims_config(batch, tests, args.maps)
    path = folder / "sims.yaml"
    if path.exists() and yaml.safe_load(path.read_text()) != cfg:
        raise SystemExit(f"{path} differs from this run's settings (--maps?): use another OUT")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run_cfg = {**CONFIG, "params": {**CONFIG["params"], "walkers": args.walkers, "steps": args.steps,
                                    "burn": args.burn, "seed": 1 + batch}}
    cfg_path = folder / "config.yaml"
    if cfg_path.exists() and yaml.safe_load(cfg_path.read_text()) != run_cfg:
        raise SystemExit(f"{cfg_path} differs from this run's settings (--steps, --burn, --walkers?): use another OUT")
    cfg_path.write_text(yaml.safe_dump(run_cfg, sort_keys=False))
    sims, workers = folder / "sims.h5", ["--workers", str(args.workers)]
    if not sims.exists():
        deepcmb("simulate", "--config", str(path), "--out", str(sims), *workers)
    recs = {"qe": ["--method", "qe", "--estimator", "MV_POL"],
            "nn": ["--method", "nn", "--model", "bench", "--symmetrize"]}
    if with_map:
        recs["map"] = ["--method", "map", *workers]
    for label, opts in recs.items():
        if not (folder / f"{label}.h5").exists():
            deepcmb("reconstruct", *opts, "--sims", str(sims), "--out", str(folder / f"{label}.h5"))
    report = folder / "eval" / "report.h5"
    if not report.exists():
        deepcmb("evaluate", "--sims", str(sims), *[a for m in recs for a in ("--rec", f"{m}={folder / m}.h5")],
                "--config", str(folder / "config.yaml"), "--out", str(folder / "eval"), "--overwrite")
    if not (folder / "params" / "chains.h5").exists():
        deepcmb("params", "--report", str(report), "--config", str(folder / "config.yaml"),
                "--out", str(folder / "params"), "--overwrite")


def ranks_of_batch(chains_path):
    """``{method: {param: [rank, ...]}}`` and the truths, from one ``chains.h5``."""
    out = {}
    with h5py.File(chains_path, "r") as f:
        for label in ("qe", "nn", "map"):
            if label not in f:
                continue
            for c in sorted((k for k in f[label] if k.startswith("cosmo")), key=lambda k: int(k[5:])):
                groups = {label: f[label][c]}
                if "n0_only" in f[label][c]:
                    groups[f"{label}/n0_only"] = f[label][c]["n0_only"]
                for key, g in groups.items():
                    names = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs["param_names"]]
                    chain = g["chain"][()].reshape(-1, len(names))
                    truth = np.asarray(g.attrs["truth"], dtype=float)
                    ranks = dict(zip(names, normalized_rank(chain, truth).tolist()))
                    if "derived" in g:
                        ranks["Alens_eff"] = normalized_rank(g["derived"][()].ravel(), float(g.attrs["derived_truth"]))
                    entry = out.setdefault(key, {"cosmology": [], "truth": [], "ranks": {}})
                    entry["cosmology"].append(int(c[5:]))
                    entry["truth"].append(truth.tolist())
                    for p, r in ranks.items():
                        entry["ranks"].setdefault(p, []).append(float(r))
    return out


def gather(folders):
    merged = {}
    for b, folder in folders:
        for key, entry in ranks_of_batch(folder / "params" / "chains.h5").items():
            m = merged.setdefault(key, {"batch": [], "cosmology": [], "truth": [], "ranks": {}})
            m["batch"] += [b] * len(entry["cosmology"])
            m["cosmology"] += entry["cosmology"]
            m["truth"] += entry["truth"]
            for p, r in entry["ranks"].items():
                m["ranks"].setdefault(p, []).extend(r)
    return merged


def n_bins(k):
    """Histogram bins of K ranks: at least 5 expected per bin (the chi-square test's rule), 3 to 10."""
    return int(np.clip(k // 5, 3, 10))


def fmt(c):
    return f"{c['rate']:.2f} +- {c['error']:.2f}"


def table(merged):
    head = ["method", "parameter", "K", "68 % coverage", "95 % coverage", "rank uniformity p"]
    rows = []
    for key, label in METHODS.items():
        if key not in merged:
            continue
        for p in PARAMS:
            ranks = merged[key]["ranks"].get(p)
            if ranks is None:
                continue
            cov, uni = coverage(np.array(ranks)), rank_uniformity(np.array(ranks), n_bins(len(ranks)))
            rows.append([label, p, len(ranks), fmt(cov[0.68]), fmt(cov[0.95]), f"{uni['p_value']:.2g}"])
    return head, rows


def figure(merged, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in METHODS if k in merged]
    fig, axes = plt.subplots(len(keys), len(PARAMS), figsize=(3.2 * len(PARAMS), 2.2 * len(keys)), squeeze=False,
                             sharex=True)
    for i, key in enumerate(keys):
        for j, p in enumerate(PARAMS):
            ax = axes[i, j]
            ranks = np.array(merged[key]["ranks"].get(p, []))
            if ranks.size == 0:
                ax.set_axis_off()
                continue
            k = ranks.size
            bins = n_bins(k)
            mean, sd = k / bins, np.sqrt(k * (1 / bins) * (1 - 1 / bins))
            ax.axhspan(mean - 2 * sd, mean + 2 * sd, color="0.9")
            ax.axhspan(mean - sd, mean + sd, color="0.8")
            ax.hist(ranks, bins=bins, range=(0, 1), histtype="stepfilled", alpha=0.7, color=f"C{i}")
            cov = coverage(ranks)
            ax.set_title(f"{METHODS[key]}: {p}\n68%: {cov[0.68]['rate']:.2f}, 95%: {cov[0.95]['rate']:.2f} "
                         f"(K={k})", fontsize=8)
            ax.set_ylim(0, None)
            ax.tick_params(labelsize=7)
            if i == len(keys) - 1:
                ax.set_xlabel("rank of the truth", fontsize=8)
    fig.suptitle("SBC of deepcmb params: ranks of the truth (grey: uniform, 1 and 2 sigma per bin)", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--k", type=int, default=30, help="held-out cosmologies")
    ap.add_argument("--batch", type=int, default=15, help="held-out cosmologies per simulation file")
    ap.add_argument("--maps", type=int, default=40, help="maps per cosmology (test and calibration)")
    ap.add_argument("--map-batches", type=int, default=None, help="batches reconstructed with MAP (default: all)")
    ap.add_argument("--walkers", type=int, default=32)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--burn", type=int, default=500)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--figure", type=Path, default=None, help="rank histograms (PNG)")
    ap.add_argument("--rst", type=Path, default=None, help="write the table here")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    n_batches = -(-args.k // args.batch)
    tests = [draw(i) for i in range(args.k)]
    (args.out / "cosmologies.json").write_text(json.dumps(tests, indent=1))
    folders = []
    for b in range(n_batches):
        folder = args.out / f"batch{b}"
        print(f"batch {b}: held-out cosmologies {b * args.batch}-{min(args.k, (b + 1) * args.batch) - 1}", flush=True)
        with_map = args.map_batches is None or b < args.map_batches
        run_batch(folder, b, tests[b * args.batch:(b + 1) * args.batch], args, with_map)
        folders.append((b, folder))
    merged = gather(folders)
    head, rows = table(merged)
    print("\n".join(rst_grid(head, rows)))
    need = {q: [draws_needed(q, 0.05), draws_needed(q, 0.05, 2)] for q in LEVELS}
    print("draws for a binomial error of 5 % (1 sigma; a 5 % miscoverage at 2 sigma): "
          + ", ".join(f"{int(q * 100)} %: {a}, {b}" for q, (a, b) in need.items()))
    summary = {"k": args.k, "maps_per_cosmology": args.maps, "noise_uk_arcmin": NOISE, "batch": args.batch,
               "calibration": CALIBRATION, "priors": {"Alens": ALENS_RANGE, "As": AS_RANGE},
               "draws_needed_5pc": {str(q): v for q, v in need.items()},
               "results": {k: {**v, "coverage": {p: {str(q): c for q, c in coverage(np.array(r)).items()}
                                                 for p, r in v["ranks"].items()},
                               "uniformity": {p: rank_uniformity(np.array(r), n_bins(len(r))) for p, r in v["ranks"].items()}}
                           for k, v in merged.items()},
               "seconds_this_call": time.time() - t0}
    (args.out / "sbc.json").write_text(json.dumps(summary, indent=1))
    if args.figure:
        figure(merged, args.figure)
        print(f"wrote {args.figure}")
    if args.rst:
        args.rst.parent.mkdir(parents=True, exist_ok=True)
        args.rst.write_text("\n".join(rst_grid(head, rows)) + "\n")
        print(f"wrote {args.rst}")


if __name__ == "__main__":
    main()
