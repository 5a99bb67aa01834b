"""Speed and accuracy of the flat-sky simulator against a bicubic-remap baseline, in one run.

Run as::

    python benchmarks/bench_simulate.py [--n 200] [--shape 128] [--small 48]

One process, one thread (thread pools pinned before numpy loads; ducc0 ``nthreads=1``). It prints:

1. throughput of :class:`deepcmb.sample.FlatSimulator` making T, Q, U, phi and kappa of a 128 x 128
   map of 2.34375 arcmin pixels, beside the same simulation lensed by a bicubic-spline remap
   (``scipy.ndimage.map_coordinates``, ``order=3``, periodic ``grid-wrap``) with identical unlensed
   fields, deflection, beam and noise, and beside the bicubic remap of maps first Fourier-upsampled
   4x (the way to make bicubic as accurate as needed). The blocks of the candidates alternate, so
   the load of other processes spreads evenly; ``cpu/wall`` < 1 flags such load;
2. the lensing step alone, timed the same way;
3. accuracy of each remap against the exact Fourier-series sum (:func:`deepcmb.flatsky.lens_bruteforce`)
   on a small and on the full map;
4. NUFFT ``epsilon`` against time and error;
5. a cProfile of :meth:`FlatSimulator.sample`.
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

FIELDS = ("T", "Q", "U", "phi", "kappa")
UNLENSED = ("T_unlensed", "Q_unlensed", "U_unlensed", "phi")


def pin_threads():
    """Cap library thread pools at one thread (effective only before numpy is imported)."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "DUCC0_NUM_THREADS"):
        os.environ[name] = "1"


def time_interleaved(fns, calls, blocks=5, warmup=3):
    """Mean ms per call, best-block ms per call and cpu/wall of each ``fn(i)``, blocks alternating."""
    for fn in fns.values():
        for i in range(warmup):
            fn(i)
    edges = [round(k * calls / blocks) for k in range(blocks + 1)]
    acc = {name: [0.0, 0.0, []] for name in fns}
    for a, b in zip(edges[:-1], edges[1:]):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            for i in range(a, b):
                fn(i)
            dt = time.perf_counter() - t0
            acc[name][0] += dt
            acc[name][1] += time.process_time() - c0
            acc[name][2].append(1e3 * dt / (b - a))
    return {name: (1e3 * w / calls, min(blk), c / w) for name, (w, c, blk) in acc.items()}


