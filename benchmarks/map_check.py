"""The MAP estimator against the QE and the analytic iterative limit, on maps, through the command line.

Run as::

    python benchmarks/map_check.py OUT [--maps 400] [--workers 2] [--rst docs/results/map_check.rst]

Simulates ``--maps`` periodic 64 x 64 maps (2.34375', 1' beam, Planck 2018, half at 1 and half at
5 uK-arcmin) into ``OUT/sims.h5``, reconstructs them with the MV_POL QE and the MAP estimator, evaluates
both against the truth (150-wide bins, with the analytic N0 and iterative limit), and prints, per noise
level and bin, N_eff(MAP) / N_eff(QE) and N_eff(MAP) / N_iterative with their jackknife errors;
``--rst`` also writes that table as reStructuredText (the documentation includes it). Stages whose
output exists are re-used. About 5 minutes on 2 cores.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from deepcmb.results import rst_grid

SIMS = {"seed": 77, "geometry": {"kind": "flat", "shape": [64, 64], "pixel_arcmin": 2.34375},
        "instrument": {"beam_fwhm_arcmin": 1.0, "noise_p_uk_arcmin": [1.0, 5.0]},
        "simulation": {"fields": ["Q", "U", "kappa", "E_unlensed"]}}
EVALUATE = {"evaluate": {"bins": {"Lmin": 150, "Lmax": 2100, "width": 150},
                         "theory": {"qe_estimators": ["MV_POL"], "iterative": True}}}


def deepcmb(*args):
    subprocess.run([sys.executable, "-m", "deepcmb.cli", *args, "--quiet"], check=True)


def table(summary: dict) -> list[list[str]]:
    """Rows: noise level, L bin, N_MAP / N_QE and N_MAP / N_iterative (with errors)."""
    rows = []
    edges = summary["bins"]["edges"]
    for j, level in enumerate(summary["noise_p_uk_arcmin"]):
        g = f"noise{j}"
        m, q = summary["results"]["map"][g], summary["results"]["qe_mv_pol"][g]
        n_it = np.asarray(summary["theory"]["n_iterative"][g])
        for k in range(len(edges) - 1):
            r = m["n_eff"][k] / q["n_eff"][k]
            r_err = r * np.hypot(m["n_eff_err"][k] / m["n_eff"][k], q["n_eff_err"][k] / q["n_eff"][k])
            rows.append([f"{level:g}", f"{edges[k]:g}-{edges[k + 1]:g}", f"{r:.3f} +- {r_err:.3f}",
                         f"{m['n_eff'][k] / n_it[k]:.3f} +- {m['n_eff_err'][k] / n_it[k]:.3f}"])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="working folder")
    parser.add_argument("--maps", type=int, default=400, help="maps in all (half per noise level)")
    parser.add_argument("--workers", type=int, default=2, help="processes for simulate and the MAP")
    parser.add_argument("--rst", type=Path, help="also write the table as reStructuredText here")
    args = parser.parse_args(argv)
    o = args.out
    o.mkdir(parents=True, exist_ok=True)
    (o / "sims.yaml").write_text(yaml.safe_dump({**SIMS, "n_maps": args.maps}))
    (o / "evaluate.yaml").write_text(yaml.safe_dump(EVALUATE))
    steps = [("sims.h5", ["simulate", "--config", str(o / "sims.yaml"), "--workers", str(args.workers)]),
             ("rec_qe.h5", ["reconstruct", "--method", "qe", "--estimator", "MV_POL", "--sims", str(o / "sims.h5")]),
             ("rec_map.h5", ["reconstruct", "--method", "map", "--sims", str(o / "sims.h5"),
                             "--workers", str(args.workers)]),
             ("eval", ["evaluate", "--sims", str(o / "sims.h5"), "--rec", f"map={o / 'rec_map.h5'}",
                       "--rec", f"qe_mv_pol={o / 'rec_qe.h5'}", "--config", str(o / "evaluate.yaml")])]
    for output, cmd in steps:
        if not (o / output).exists():
            deepcmb(*cmd, "--out", str(o / output))
    summary = json.loads((o / "eval" / "summary.json").read_text())
    head = ["uK-arcmin", "L", "N_MAP / N_QE", "N_MAP / N_iterative"]
    rows = table(summary)
    text = "\n".join(rst_grid(head, rows)) + "\n"
    print(text)
    if args.rst:
        args.rst.write_text(f"{args.maps} maps; errors from the evaluation's jackknife "
                            f"(``python benchmarks/map_check.py OUT --rst {args.rst}``).\n\n" + text)


if __name__ == "__main__":
    main()
