"""Coverage of the per-map uncertainties on held-out maps and on the robustness sets, through the command line.

Run as::

    python benchmarks/uq_coverage.py OUT [--maps 400] [--calibration-maps 640] [--own-calibration-maps 400]
                                         [--map] [--masked-map-maps 32] [--rst docs/results/uq_coverage.rst]

Simulates the calibration maps of ``sims/quick_calib.yaml`` (the quick training distribution, another
seed), reconstructs them with the MV_POL QE, the shipped quick network and, with ``--map``, the MAP
estimator, and calibrates each method (``deepcmb calibrate``). Then, for each test set, simulates
``--maps`` maps, reconstructs them with ``--uncertainty`` and evaluates them: ``test`` (sims/quick_test.yaml:
the calibration's cosmologies and four within the training ranges), ``ood`` (sims/bench_ood.yaml: Alens
0.6, 1.4, As 1.7e-9, 2.5e-9, outside them), ``noise2`` (sims/bench_noise.yaml: 2 uK-arcmin, never
calibrated), ``curved`` (sims/bench_curved.yaml: non-periodic curved-sky patches, with the calibration of
periodic maps; not the QE, which apodises them, unlike its calibration maps).

Two sets have calibrations of their own kind, on ``--own-calibration-maps`` maps: ``curved_own``, the
curved set again with the QE and the quick network calibrated on sims/curved_calib.yaml (another sky), and
``masked`` (sims/masked_test.yaml: masks and inhomogeneous noise on non-periodic patches), calibrated on
sims/masked_calib.yaml (the masked training distribution, another seed): the MV_POL QE with the C^-1
filter and 32 mean-field simulations per map, the shipped ``survey`` network, symmetrized, and MAP (its
default 32 mean-field simulations per map, 19 s a map on 2 cores) on the first ``--masked-map-maps`` maps
of the set, calibrated on as many. ``masked_holes3x`` (three times the point-source holes, 6 per deg2) and
``masked_shallow`` (noise maps of 1.5-3 uK-arcmin) lie outside the masked training and calibration ranges;
only the survey network is run on them. MAP is not run on the curved sets (4 s a map). A method that
refuses a set, or refuses ``--uncertainty`` on it, is a row with the one-line reason it gave.

Prints and, with ``--rst``, writes one row per set and method: the fraction of pixels whose low-passed truth
lies within 1 and 2 sigma, the same at 1 sigma in the tenth of the pixels with the largest and with the
smallest sigma (on masked maps sigma follows the local depth; elsewhere it is one value per map), the range
over the L bins of the per-mode 1-sigma coverage, the median input score and the fraction of maps above the
threshold. Stages whose output exists are re-used. With ``--map``, 8 minutes on 2 cores once CAMB's spectra
are cached for the periodic sets, and about an hour more for the masked set (the Monte Carlo of the QE and
of MAP).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import yaml

from deepcmb.results import rst_grid

ROOT = Path(__file__).resolve().parent.parent
SETS = {"test": "sims/quick_test.yaml", "ood": "sims/bench_ood.yaml", "noise2": "sims/bench_noise.yaml",
        "curved": "sims/bench_curved.yaml", "curved_own": "sims/bench_curved.yaml", "masked": "sims/masked_test.yaml",
        "masked_holes3x": "sims/masked_test.yaml", "masked_shallow": "sims/masked_test.yaml"}
OVERRIDES = {"masked_holes3x": ["survey.mask.holes_per_deg2=6"], "masked_shallow": ["survey.noise.depth_factor=[1.5,3.0]"]}
"""Sets made from a preset with other settings: masks and noise maps outside the masked training ranges."""
SIMS_FILE = {"curved_own": "curved.h5"}
"""Sets that share another's test maps (else TAG.h5)."""
OWN = {"m": ("sims/masked_calib.yaml", "masked_calibration"), "c": ("sims/curved_calib.yaml", "curved_calibration")}
"""Calibrations on maps of a kind of their own, by the prefix of their files: the preset of the calibration maps and
the name of their file."""
CALIBRATED_BY = {"masked": "m", "masked_holes3x": "m", "masked_shallow": "m", "curved_own": "c"}
"""The calibration (:data:`OWN`) of each set that has one of its own kind (else the periodic calibration of
sims/quick_calib.yaml)."""
METHOD_ARGS = {"qe": ["--method", "qe", "--estimator", "MV_POL"], "nn": ["--method", "nn", "--model", "quick"],
               "map": ["--method", "map", "--workers", "2"]}
"""How each method reconstructs the periodic sets."""
MASKED_ARGS = {"qe": ["--method", "qe", "--estimator", "MV_POL", "--mean-field-maps", "32"],
               "nn": ["--method", "nn", "--model", "survey", "--symmetrize"], "map": METHOD_ARGS["map"]}