def lens_bicubic(geom, maps, dy, dx, upsample=1):
    """Baseline lensing: bicubic-spline remap of real maps ``(n, ny, nx)`` to the deflected positions.

    ``upsample > 1`` first Fourier-interpolates the (band-limited) maps onto a grid that many times
    finer, which is exact, and makes the spline error much smaller at a cost in time and memory.
    """
    import numpy as np
    from scipy import ndimage

    ny, nx = geom.shape
    iy, ix = np.meshgrid(np.arange(ny, dtype=float), np.arange(nx, dtype=float), indexing="ij")
    coords = np.stack([iy + dy / geom.pixel_rad, ix + dx / geom.pixel_rad]) * upsample
    maps = np.asarray(maps, dtype=float)
    if upsample > 1:
        f = np.fft.rfft2(maps)
        big = np.zeros(maps.shape[:-2] + (upsample * ny, upsample * nx // 2 + 1), dtype=complex)
        big[..., : ny // 2, : nx // 2] = f[..., : ny // 2, : nx // 2]
        big[..., -(ny // 2):, : nx // 2] = f[..., -(ny // 2):, : nx // 2]
        maps = np.fft.irfft2(big, s=(upsample * ny, upsample * nx)) * upsample**2
    return np.stack([ndimage.map_coordinates(m, coords, order=3, mode="grid-wrap") for m in maps])


def bicubic_sample(sim, root_seed, index, upsample=1):
    """The simulator's sample with the NUFFT replaced by :func:`lens_bicubic` (same everything else)."""
    from deepcmb import flatsky
    from deepcmb.sample import observe, sample_rng

    geom = sim.geom
    s = sim.sample(root_seed, index, fields=UNLENSED + ("kappa",))
    dy, dx = flatsky.deflection(geom, geom.map2fourier(s["phi"]))
    tqu = lens_bicubic(geom, [s["T_unlensed"], s["Q_unlensed"], s["U_unlensed"]], dy, dx, upsample)
    out = observe(geom, tqu, sim.instrument, sample_rng(root_seed, index, "noise"))
    out.update(phi=s["phi"], kappa=s["kappa"])
    return out


def lensing_inputs(sim, seed):
    """Unlensed ``[T, Q + iU]``, real ``(T, Q, U)`` and the deflection of one sample."""
    import numpy as np

    from deepcmb import flatsky

    s = sim.sample(seed, 0, fields=UNLENSED)
    dy, dx = flatsky.deflection(sim.geom, sim.geom.map2fourier(s["phi"]))
    cplx = np.stack([s["T_unlensed"], s["Q_unlensed"] + 1j * s["U_unlensed"]])
    return cplx, np.stack([s["T_unlensed"], s["Q_unlensed"], s["U_unlensed"]]), dy, dx


def max_rel_error(test_tqu, ref_cplx):
    """Largest over T, Q, U of ``max|test - ref| / max|ref|``."""
    import numpy as np

    ref = np.stack([ref_cplx[0].real, ref_cplx[1].real, ref_cplx[1].imag])
    return max(np.abs(a - b).max() / np.abs(b).max() for a, b in zip(test_tqu, ref))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="sims per candidate for the throughput")
    parser.add_argument("--shape", type=int, default=128, help="map side in pixels")
    parser.add_argument("--small", type=int, default=48, help="side of the small accuracy map")
    args = parser.parse_args(argv)
    pin_threads()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import cProfile
    import pstats

    import ducc0
    import numpy as np
    import scipy

    from deepcmb import flatsky
    from deepcmb.cosmology import compute_spectra
    from deepcmb.geometry import FlatSkyGeometry
    from deepcmb.sample import FlatSimulator, Instrument

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
          f"{'%.2f %.2f %.2f' % os.getloadavg()}; python {platform.python_version()}, numpy {np.__version__}, "
          f"scipy {scipy.__version__}, ducc0 {ducc0.__version__}; one thread")
    spectra = compute_spectra({})
    inst = Instrument(1.0, 1.0 / np.sqrt(2.0), 1.0)
    geom = FlatSkyGeometry((args.shape, args.shape), 2.34375)
    sim = FlatSimulator(geom, spectra, inst)
    print(f"map {args.shape}x{args.shape} of 2.34375', fields {', '.join(FIELDS)}, NUFFT epsilon {sim.epsilon:g}")

    print("\n1. whole simulation, one core")
    res = time_interleaved({
        "NUFFT (deepcmb)": lambda i: sim.sample(0, i, fields=FIELDS),
        "bicubic remap": lambda i: bicubic_sample(sim, 0, i),
        "bicubic remap, 4x upsampled": lambda i: bicubic_sample(sim, 0, i, upsample=4),
    }, calls=args.n)
    nufft_ms = res["NUFFT (deepcmb)"][0]
    print(f"{'':30s} {'ms/sim':>8s} {'sims/s':>8s} {'best ms':>8s} {'cpu/wall':>8s} {'NUFFT speed-up':>15s}")
    for name, (mean, best, ratio) in res.items():
        print(f"{name:30s} {mean:8.2f} {1e3 / mean:8.1f} {best:8.2f} {ratio:8.2f} {mean / nufft_ms:14.2f}x")

    cplx, real, dy, dx = lensing_inputs(sim, 1)
    grid = np.fft.fft2(cplx) / np.prod(geom.shape)
    print("\n2. lensing step alone (T, Q, U of one map), one core")
    res = time_interleaved({
        "NUFFT (deepcmb)": lambda i: flatsky.lens_fourier_grid(geom, grid, dy, dx, epsilon=sim.epsilon),
        "bicubic remap": lambda i: lens_bicubic(geom, real, dy, dx),
        "bicubic remap, 4x upsampled": lambda i: lens_bicubic(geom, real, dy, dx, upsample=4),
    }, calls=max(args.n // 2, 10))
    nufft_ms = res["NUFFT (deepcmb)"][0]
    for name, (mean, best, ratio) in res.items():
        print(f"{name:30s} {mean:8.2f} ms  cpu/wall {ratio:4.2f}  NUFFT speed-up {mean / nufft_ms:6.2f}x")

    print("\n3. accuracy against the exact Fourier sum: max over T, Q, U of max|x - exact| / max|exact|")
    for side in (args.small, args.shape):
        g = FlatSkyGeometry((side, side), 2.34375)
        c, r, ddy, ddx = lensing_inputs(FlatSimulator(g, spectra, inst), 2)
        t0 = time.perf_counter()
        exact = flatsky.lens_bruteforce(g, c, ddy, ddx)
        t_exact = time.perf_counter() - t0
        nufft = flatsky.lens_nufft(g, c, ddy, ddx, epsilon=sim.epsilon)
        rows = {"NUFFT (deepcmb)": np.stack([nufft[0].real, nufft[1].real, nufft[1].imag]),
                "bicubic remap": lens_bicubic(g, r, ddy, ddx),
                "bicubic remap, 2x upsampled": lens_bicubic(g, r, ddy, ddx, upsample=2),
                "bicubic remap, 4x upsampled": lens_bicubic(g, r, ddy, ddx, upsample=4)}
        signal = max_rel_error(r, exact)
        print(f"  {side}x{side} (exact sum {t_exact:.2f} s; lensing itself changes the maps by {signal:.1e})")
        for name, tqu in rows.items():
            print(f"    {name:30s} {max_rel_error(tqu, exact):9.1e}")
        if side == args.shape:
            eps_inputs = (g, c, ddy, ddx, exact)

    print("\n4. NUFFT epsilon: time of the lensing step and its error on the full map")
    g, c, ddy, ddx, exact = eps_inputs
    grid = np.fft.fft2(c) / np.prod(g.shape)
    for eps in (1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-10):
        ms = time_interleaved({"x": lambda i: flatsky.lens_fourier_grid(g, grid, ddy, ddx, epsilon=eps)},
                              calls=30, blocks=3)["x"][1]
        out = flatsky.lens_fourier_grid(g, grid, ddy, ddx, epsilon=eps)
        err = max_rel_error(np.stack([out[0].real, out[1].real, out[1].imag]), exact)
        print(f"  epsilon {eps:7.0e}: {ms:6.2f} ms, max error {err:8.1e}")

    print("\n5. where FlatSimulator.sample spends its time (cProfile, top 8 by own time)")
    prof = cProfile.Profile()
    prof.enable()
    for i in range(50):
        sim.sample(0, i, fields=FIELDS)
    prof.disable()
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(8)


if __name__ == "__main__":
    main()
