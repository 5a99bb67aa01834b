"""The survey network against the C^-1-filtered quadratic estimator on masked maps with a noise map.

Run as::

    python benchmarks/survey_network.py OUT [--maps 400] [--mean-field-maps 32] [--model survey]
                                            [--sims-config PRESET] [--set KEY=VALUE ...]
                                            [--qe-option OPTION ...] [--map] [--map-option OPTION ...]
                                            [--evaluate-set KEY=VALUE ...] [--title TEXT] [--rst FILE]

Simulates ``--maps`` test maps of ``sims/masked_test.yaml`` (64 x 64 non-periodic patches cut from 128 x 128
periodic boxes, 1' beam, a 15' edge taper and point-source holes, 0.7-1.5 uK-arcmin with stripes; each map its
own mask and noise map; the cosmologies never trained on, plus Planck 2018 as the reference of the transfer
correction), with ``--set`` overrides of that preset (e.g. ``survey.mask.holes_per_deg2=6`` for masks outside
the network's training range; ``--sims-config`` another preset, e.g. ``sims/bench_curved.yaml``, the
non-periodic curved-sky patches without a mask, with ``--qe-option=--apodize-arcmin=30 --evaluate-set
apodize_arcmin=30`` as the benchmark evaluates them), then runs the stage commands a user would::

    deepcmb simulate --config sims/masked_test.yaml --out OUT/sims.h5 --set n_maps=MAPS
    deepcmb reconstruct --method qe --estimator MV_POL --mean-field-maps M --data OUT/sims.h5 --out OUT/rec_qe.h5
    deepcmb reconstruct --method nn --model survey --symmetrize --data OUT/sims.h5 --out OUT/rec_nn.h5
    deepcmb reconstruct --method map --data OUT/sims.h5 --out OUT/rec_map.h5                 (with --map)
    deepcmb evaluate --sims OUT/sims.h5 --rec qe=OUT/rec_qe.h5 --rec nn=OUT/rec_nn.h5 --out OUT/eval ...

The quadratic estimator is the masked one (:mod:`deepcmb.qe.masked_stage`: C^-1 filter with the mask and the
noise map, a mean field of ``--mean-field-maps`` simulations per map, since every map has its own mask, and the
Monte Carlo response); the network is ``--model`` (default the shipped survey network), averaged over the 8
symmetries of the grid; with ``--map``, the MAP estimator with the same data model (pixel weights mask x
ivar_p and a simulated gradient mean field per map, :mod:`deepcmb.iterative.meanfield`; ``--map-option``
adds options to its command, e.g. ``--map-option=--cg-tol=1e-4``). The evaluation is over each map's observed region (pseudo-spectra of the masked maps
divided by the mask's w2, :mod:`deepcmb.evaluation.window`). It prints, per L bin, rho^2 and N_eff of both,
their ratio N_eff(nn) / N_eff(QE) (and N_eff(nn) / N_eff(MAP)) with its jackknife error, and the bias of each after dividing by the transfer
function measured on the reference-cosmology maps alone; then the targets of the survey network at 1 uK-arcmin
(N_eff ratio at most 0.75 in every bin 150-1500, bias within 2 %) and the cost per map of each method.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import yaml

from deepcmb.cli import main as deepcmb
from deepcmb.io.files import text
from deepcmb.io.maps import open_maps
from deepcmb.results import neff_ratio, noise_table, rst_grid

ROOT = Path(__file__).resolve().parent.parent
EVALUATE = {"bins": {"Lmin": 150, "Lmax": 2100, "width": 150}, "e_bins": {"lmin": 150, "lmax": 3000, "width": 150},
            "snr": {"Lmax": 2100}, "theory": {"qe_estimators": [], "iterative": False}, "examples": 0,
            "jackknife": 20}
"""The evaluation of the benchmark preset (evaluate/bench.yaml), without the analytic curves of periodic maps."""
TARGET_RATIO, BIAS_TOL, LMIN, LMAX = 0.75, 0.02, 150.0, 1500.0
"""The survey network's targets (at the preset's 1 uK-arcmin): N_eff ratio, bias, and their multipole range."""
REFERENCE = 0
"""Cosmology of the transfer-function correction (Planck 2018 in sims/masked_test.yaml)."""


def run(args: list[str]) -> float:
    """One stage command; its wall time in seconds (a failure stops the benchmark with its message)."""
    start = time.perf_counter()
    if deepcmb(args + ["--quiet"]) != 0:
        sys.exit(f"failed: deepcmb {' '.join(args)}")
    return time.perf_counter() - start


def bias(summary: dict, label: str, table: dict) -> tuple[np.ndarray, np.ndarray]:
    """Transfer of ``label`` over all maps divided by its transfer on the reference cosmology's maps, minus 1,
    per bin, with the error (as the benchmark's ``nn_unbiased`` target, :func:`deepcmb.results.targets`)."""
    ref = summary["results"][label][f"cosmo{REFERENCE}_noise0"]
    t, t_err = np.array(table["methods"][label]["transfer"]), np.array(table["methods"][label]["transfer_err"])
    r, r_err = np.array(ref["transfer"]), np.array(ref["transfer_err"])
    return t / r - 1.0, np.hypot(t_err, r_err) / np.abs(r)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--maps", type=int, default=400)
    p.add_argument("--mean-field-maps", type=int, default=32)
    p.add_argument("--model", default="survey")
    p.add_argument("--sims-config", type=Path, default=ROOT / "sims" / "masked_test.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the simulation preset")
    p.add_argument("--qe-option", action="append", default=[], metavar="OPTION",
                   help="an option added to the QE's reconstruct command")
    p.add_argument("--map", action="store_true", help="also run the MAP estimator")
    p.add_argument("--map-option", action="append", default=[], metavar="OPTION",
                   help="an option added to the MAP's reconstruct command")
    p.add_argument("--evaluate-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the evaluation")
    p.add_argument("--title", default="Masked test maps (sims/masked_test.yaml)")
    p.add_argument("--rst", type=Path)
    args = p.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    sims = out / "sims.h5"
    sets = [f"n_maps={args.maps}", *args.set]
    timing = out / "times.json"  # seconds per stage, kept for a re-run that re-uses the reconstructions
    times = json.loads(timing.read_text()) if timing.exists() else {}
    if not sims.exists():
        times["simulate"] = run(["simulate", "--config", str(args.sims_config), "--out", str(sims)]
                                + [a for s in sets for a in ("--set", s)])
    methods = ["qe", "nn"] + ["map"] * args.map
    recs = {m: out / f"rec_{m}.h5" for m in methods}
    if not recs["qe"].exists():
        times["qe"] = run(["reconstruct", "--method", "qe", "--estimator", "MV_POL", "--mean-field-maps",
                           str(args.mean_field_maps), "--data", str(sims), "--out", str(recs["qe"]), *args.qe_option])
    if not recs["nn"].exists():
        times["nn"] = run(["reconstruct", "--method", "nn", "--model", args.model, "--symmetrize", "--data", str(sims),
                           "--out", str(recs["nn"])])
    if args.map and not recs["map"].exists():
        times["map"] = run(["reconstruct", "--method", "map", "--data", str(sims), "--out", str(recs["map"]),
                            *args.map_option])
    timing.write_text(json.dumps(times))
    (out / "evaluate.yaml").write_text(yaml.safe_dump({"evaluate": EVALUATE}))
    run(["evaluate", "--sims", str(sims), *(a for m in methods for a in ("--rec", f"{m}={recs[m]}")),
         "--config", str(out / "evaluate.yaml"), "--out", str(out / "eval"), "--overwrite"]
        + [a for s in args.evaluate_set for a in ("--set", s)])
    summary = json.loads((out / "eval" / "summary.json").read_text())
    table = noise_table(summary, 0)
    edges = np.array(table["edges"])
    ratio, ratio_err = neff_ratio(table, "nn", "qe")
    ratios = [(ratio, ratio_err)] + ([neff_ratio(table, "nn", "map")] if args.map else [])
    b = {m: bias(summary, m, table) for m in methods}
    rows = []
    for k in range(len(edges) - 1):
        cell = {m: table["methods"][m] for m in methods}
        rows.append([f"{edges[k]:.0f}-{edges[k + 1]:.0f}",
                     *(f"{cell[m]['rho2'][k]:.3f}" for m in methods),
                     *(f"{cell[m]['n_eff'][k]:.3g}" for m in methods),
                     *(f"{r[k]:.2f} +- {e[k]:.2f}" for r, e in ratios),
                     *(f"{100 * b[m][0][k]:+.1f} +- {100 * b[m][1][k]:.1f}" for m in methods)])
    name = {"qe": "QE", "nn": "nn", "map": "MAP"}
    grid = "\n".join(rst_grid(["L", *(f"rho^2 {name[m]}" for m in methods), *(f"N_eff {name[m]}" for m in methods),
                               "N_eff nn / QE", *["N_eff nn / MAP"] * args.map,
                               *(f"bias {name[m]} (%)" for m in methods)], rows))
    sel = (edges[:-1] >= LMIN) & (edges[1:] <= LMAX)
    worst = float(ratio[sel].max())
    worst_bias = float(np.abs(b["nn"][0][sel]).max())
    level = summary["noise_p_uk_arcmin"][0]
    if len(summary["cosmologies"]) > 1:
        biased = (f"network bias after the transfer correction at most {100 * worst_bias:.1f} % (target "
                  f"{100 * BIAS_TOL:.0f} %: {'met' if worst_bias <= BIAS_TOL else 'not met'})")
    else:
        biased = "one cosmology: no bias after the transfer correction to measure"
    at = int(np.argmin(np.abs(np.array(table["L"]) - 400.0)))
    verdict = (f"At {level:g} uK-arcmin, {table['n_maps']} maps: N_eff(nn) / N_eff(QE) at most {worst:.2f} over "
               f"L {LMIN:.0f}-{LMAX:.0f} (target {TARGET_RATIO}: {'met' if worst <= TARGET_RATIO else 'not met'}); "
               f"rho^2 at L = {table['L'][at]:.0f}: {table['methods']['nn']['rho2'][at]:.3f} (nn), "
               f"{table['methods']['qe']['rho2'][at]:.3f} (QE); {biased}.")
    if args.map:
        with h5py.File(recs["map"], "r") as f:
            converged, mean_field = f["meta/converged"][...], text(f.attrs["mean_field"])
        at_map = float(ratios[1][0][sel].max())
        verdict += (f" MAP (mean field: {mean_field}; converged on {int(converged.sum())} of {converged.size} "
                    f"maps): rho^2 at L = {table['L'][at]:.0f} {table['methods']['map']['rho2'][at]:.3f}; "
                    f"N_eff(nn) / N_eff(MAP) at most {at_map:.2f} over L {LMIN:.0f}-{LMAX:.0f}.")
    cost = ", ".join(f"{k} {v / args.maps:.3g} s per map" for k, v in times.items() if k in methods)
    preset = os.path.relpath(args.sims_config.resolve(), ROOT)
    settings = " ".join([f"--sims-config {preset}"] * (args.sims_config.name != "masked_test.yaml")
                        + [f"--set {s}" for s in args.set] + [f"--qe-option={o}" for o in args.qe_option]
                        + ["--map"] * args.map + [f"--map-option={o}" for o in args.map_option]
                        + [f"--evaluate-set {s}" for s in args.evaluate_set])
    command = f"python benchmarks/survey_network.py OUT --maps {args.maps} --mean-field-maps {args.mean_field_maps}"
    command = f"{command} {settings}".strip()
    with open_maps(sims) as f:
        masked = f.masked
    qe = (f"MV_POL QE with the C^-1 filter, {args.mean_field_maps} mean-field simulations per map and the Monte "
          "Carlo response" if masked else f"MV_POL QE ({' '.join(args.qe_option) or 'defaults'})")
    note = (f"{args.title}: {args.maps} maps{', each with its own mask and noise map' if masked else ''}; {qe}; "
            f"network ``{args.model}``, symmetrized. Bias: transfer over all maps / transfer on the Planck 2018 maps - 1. "
            f"{verdict} Cost on 2 cores: {cost or 'not measured (reconstructions made elsewhere)'}. ``{command}``.")
    print(grid)
    print(note)
    if args.rst:
        args.rst.write_text(f"{args.title}\n{'~' * len(args.title)}\n\n{grid}\n\n{note}\n")


if __name__ == "__main__":
    main()