"""How each method reconstructs the masked set and its calibration maps."""
NOT_RUN = {("curved", "qe"): "the QE apodises these patches; its calibration, on periodic maps, does not cover that",
           ("curved", "map"): "not run (4 s a map on 2 cores)", ("curved_own", "map"): "not run (4 s a map on 2 cores)",
           **{(tag, m): f"not run ({cost} s a map on 2 cores)" for tag in OVERRIDES for m, cost in (("qe", 2.7),
                                                                                                     ("map", 19))}}
"""Sets a method is not run on, and why."""
NOTE = {("masked", "nn"): "survey network", ("masked_holes3x", "nn"): "survey network; 3 x the holes",
        ("masked_shallow", "nn"): "survey network; 1.5-3 uK-arcmin", ("masked", "map"): "the first maps of the set, calibrated on as many",
        ("curved", "nn"): "calibrated on periodic maps", ("curved_own", "qe"): "calibrated on curved-sky patches",
        ("curved_own", "nn"): "calibrated on curved-sky patches"}
EVALUATE = {"evaluate": {"bins": {"Lmin": 150, "Lmax": 1500, "width": 150}, "snr": {"Lmax": 1500},
                         "theory": {"qe_estimators": ["MV_POL"], "iterative": False}, "jackknife": 10}}


def deepcmb(*args, check=True):
    done = subprocess.run([sys.executable, "-m", "deepcmb.cli", *args, "--quiet"], capture_output=True, text=True)
    if check and done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return done


def reconstruct(args, sims, out, extra=()):
    """``deepcmb reconstruct`` with ``args`` unless ``out`` exists; returns the error line of a refused input,
    else None."""
    if out.exists():
        return None
    done = deepcmb("reconstruct", *args, "--sims", str(sims), "--out", str(out), *extra, check=False)
    if done.returncode == 2:  # "deepcmb reconstruct: error: PATH: why": keep the why
        return done.stderr.strip().splitlines()[-1].split(": ", 3)[-1]
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return None


def apodisation(rec):
    """The taper (arcmin) a reconstruction's maps were apodised with before estimating (0 for none)."""
    with h5py.File(rec) as f:
        return float(f.attrs.get("apodize_arcmin", 0.0))


def periodic(sims):
    """Whether a simulation file's maps are periodic."""
    from deepcmb.io.maps import open_maps

    with open_maps(sims) as m:
        return m.periodic


