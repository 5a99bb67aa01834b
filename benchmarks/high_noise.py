"""Each network's effective noise over the measured MAP's, per noise level, on the benchmark's test maps.

Run as::

    python benchmarks/high_noise.py OUT [--models bench unrolled unrolled_5uk] [--maps 2000] [--rst FILE]

Simulates the benchmark's test maps (``sims/bench_test.yaml``: 64 x 64 periodic patches, 1000 maps at each of
1 and 5 uK-arcmin with ``--maps 2000``), then runs the stage commands a user would, with the settings of the
benchmark preset (``evaluate/bench.yaml``)::

    deepcmb simulate --config sims/bench_test.yaml --out OUT/sims.h5
    deepcmb reconstruct --method qe --estimator MV_POL --config evaluate/bench.yaml --sims OUT/sims.h5 ...
    deepcmb reconstruct --method map --sims OUT/sims.h5 --out OUT/rec_map.h5
    deepcmb reconstruct --method nn --model MODEL --symmetrize --sims OUT/sims.h5 --out OUT/rec_MODEL.h5
    deepcmb evaluate --config evaluate/bench.yaml --sims OUT/sims.h5 --rec ... --out OUT/eval

and prints, for every network (``--models``: shipped names or run folders) and the MV_POL QE, at each noise
level, N_eff / N_eff(MAP) per L bin 150-1500 with the inverse-variance mean and its jackknife error, and the
benchmark's two MAP targets for each network as :func:`deepcmb.results.map_targets` judges them: at 1
uK-arcmin at most 1.3 in every bin to L = 900 (``nn_near_map``), at 5 uK-arcmin a mean of at most 1.05
within two standard errors (``nn_near_map_high_noise``). Outputs already in OUT are re-used.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from deepcmb.cli import main as deepcmb
from deepcmb.config import resolve
from deepcmb.pipeline import _label as label
from deepcmb.results import (SCHEMA, _inside, map_targets, mean_ratio, neff_ratio, noise_table, rst_grid,
                             target_status)

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "evaluate" / "bench.yaml"
LMIN, LMAX = 150.0, 1500.0
"""The multipoles of the table (the targets' own ranges are :data:`deepcmb.results.SCHEMA`'s)."""


def run(args: list[str]) -> float:
    """One stage command; its wall time in seconds (a failure stops the benchmark with its message)."""
    start = time.perf_counter()
    if deepcmb(args + ["--quiet"]) != 0:
        sys.exit(f"failed: deepcmb {' '.join(args)}")
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--models", nargs="+", default=["bench", "unrolled", "unrolled_5uk"])
    p.add_argument("--maps", type=int, default=2000, help="test maps, both noise levels together")
    p.add_argument("--rst", type=Path)
    args = p.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    sims = out / "sims.h5"
    timing = out / "times.json"
    times = json.loads(timing.read_text()) if timing.exists() else {}
    if not sims.exists():
        times["simulate"] = run(["simulate", "--config", str(ROOT / "sims" / "bench_test.yaml"), "--out", str(sims),
                                 "--set", f"n_maps={args.maps}"])
    recs = {"qe_mv_pol": out / "rec_qe_mv_pol.h5", "map": out / "rec_map.h5"}
    commands = {"qe_mv_pol": ["--method", "qe", "--estimator", "MV_POL", "--config", str(PRESET)],
                "map": ["--method", "map"]}
    labels = {model: label(Path(model).name) for model in args.models}  # evaluation labels
    for model, name in labels.items():
        recs[name] = out / f"rec_{name}.h5"
        commands[name] = ["--method", "nn", "--model", model, "--symmetrize"]
    for name, rec in recs.items():
        if not rec.exists():
            times[name] = run(["reconstruct", *commands[name], "--sims", str(sims), "--out", str(rec)])
            timing.write_text(json.dumps(times))
    run(["evaluate", "--config", str(PRESET), "--sims", str(sims),
         *(a for name, rec in recs.items() for a in ("--rec", f"{name}={rec}")),
         "--set", "examples=0", "--out", str(out / "eval"), "--overwrite"])
    summary = json.loads((out / "eval" / "summary.json").read_text())
    cfg = resolve({}, SCHEMA)
    rows, lines = [], []
    edges = np.array(summary["bins"]["edges"])
    sel = _inside(edges, LMIN, LMAX)
    for j, level in enumerate(summary["noise_p_uk_arcmin"]):
        table = noise_table(summary, j)
        for name in ["qe_mv_pol", *labels.values()]:
            ratio, err = neff_ratio(table, name, "map")
            mean, mean_err = mean_ratio(ratio[sel], err[sel])
            rows.append([f"{level:g}", name, *(f"{r:.3f}" for r in ratio[sel]), f"{mean:.3f} +- {mean_err:.3f}"])
    for model, name in labels.items():
        t = map_targets(summary, {**cfg, "nn": name})
        low, high = t["nn_near_map"], t["nn_near_map_high_noise"]
        lines.append(f"``{model}``: at {cfg['low_noise']:g} uK-arcmin at most {low.get('max_ratio', np.nan):.3f} x the "
                     f"MAP to L = {cfg['Lmax_map']:.0f} (target {cfg['map_factor']}: {target_status(low)}); at "
                     f"{cfg['high_noise']:g} uK-arcmin a mean of {high.get('mean_ratio', np.nan):.3f} +- "
                     f"{high.get('mean_ratio_err', np.nan):.3f} (target {cfg['map_factor_high']}: "
                     f"{target_status(high)}).")
    bins = [f"{edges[k]:.0f}-{edges[k + 1]:.0f}" for k in np.flatnonzero(sel)]
    grid = "\n".join(rst_grid(["uK'", "method", *bins, "mean"], rows))
    cost = ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
    note = (f"N_eff / N_eff(MAP) per L bin on {summary['n_maps']} test maps of ``sims/bench_test.yaml`` (networks "
            f"symmetrized; mean: inverse-variance mean over the bins, jackknife error). " + " ".join(lines)
            + f" Wall times on 2 cores: {cost}. ``python benchmarks/high_noise.py OUT --models "
            f"{' '.join(args.models)} --maps {args.maps}``.")
    print(grid)
    print(note)
    if args.rst:
        title = "Networks against the MAP at each noise level"
        args.rst.write_text(f"{title}\n{'~' * len(title)}\n\n{grid}\n\n{note}\n")


if __name__ == "__main__":
    main()
