"""Speed and exactness of the flat-sky quadratic estimators, in one run.

Run as::

    python benchmarks/bench_qe.py [--repeat 200] [--small 24]

One process, one thread (thread pools pinned before numpy loads; ducc0 ``nthreads=1``). It prints:

1. setup of the MV estimator on a 128 x 128 map of 2.34375 arcmin (1 uK-arcmin, 1 arcmin beam,
   CMB 300..3500): normalisation of all five estimators and their full 5 x 5 N0 covariance
   ("N0 for all estimators"), then the MV weights and the estimate plan;
2. the map estimate on one 128 x 128 map (T, Q, U in; kappa and phi maps out) for MV, MV_POL, EB
   and TT, in double and single precision;
3. the FFT normalisation and N0 of every estimator beside a direct (non-FFT) double sum of the same
   declarations on a small grid, with the largest relative difference (the check: it must be at
   round-off level, else the script exits with status 1).

Times are the median and the best wall time of repeated calls and the mean CPU time per call;
``cpu/wall`` < 1 flags load from other processes (the best-of and CPU times are then the better
guide).
"""

import argparse
import os
import sys
import time


def pin_threads():
    """Cap library thread pools at one thread (effective only before numpy is imported)."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "DUCC0_NUM_THREADS"):
        os.environ[name] = "1"


def timed(fn, repeat):
    """Median and best wall time per call, mean CPU time per call (ms), and cpu/wall over all calls."""
    fn()  # warm up (buffers, caches)
    walls = []
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    walls.sort()
    return 1e3 * walls[len(walls) // 2], 1e3 * walls[0], 1e3 * cpu / repeat, cpu / wall


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=200, help="calls per timing (default 200)")
    parser.add_argument("--small", type=int, default=24, help="side of the grid for the direct check")
    args = parser.parse_args(argv)

    pin_threads()
    import numpy as np

    from deepcmb.cosmology import compute_spectra
    from deepcmb.geometry import FlatSkyGeometry
    from deepcmb.qe import ESTIMATORS, QuadraticEstimator, direct, engine
    from deepcmb.qe.filtering import grid_spectra, inverse_variance_filters
    from deepcmb.sample import FlatSimulator, Instrument

    spectra = compute_spectra({})
    grad = spectra.gradient
    geom = FlatSkyGeometry((128, 128), 2.34375)
    inst = Instrument(1.0, 1.0 / np.sqrt(2.0), 1.0)
    names = list(ESTIMATORS)
    print(f"load average {os.getloadavg()[0]:.2f}; numpy {np.__version__}; one thread")

    # 1. setup ----------------------------------------------------------------------------------------
    print("\n1. setup, 128 x 128, CMB 300..3500")
    filters = inverse_variance_filters(geom, spectra.lensed, inst, 300, 3500)
    wcls, rcls = grid_spectra(geom, spectra.lensed), grid_spectra(geom, grad)
    factors = engine.FourierFactors(geom, filters, wcls, rcls)

    def all_n0():
        resp = np.stack([engine.response(factors, n) for n in names])
        cov = engine.noise_covariance(factors, names)
        return resp, cov

    med, best, cpu, load = timed(all_n0, 5)
    print(f"   normalisation + full 5x5 N0 covariance of {', '.join(names)}: "
          f"median {med:.0f} ms, best {best:.0f} ms, cpu {cpu:.0f} ms (cpu/wall {load:.2f})")
    med, best, cpu, load = timed(lambda: QuadraticEstimator(geom, spectra, inst, "MV"), 5)
    print(f"   whole MV setup (filters, N0, MV weights, plan):        "
          f"median {med:.0f} ms, best {best:.0f} ms, cpu {cpu:.0f} ms")

    # 2. estimates ------------------------------------------------------------------------------------
    print("\n2. estimate on one 128 x 128 map (kappa and phi maps out)")
    maps = FlatSimulator(geom, spectra, inst).sample(1, 0, fields=("T", "Q", "U"))
    for name in ("MV", "MV_POL", "EB", "TT"):
        for precision in ("double", "single"):
            qe = QuadraticEstimator(geom, spectra, inst, name, precision=precision)
            med, best, cpu, load = timed(lambda: qe.estimate(maps), args.repeat)
            print(f"   {name:6s} {precision:6s}: median {med:5.2f} ms, best {best:5.2f} ms, cpu {cpu:5.2f} ms "
                  f"({qe.plan.nlegs} legs; cpu/wall {load:.2f})")

    # 3. direct check ---------------------------------------------------------------------------------
    n = args.small
    small = FlatSkyGeometry((n, n), 20.0)
    print(f"\n3. FFT vs direct double sum, {n} x {n} grid of 20 arcmin (CMB 30..{int(small.ell_nyquist) - 40})")
    sfilt = inverse_variance_filters(small, spectra.lensed, Instrument(5.0, 10.0, 14.0), 30, small.ell_nyquist - 40)
    sw, sr = grid_spectra(small, spectra.lensed), grid_spectra(small, grad)
    sfac = engine.FourierFactors(small, sfilt, sw, sr)
    worst = 0.0
    for name in names:
        t0 = time.perf_counter()
        fft_r = engine.response(sfac, name)
        fft_n = engine.noise_covariance(sfac, [name])[0, 0]
        t_fft = time.perf_counter() - t0
        t0 = time.perf_counter()
        dir_r = direct.direct_response(small, sfilt, sw, sr, name)
        dir_n = direct.direct_noise(small, sfilt, sw, name, name)
        t_dir = time.perf_counter() - t0
        err_r = np.abs(fft_r - dir_r).max() / np.abs(dir_r).max()
        err_n = np.abs(fft_n - dir_n).max() / np.abs(dir_n).max()
        worst = max(worst, err_r, err_n)
        print(f"   {name}: FFT {1e3 * t_fft:6.1f} ms, direct {1e3 * t_dir:7.1f} ms; "
              f"max rel. difference response {err_r:.1e}, N0 {err_n:.1e}")
    ok = worst < 1e-10
    print(f"   check {'passed' if ok else 'FAILED'} (worst {worst:.1e})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
