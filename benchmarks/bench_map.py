"""Seconds per map of the iterative MAP estimator on one core, beside the QE it starts from.

Run as::

    python benchmarks/bench_map.py [--maps 8] [--noise 1.0 5.0] [--rst docs/results/map_speed.rst]

One process, one thread (thread pools pinned before numpy loads; ducc0 ``nthreads=1``). For 64 x 64 and
128 x 128 maps of 2.34375 arcmin (1 arcmin beam) at each noise level, it simulates ``--maps`` maps and
prints, per map: the wall and CPU time of :meth:`deepcmb.iterative.MapEstimator.estimate` to convergence
(default settings), its quasi-Newton steps and conjugate-gradient iterations, the fraction of maps that
converged, and, as the baseline measured in the same run, the time of the Wiener-filtered MV_POL QE that
starts it; ``--rst`` also writes the table as reStructuredText (the documentation includes it). The
target of the benchmark: at most 2 s per 64 x 64 map.
"""

import argparse
import os
import platform
import time
from pathlib import Path


def pin_threads():
    """Cap library thread pools at one thread (effective only before numpy is imported)."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "DUCC0_NUM_THREADS"):
        os.environ[name] = "1"


def cpu_name() -> str:
    """The processor's model name (Linux), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--maps", type=int, default=8, help="maps per configuration (default 8)")
    parser.add_argument("--noise", type=float, nargs="+", default=[1.0, 5.0],
                        help="polarization noise levels, uK-arcmin (default 1 5)")
    parser.add_argument("--rst", type=Path, help="also write the table as reStructuredText here")
    args = parser.parse_args(argv)

    pin_threads()
    import numpy as np

    from deepcmb.cosmology import compute_spectra
    from deepcmb.geometry import FlatSkyGeometry
    from deepcmb.iterative import MapEstimator
    from deepcmb.sample import FlatSimulator, Instrument

    spectra = compute_spectra({})
    head = ["map", "uK-arcmin", "s/map", "cpu s/map", "QE s/map", "steps", "CG iterations", "converged"]
    rows = []
    for side in (64, 128):
        geom = FlatSkyGeometry((side, side), 2.34375)
        for noise in args.noise:
            inst = Instrument(1.0, noise / np.sqrt(2), noise)
            sim = FlatSimulator(geom, spectra, inst)
            est = MapEstimator(geom, spectra, inst)
            maps = [sim.sample(99, i, ["Q", "U"]) for i in range(args.maps)]
            walls, cpus, qes, steps, cgs, conv = [], [], [], [], [], []
            for m in maps:
                t0, c0 = time.perf_counter(), time.process_time()
                res = est.estimate(m["Q"], m["U"])
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
                t0 = time.perf_counter()
                est.start(m["Q"] + 1j * m["U"])
                qes.append(time.perf_counter() - t0)
                steps.append(res.iterations)
                cgs.append(res.cg_iterations)
                conv.append(res.converged)
            rows.append([f"{side} x {side}", f"{noise:g}", f"{np.median(walls):.2f}", f"{np.mean(cpus):.2f}",
                         f"{np.median(qes):.3f}", f"{np.mean(steps):.1f}", f"{np.mean(cgs):.0f}",
                         f"{np.mean(conv):.0%}"])
            print("  ".join(rows[-1]), flush=True)
    print("target: at most 2 s per 64 x 64 map to convergence (one core)")
    if args.rst:
        from deepcmb.results import rst_grid

        text = [f"{args.maps} maps per row, median wall time per map on one core of {cpu_name()} "
                f"(``python benchmarks/bench_map.py --rst {args.rst}``); the QE column is the Wiener-filtered "
                "MV_POL QE that starts the iterations.", "", *rst_grid(head, rows)]
        args.rst.write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
