"""Synthetic ``report.h5`` (deepcmb evaluate) and ``chains.h5`` (deepcmb params).

The report is written by :func:`deepcmb.io.report.write_report` from a synthetic evaluation; the
chains are built with h5py after the layout of :mod:`deepcmb.io.chains` (its writer needs the objects
of a params run). The numbers follow a
simple model so that the figures show physics: each method's band power is
``T^2 C_c + N`` (C_c the theory of cosmology c, T the method's transfer, N its noise), its cross
spectrum ``T C_c``, and rho, n_eff, transfer and the S/N follow from the report's definitions.
"""

import h5py
import numpy as np

from deepcmb.io.chains import FORMAT as CHAINS_FORMAT
from deepcmb.io.report import FORMAT as REPORT_FORMAT
from deepcmb.io.report import FORMAT_VERSION as REPORT_FORMAT_VERSION
from deepcmb.io.report import Report, write_report

#: Method label -> (transfer, noise as a multiple of the EB N0, QE estimator or None).
METHODS = {"nn": (0.9, 0.5, None), "nn_pretrained": (0.7, 0.6, None), "qe_eb": (1.0, 1.0, "EB"),
           "qe_mv_pol": (1.0, 0.9, "MV_POL")}


def clkk_model(L, amplitude=1.0):
    """A C_L^kk-like curve [sr]: amplitude x 2e-7 / (1 + (L/400)^1.5)."""
    return amplitude * 2e-7 / (1 + (L / 400.0) ** 1.5)


def n0_model(L, level, estimator="EB"):
    """An N0-like curve [sr] rising with L, 4x higher per noise level; MV_POL is 0.9 x EB."""
    scale = 0.9 if estimator == "MV_POL" else 1.0
    return scale * 2e-8 * 4.0 ** level * (1 + (L / 800.0) ** 2)


def _bins(lo, hi, nb, area):
    edges = np.linspace(lo, hi, nb + 1)
    L = (edges[1:] + edges[:-1]) / 2
    n_modes = np.maximum(2 * np.round(L * np.diff(edges) * area / (2 * np.pi)), 2)
    return edges, L, n_modes


def _kappa_stats(auto, cross, truth, clkk, n_modes, snr_lmax_mask):
    """Group statistics of per-map spectra (n, nb) following the report definitions."""
    n = len(auto)
    am, cm, tm = auto.mean(0), cross.mean(0), truth.mean(0)
    rho = cm / np.sqrt(am * tm)
    rho_err = np.sqrt((1 - rho ** 2) ** 2 / np.maximum(n * n_modes / 2, 1))
    snr_bin = np.sqrt(n_modes / 2) * rho ** 2
    snr_cum = np.where(snr_lmax_mask, np.sqrt(np.cumsum(np.where(snr_lmax_mask, snr_bin ** 2, 0))), np.nan)
    n_eff = clkk * (1 / rho ** 2 - 1)
    return {"auto_mean": am, "auto_std": auto.std(0), "cross_mean": cm, "cross_std": cross.std(0),
            "truth_mean": tm, "truth_std": truth.std(0), "rho": rho, "rho_err": rho_err, "rho2": rho ** 2,
            "n_eff": n_eff, "n_eff_err": 2 * clkk * rho_err / np.abs(rho) ** 3, "transfer": cm / tm,
            "transfer_err": cross.std(0) / tm / np.sqrt(n), "snr_per_bin": snr_bin, "snr_cumulative": snr_cum,
            "snr_cumulative_err": 0.05 * snr_cum}


def _e_stats(resid, truth):
    """E-head group statistics from per-map residual and truth power (n, nbe)."""
    e_rho = 1 / np.sqrt(1 + resid.mean(0) / truth.mean(0))
    return {"E_rho": e_rho, "E_rho_err": np.full_like(e_rho, 0.01), "E_resid_mean": resid.mean(0),
            "E_resid_std": resid.std(0), "E_truth_mean": truth.mean(0)}


