"""Why the Alens marginals of the SBC run under-covered: the noise of per-band calibration gradients.

Run as::

    python benchmarks/sbc_calibration_noise.py OUT [--grid 161]

on the output folder of ``benchmarks/sbc_params.py`` (it reads only ``batch*/eval/report.h5`` and
``batch*/config.yaml``; nothing is written). For every batch, method (``qe``, ``nn``, ``map``) and
held-out cosmology it rebuilds the likelihood of ``deepcmb params`` and evaluates the exact posterior
on a ``--grid`` x ``--grid`` grid over the prior box (no sampler: a few seconds per setting), and prints
the 68 % and 95 % coverage of the Alens and As marginals (:func:`deepcmb.params.sbc.coverage`) for:

- ``per-band``: the gradients of T_b and N_b fitted band by band (``calibrate(..., degree=None)``, the
  calibration before the smoothing);
- ``smoothed``: the default, each gradient's log-response a quadratic in band index;
- ``pooled``: per-band gradients from the calibration maps of all batches together (8 x the maps for
  K = 120), the band-power covariance still the batch's own.

It also prints the precision-weighted size of what separates Alens from As at the reference,
``|g_perp|``, the part of the model's response to ln Alens orthogonal to its response to ln As
(``1 / |g_perp|`` is the error of ln Alens at fixed As): averaged over the batch calibrations, and
from the pooled one. Noise in the gradients adds to ``|g_perp|``, so a batch calibration overstates it.
"""

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import yaml

from deepcmb.params import stage
from deepcmb.params.calibration import calibrate
from deepcmb.params.emulator import build_emulator
from deepcmb.params.likelihood import build_likelihood
from deepcmb.params.report import read_report
from deepcmb.params.sbc import coverage
from deepcmb.params.schema import resolve_config

METHODS = ("qe", "nn", "map")


def load(folder):
    cfg = resolve_config(yaml.safe_load((folder / "config.yaml").read_text())["params"])
    rep = read_report(folder / "eval" / "report.h5", cfg["methods"])
    return cfg, rep, stage._plan(cfg, rep)


def calibration_maps(rep, plan, label):
    """``(auto, cross, truth)`` of each calibration cosmology, each a list of (n, nb) arrays."""
    sp = rep.methods[label]
    return tuple([a[rows, plan.bins] for rows in plan.calibration_rows] for a in (sp.auto, sp.cross, rep.truth))


def grid_ranks(lik, n_grid, truth):
    """Posterior CDF of each parameter's marginal at the truth, from the posterior on a grid."""
    axes = [np.linspace(lo, hi, n_grid) for lo, hi in zip(lik.lower, lik.upper)]
    log_p = lik(np.stack(np.meshgrid(*axes, indexing="ij"), -1))
    p = np.exp(log_p - log_p.max())
    out = []
    for i, (axis, t) in enumerate(zip(axes, truth)):
        marginal = p.sum(axis=1 - i)
        cdf = np.concatenate([[0.0], np.cumsum(marginal[1:] + marginal[:-1])])
        out.append(float(np.interp(t, axis, cdf / cdf[-1])))
    return out


def g_perp(lik, theta):
    """Precision-weighted norm of d m / d ln Alens orthogonal to d m / d ln As at ``theta``."""
    g_a, g_s = lik.model_gradient(theta)
    psi = lik.precision
    perp = g_a - (g_a @ psi @ g_s) / (g_s @ psi @ g_s) * g_s
    return float(np.sqrt(perp @ psi @ perp))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--grid", type=int, default=161, help="grid points per parameter")
    args = ap.parse_args()
    folders = sorted(args.out.glob("batch*"), key=lambda p: int(p.name[5:]))
    batches = [load(f) for f in folders]
    cfg, rep, plan = batches[0]
    names = cfg["sample"]
    edges = rep.edges[plan.bins.start:plan.bins.stop + 1]
    emulator = build_emulator(rep.geom, edges, names, plan.base, cfg["priors"], cfg["emulator_points"],
                              lmax=cfg["camb"]["lmax"], lens_potential_accuracy=cfg["camb"]["lens_potential_accuracy"],
                              progress=False)
    lower = np.array([cfg["priors"][n][0] for n in names])
    upper = np.array([cfg["priors"][n][1] for n in names])
    for label in METHODS:
        if any(label not in r.methods for _, r, _ in batches):
            continue
        maps = [calibration_maps(r, p, label) for _, r, p in batches]
        pooled = calibrate(plan.thetas, names, *([np.concatenate(x) for x in zip(*(m[q] for m in maps))]
                                                 for q in range(3)), degree=None)
        ranks = {"per-band": [], "smoothed": [], "pooled": []}
        sizes = {"per-band": [], "smoothed": [], "pooled": []}
        for (cfg_b, rep_b, plan_b), m in zip(batches, maps):
            cals = {"per-band": calibrate(plan_b.thetas, names, *m, degree=None),
                    "smoothed": calibrate(plan_b.thetas, names, *m)}
            own = cals["per-band"]
            cals["pooled"] = dataclasses.replace(pooled, auto_mean=own.auto_mean, auto_covariance=own.auto_covariance,
                                                 n_maps=own.n_maps)
            ref = own.theta_ref
            for key, cal in cals.items():
                at_ref = build_likelihood(cal.transfer_at(ref) ** 2 * emulator(ref) + cal.noise_at(ref), cal,
                                          plan_b.calibration_rows[0].size, emulator, lower, upper)
                sizes[key].append(g_perp(at_ref, ref))
                for c in plan_b.tests:
                    rows = rep_b.rows(c, cfg_b["noise_index"])
                    data = rep_b.methods[label].auto[rows, plan_b.bins].mean(0)
                    truth = [rep_b.cosmology(c)[n] for n in names]
                    lik = build_likelihood(data, cal, rows.size, emulator, lower, upper)
                    ranks[key].append(grid_ranks(lik, args.grid, truth))
        for key, r in ranks.items():
            r = np.array(r)
            cov = [coverage(r[:, i]) for i in range(len(names))]
            text = "  ".join(f"{n} {c[0.68]['rate']:.3f} / {c[0.95]['rate']:.3f}" for n, c in zip(names, cov))
            print(f"{label:4s} {key:9s} K={len(r)}  coverage 68 / 95 %: {text}  "
                  f"|g_perp| at the reference {np.mean(sizes[key]):.2f}", flush=True)


if __name__ == "__main__":
    main()
