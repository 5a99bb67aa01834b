"""The benchmark's ideas, one at a time: a network trained with one idea against the same training without it.

Each run trains the quick network (``train/quick.yaml``) twice on fresh maps of the bench training
distribution, with the Fourier-weighted loss and the same seeds, once as the control and once with the
idea alone:

* ``curriculum``: 5 uK-arcmin alone for the first epochs (``data.noise_curriculum``), then both levels;
* ``eb_inputs``: the observed E and B maps (``model.inputs: [E, B, kappa_qe]``, the exact flat-sky split of
  Q and U) instead of Q and U;
* ``one_level``: 1 uK-arcmin alone for every epoch (one network per noise level) instead of both levels,
  so the network sees twice as many maps of the level the main target is set at.

Both networks reconstruct the bench test maps, which are evaluated with ``evaluate/bench.yaml``; the
script prints N_eff / N0(MV_POL analytic) per bin 150-1500 for each network and the MV_POL QE, and the
inverse-variance mean N_eff ratio network / QE per noise level (as the high-noise target).

Needs the outputs of ``evaluate/bench.sh`` (the training and test simulations, the test maps' MV_POL QE);
the MV_POL QE of the training maps, which the quick network reads and the bench network does not, is made
into ``--out`` when the bench run folder lacks it (the QE settings of ``evaluate/bench.yaml``, ~2 s)::

    python benchmarks/ideas.py IDEA [--bench data/out/run_bench] [--out data/out/idea_IDEA]

About 19-25 minutes on 2 CPU cores (by machine) with the defaults (6 epochs of 100 steps; the curriculum's first 2
epochs at 5 uK-arcmin); the ideas table of docs/history.rst quotes its output.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from deepcmb.cli import main
from deepcmb.results import mean_ratio, neff_ratio, noise_table
from deepcmb.qe.stage import run_reconstruct_qe

ROOT = Path(__file__).resolve().parent.parent
IDEAS = ("curriculum", "eb_inputs", "one_level")


def configs(idea, epochs, steps, curriculum_epochs):
    """``{'control': config, idea: config}``: the two training configs (quick network, fresh maps,
    Fourier loss), which differ by the idea alone."""
    base = yaml.safe_load((ROOT / "train" / "quick.yaml").read_text())
    base["seed"] = 2026
    base["data"].update(split=[0.8, 0.2, 0.0], on_the_fly=True, augment=False)
    base["training"].update(epochs=epochs, steps_per_epoch=steps, loss="fourier_mse", monitor="kappa")
    varied = yaml.safe_load(yaml.safe_dump(base))
    if idea == "curriculum":
        varied["data"]["noise_curriculum"] = [{"epochs": curriculum_epochs, "noise_p_uk_arcmin": [5.0]}]
    elif idea == "one_level":
        varied["data"]["noise_curriculum"] = [{"epochs": epochs, "noise_p_uk_arcmin": [1.0]}]
    else:
        varied["model"]["inputs"] = ["E" if n == "Q" else "B" if n == "U" else n for n in base["model"]["inputs"]]
    return {"control": base, idea: varied}


def ratios(summary_path, lmin=150.0, lmax=1500.0):
    """Per noise level: N_eff / N0 of ``nn`` and ``qe_mv_pol`` per bin, and the weighted mean ratio
    N_eff(nn) / N_eff(qe_mv_pol) with its error (as the benchmark's high-noise target weighs it)."""
    summary = json.loads(Path(summary_path).read_text())
    out = []
    for j in range(len(summary["noise_p_uk_arcmin"])):
        t = noise_table(summary, j)
        edges = np.asarray(t["edges"])
        sel = (edges[:-1] >= lmin) & (edges[1:] <= lmax)
        n0 = np.asarray(t["theory"]["n0_mv_pol"])[sel]
        nn, qe = (np.asarray(t["methods"][m]["n_eff"])[sel] for m in ("nn", "qe_mv_pol"))
        ratio, err = neff_ratio(t, "nn", "qe_mv_pol")
        out.append((t["noise_p_uk_arcmin"], nn / n0, qe / n0, mean_ratio(ratio[sel], err[sel])))
    return out


def training_qe(bench, out):
    """The MV_POL QE of the bench training maps: the run folder's, else made into ``out`` with the bench
    preset's ``run.qe`` settings."""
    path = bench / "rec_qe_train.h5"
    if path.exists():
        return path
    path = out / "rec_qe_train.h5"
    if not path.exists():
        qe = yaml.safe_load((ROOT / "evaluate" / "bench.yaml").read_text())["run"]["qe"]
        run_reconstruct_qe({**qe, "estimator": "MV_POL"}, {"sims": bench / "sims_train.h5"}, path, progress=False)
    return path


def run(idea, bench, out, epochs, steps, curriculum_epochs):
    out.mkdir(parents=True, exist_ok=True)
    train_qe = training_qe(bench, out)
    for name, cfg in configs(idea, epochs, steps, curriculum_epochs).items():
        (out / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        run_dir, rec, ev = out / f"train_{name}", out / f"rec_{name}.h5", out / f"eval_{name}"
        steps_cli = [
            ["train", "--config", str(out / f"{name}.yaml"), "--sims", str(bench / "sims_train.h5"),
             "--qe", str(train_qe), "--out", str(run_dir), "--overwrite", "--quiet"],
            ["reconstruct", "--method", "nn", "--model", str(run_dir), "--sims", str(bench / "sims_test.h5"),
             "--qe", str(bench / "rec_qe_mv_pol.h5"), "--out", str(rec), "--overwrite", "--quiet"],
            ["evaluate", "--config", str(ROOT / "evaluate" / "bench.yaml"), "--sims", str(bench / "sims_test.h5"),
             "--rec", f"nn={rec}", "--rec", f"qe_mv_pol={bench / 'rec_qe_mv_pol.h5'}", "--out", str(ev),
             "--overwrite", "--quiet"],
        ]
        for argv in steps_cli:
            if main(argv) != 0:
                raise SystemExit(f"deepcmb {argv[0]} failed for the {name} run")
        for level, nn, qe, (mean, mean_err) in ratios(ev / "summary.json"):
            print(f"{name:10s} {level:g} uK': N/N0 nn {' '.join(f'{v:.3f}' for v in nn)}")
            print(f"{'':10s} {'':{len(f'{level:g}')}s}       qe {' '.join(f'{v:.3f}' for v in qe)}   "
                  f"mean nn/qe {mean:.3f} +- {mean_err:.3f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("idea", choices=IDEAS)
    ap.add_argument("--bench", type=Path, default=ROOT / "data" / "out" / "run_bench")
    ap.add_argument("--out", type=Path, help="default data/out/idea_IDEA")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--steps", type=int, default=100, help="steps per epoch")
    ap.add_argument("--curriculum-epochs", type=int, default=2, help="(curriculum) epochs at 5 uK-arcmin alone")
    a = ap.parse_args()
    run(a.idea, a.bench, a.out or ROOT / "data" / "out" / f"idea_{a.idea}", a.epochs, a.steps,
        a.curriculum_epochs)