def make_report(path, methods=("nn", "qe_eb"), e_methods=("nn",), n_levels=2, n_cosmo=3, maps_per=6,
                examples=4, shape=(32, 32), pixel_arcmin=2.34375, estimators=("EB", "MV_POL"), iterative=True,
                seed=0):
    """Write a synthetic evaluation report.

    Parameters
    ----------
    path : Path
        Output ``report.h5``.
    methods : sequence of str
        Labels from :data:`METHODS`.
    e_methods : sequence of str
        Methods with an unlensed-E head (empty: no E content at all).
    n_levels, n_cosmo, maps_per : int
        Noise levels, cosmologies (Alens = 0.8 ... 1.2) and maps per (cosmology, level).
    examples : int
        Example maps in ``/examples`` (0: none, an empty ``/examples/index``): smooth fields, plus white
        noise for a QE.
    shape, pixel_arcmin
        Map geometry.
    estimators : sequence of str
        QE estimators with an analytic N0 in ``/theory``.
    iterative : bool
        Write ``/theory/n_iterative``.
    seed : int

    Returns
    -------
    Path
    """
    rng = np.random.default_rng(seed)
    area = np.prod(shape) * np.radians(pixel_arcmin / 60) ** 2
    edges, L, n_modes = _bins(100.0, 2000.0, 10, area * 400)
    e_edges, ell, e_modes = _bins(100.0, 3000.0, 8, area * 400)
    n = n_cosmo * n_levels * maps_per
    cosmo = np.arange(n) % n_cosmo
    level = (np.arange(n) // n_cosmo) % n_levels
    alens = np.linspace(0.8, 1.2, n_cosmo) if n_cosmo > 1 else np.ones(1)
    clkk = np.stack([clkk_model(L, a) for a in alens])
    snr_mask = L <= 1500
    chi2 = rng.chisquare(np.maximum(n_modes, 2), size=(n, len(L))) / np.maximum(n_modes, 2)
    truth = clkk[cosmo] * chi2
    e_truth = 1e-5 * (ell / 1000.0) ** -2 * rng.chisquare(8, size=(n, len(ell))) / 8
    groups = {name: {"index": np.flatnonzero(sel), "cosmology_index": c, "noise_index": j}
              for name, sel, c, j in _groups(cosmo, level, n_cosmo, n_levels)}
    ev = {
        "attrs": {"format": REPORT_FORMAT, "format_version": REPORT_FORMAT_VERSION, "stage": "evaluate",
                  "sims_file": "/x/sims.h5", "methods": list(methods), "apodize_arcmin": 0.0, "window_w2": 1.0,
                  "shape": np.array(shape), "pixel_arcmin": pixel_arcmin, "periodic": True, "config": "{}",
                  "git_revision": "test"},
        "bins": {"edges": edges, "L": L, "n_modes": n_modes},
        "e_bins": {"edges": e_edges, "L": ell, "n_modes": e_modes},
        "meta": {"index": np.arange(n) * 2, "cosmology_index": cosmo, "noise_index": level},  # every other sims row
        "cosmology": {"clkk": clkk, "params": {"Alens": alens, "As": np.full(n_cosmo, 2.1e-9)}},
        "instrument": {"noise_p_uk_arcmin": np.array([1.0, 2.0, 5.0, 10.0])[:n_levels], "beam_fwhm_arcmin": 1.0},
        "theory": {"n0": {est: np.stack([n0_model(L, j, est) for j in range(n_levels)]) for est in estimators},
                   "n_iterative": np.stack([0.4 * n0_model(L, j) for j in range(n_levels)]) if iterative else None},
        "truth": {"kappa_auto": truth, "E_auto": e_truth if e_methods else None},
        "groups": groups, "methods": {}, "delensing": {"skipped": "the simulation file has no Q_lensed, U_lensed"},
    }
    for label in methods:
        t, scale, est = METHODS[label]
        attrs = {"method": "nn" if est is None else "qe", "file": f"/x/{label}.h5",
                 **({"model": "/x/model.keras"} if est is None else {"estimator": est})}
        noise = scale * n0_model(L, level[:, None])
        auto = t ** 2 * truth + noise * rng.chisquare(8, size=truth.shape) / 8
        cross = t * truth * (1 + 0.05 * rng.standard_normal(truth.shape))
        per_map = {"auto": auto, "cross": cross}
        resid = None
        if label in e_methods:
            resid = 0.1 * e_truth * (ell / 1000.0) * rng.chisquare(8, size=e_truth.shape) / 8
            per_map.update(E_auto=e_truth, E_cross=0.9 * e_truth, E_resid=resid)
        stats = {}
        for gname, g in groups.items():
            sel = g["index"]
            theory = clkk[cosmo[sel]].mean(0)
            stats[gname] = _kappa_stats(auto[sel], cross[sel], truth[sel], theory, n_modes, snr_mask)
            if resid is not None:
                stats[gname].update(_e_stats(resid[sel], e_truth[sel]))
        ev["methods"][label] = {"attrs": attrs, "per_map": per_map, "groups": stats}
    ev["examples"] = _examples(rng, examples, shape, methods, e_methods)
    write_report(path, ev)
    return path


def _groups(cosmo, level, n_cosmo, n_levels):
    """Yield (name, selection, cosmology_index, noise_index) of every statistics group."""
    yield "all", np.ones(len(cosmo), bool), -1, -1
    for j in range(n_levels):
        yield f"noise{j}", level == j, -1, j
        for c in range(n_cosmo):
            yield f"cosmo{c}_noise{j}", (level == j) & (cosmo == c), c, j


def _smooth_field(rng, k, shape, amplitude):
    white = rng.standard_normal((k,) + tuple(shape))
    ky, kx = np.meshgrid(np.fft.fftfreq(shape[0]), np.fft.fftfreq(shape[1]), indexing="ij")
    filt = np.exp(-(kx ** 2 + ky ** 2) / (2 * 0.08 ** 2))
    field = np.fft.ifft2(np.fft.fft2(white) * filt).real
    return (amplitude * field / field.std()).astype("f4")


def _examples(rng, k, shape, methods, e_methods):
    """The ``examples`` of an evaluation: smooth fields, plus white noise for a QE (none when ``k`` is 0)."""
    ex = {"index": np.arange(k) * 2, "cosmology_index": None, "noise_index": None, "maps": {}, "methods": {}}
    if not k:
        return ex
    ex["maps"]["Q"], ex["maps"]["U"] = _smooth_field(rng, k, shape, 3.0), _smooth_field(rng, k, shape, 3.0)
    kappa = _smooth_field(rng, k, shape, 0.05)
    ex["maps"]["kappa"] = kappa
    e_true = _smooth_field(rng, k, shape, 10.0)
    if e_methods:
        ex["maps"]["E_unlensed"] = e_true
    for label in methods:
        t, _, est = METHODS[label]
        rec = t * kappa + _smooth_field(rng, k, shape, 0.02)
        if est is not None:  # a QE keeps every multipole: white noise up to the pixel scale
            rec += 0.3 * rng.standard_normal(rec.shape).astype("f4")
        ex["methods"][label] = {"kappa": rec}
        if label in e_methods:
            ex["methods"][label]["E_unlensed"] = e_true + _smooth_field(rng, k, shape, 1.0)
    return ex


def make_chains(path, report, labels=("nn", "qe_eb"), cosmologies=(1, 2), steps=150, walkers=8, seed=1):
    """Write synthetic parameter chains (Alens, As) for some test cosmologies of a synthetic report.

    The posteriors are correlated Gaussians centred near the truth, clipped to the flat prior; the
    network's is narrower. QE labels also get an N0-only fit (``n0_only``) shifted up by 3 sigma in Alens.

    Returns
    -------
    Path
    """
    rng = np.random.default_rng(seed)
    lower, upper = np.array([0.3, 1.95e-9]), np.array([2.0, 2.6e-9])  # flat priors; As piles up at its lower edge
    with Report(report) as r:
        edges, L = r.edges()[:9], r.centres()[:8]
        truths = {c: np.array([r.param("Alens")[c], r.param("As")[c]]) for c in cosmologies}
    with h5py.File(path, "w") as f:
        f.attrs.update(format=CHAINS_FORMAT, format_version=1, stage="params")
        f["bins/edges"], f["bins/L"] = edges, L
        for label in labels:
            width = 0.5 if label == "nn" else 1.0
            f[f"calibration/{label}/transfer"] = np.ones(len(L))
            f[f"calibration/{label}/noise"] = n0_model(L, 0)
            for c, truth in truths.items():
                sigma = width * np.array([0.05, 0.08e-9])
                cov = np.diag(sigma ** 2)
                cov[0, 1] = cov[1, 0] = -0.6 * sigma[0] * sigma[1]
                draws = np.clip(rng.multivariate_normal(truth + 0.3 * sigma, cov, size=(steps, walkers)), lower, upper)
                g = f.create_group(f"{label}/cosmo{c}")
                g["chain"], g["log_prob"] = draws, -0.5 * rng.chisquare(2, size=(steps, walkers))
                g.attrs.update(param_names=["Alens", "As"], truth=truth, acceptance=0.4, prior_lower=lower,
                               prior_upper=upper)
                g["data"], g["covariance"], g["model_best"] = clkk_model(L), np.eye(len(L)), clkk_model(L)
                if label.startswith("qe"):  # the N0-only fit of a QE, biased high by N1
                    n0 = g.create_group("n0_only")
                    n0["chain"] = draws + np.array([3 * sigma[0], 0.0])
                    n0.attrs.update(g.attrs)
    return path