def extremes(sims, rec, batch=200):
    """1-sigma pixel coverage in the tenth of the pixels with the largest and with the smallest ``kappa_sigma`` of
    a reconstruction (over all its maps), or None where sigma is one value per map."""
    from deepcmb.geometry import FlatSkyGeometry
    from deepcmb.uncertainty.coverage import lowpass

    with h5py.File(rec) as f, h5py.File(sims) as s:
        sigma = f["maps/kappa_sigma"][...].astype(float)
        if np.all(sigma == sigma[:, :1, :1]):
            return None
        geom = FlatSkyGeometry(tuple(int(n) for n in f.attrs["shape"]), float(f.attrs["pixel_arcmin"]))
        rows, lmax = f["meta/index"][...], float(f.attrs["uq_lmax"])
        z = np.empty(sigma.shape)
        for start in range(0, len(rows), batch):
            sel = slice(start, start + batch)
            truth = lowpass(geom, s["maps/kappa"][rows[sel]].astype(float), lmax)
            z[sel] = np.abs(truth - f["maps/kappa_mean"][sel]) / sigma[sel]
    hi, lo = np.quantile(sigma, [0.9, 0.1])
    return np.mean(z[sigma >= hi] <= 1), np.mean(z[sigma <= lo] <= 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="working folder")
    parser.add_argument("--maps", type=int, default=400, help="maps per test set")
    parser.add_argument("--calibration-maps", type=int, default=640, help="calibration maps")
    parser.add_argument("--own-calibration-maps", type=int, default=400,
                        help="calibration maps of the masked set, and of the curved set calibrated on its own kind")
    parser.add_argument("--map", action="store_true", help="also the MAP estimator (0.4 s a map, masked 19 s)")
    parser.add_argument("--masked-map-maps", type=int, default=32,
                        help="masked calibration and test maps of the MAP estimator")
    parser.add_argument("--rst", type=Path, help="also write the table as reStructuredText here")
    args = parser.parse_args(argv)
    o = args.out
    o.mkdir(parents=True, exist_ok=True)
    methods = ["qe", "nn"] + (["map"] if args.map else [])

    def simulate(preset, out, n, overrides=()):
        if not out.exists():
            deepcmb("simulate", "--config", str(ROOT / preset), "--set", f"n_maps={n}", "--out", str(out),
                    "--workers", "2", *[a for o in overrides for a in ("--set", o)])

    def calibrate(sims, rec, out):
        if not out.exists():
            deepcmb("calibrate", "--sims", str(sims), "--rec", str(rec), "--out", str(out))

    cal = o / "calibration.h5"
    simulate("sims/quick_calib.yaml", cal, args.calibration_maps)
    few = args.masked_map_maps  # MAP on the masked set: its own, smaller, calibration and test files
    for m in methods:
        reconstruct(METHOD_ARGS[m], cal, o / f"cal_{m}.h5")
        calibrate(cal, o / f"cal_{m}.h5", o / f"calib_{m}.h5")
    for prefix, (preset, name) in OWN.items():
        simulate(preset, o / f"{name}.h5", args.own_calibration_maps)
        for m in methods:
            if all((tag, m) in NOT_RUN for tag, by in CALIBRATED_BY.items() if by == prefix):
                continue
            sims = o / f"{name}_few.h5" if m == "map" else o / f"{name}.h5"
            simulate(preset, sims, few if m == "map" else args.own_calibration_maps)
            how = MASKED_ARGS[m] if prefix == "m" else METHOD_ARGS[m]
            reconstruct(how, sims, o / f"{prefix}cal_{m}.h5")
            calibrate(sims, o / f"{prefix}cal_{m}.h5", o / f"{prefix}calib_{m}.h5")
    (o / "evaluate.yaml").write_text(yaml.safe_dump(EVALUATE))
    rows = []
    for tag, preset in SETS.items():
        sims = {m: o / SIMS_FILE.get(tag, f"{tag}.h5") for m in methods}
        if tag == "masked" and "map" in methods:
            sims["map"] = o / "masked_few.h5"
        recs, refused = {}, {}
        for m in methods:
            simulate(preset, sims[m], few if sims[m].name == "masked_few.h5" else args.maps, OVERRIDES.get(tag, ()))
            if (tag, m) in NOT_RUN:
                refused[m] = NOT_RUN[tag, m]
                continue
            how = MASKED_ARGS[m] if CALIBRATED_BY.get(tag) == "m" else METHOD_ARGS[m]
            calib = o / f"{CALIBRATED_BY.get(tag, '')}calib_{m}.h5"
            why = reconstruct(how, sims[m], o / f"{tag}_{m}.h5", ["--uncertainty", str(calib)])
            if why:
                refused[m] = why.replace(f"{o}/", "")  # file names relative to OUT
            else:
                recs[m] = o / f"{tag}_{m}.h5"
        summaries = {}
        taper = {m: apodisation(p) for m, p in recs.items()}
        for path, arcmin in sorted({(sims[m], taper[m]) for m in recs}):  # one evaluation per test file and taper
            here = {m: p for m, p in recs.items() if (sims[m], taper[m]) == (path, arcmin)}
            folder = o / "_".join(["eval", tag] + ([path.stem] if path.stem != tag else [])
                                  + ([f"{arcmin:g}"] if arcmin else []))
            if not (folder / "summary.json").exists():
                extra = ["--set", f"apodize_arcmin={arcmin:g}"] if not periodic(path) else []
                deepcmb("evaluate", "--config", str(o / "evaluate.yaml"), "--sims", str(path), "--out", str(folder),
                        "--overwrite", *extra, *[a for m, p in here.items() for a in ("--rec", f"{m}={p}")])
            summaries.update({m: json.loads((folder / "summary.json").read_text()) for m in here})
        for m in methods:
            if m in refused:
                rows.append([tag, m] + ["-"] * 7 + [refused[m]])
                continue
            r = summaries[m]["results"][m]["all"]
            modes = np.array([v for v in r["mode_coverage_1sigma"] if v is not None])
            ends = extremes(sims[m], recs[m])
            rows.append([tag, m, str(r["n_maps"]), f"{r['coverage_1sigma']:.3f} +- {r['coverage_1sigma_err']:.3f}",
                         f"{r['coverage_2sigma']:.3f} +- {r['coverage_2sigma_err']:.3f}",
                         "-" if ends is None else f"{ends[0]:.3f} / {ends[1]:.3f}",
                         f"{modes.min():.3f}-{modes.max():.3f}", f"{r['ood_score_median']:.2f}",
                         f"{100 * r['ood_outside']:.0f} %", NOTE.get((tag, m), "")])
    head = ["set", "method", "maps", "1 sigma", "2 sigma", "1 sigma, largest / smallest sigma", "per L bin, 1 sigma",
            "median score", "flagged", "note"]
    lines = rst_grid(head, rows)
    print("\n".join(lines))
    if args.rst:
        args.rst.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
