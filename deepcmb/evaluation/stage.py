"""The ``deepcmb evaluate`` stage: a simulation file and its reconstructions -> report.h5 + summary.json.

For every map evaluated it measures binned spectra of the reconstructed kappa, of the true kappa and
their cross-spectrum (and the same for the unlensed E map of a network with that head), with
:mod:`deepcmb.binning` on the bins of ``evaluate.bins``, so the theory binned with
:func:`~deepcmb.binning.bin_theory` averages over exactly the same Fourier modes. Non-periodic maps
(curved-sky patches) are apodised with a cosine window W, and masked maps are evaluated over their mask
only (W the mask, per map: :mod:`deepcmb.evaluation.window`). A quadratic estimator run on windowed maps
returns about :math:`W^2 \\kappa`, so on windowed maps every kappa is brought to that footing: the true
kappa is multiplied by :math:`W^2`, a reconstruction made from unwindowed maps (a network, a QE filtered
with the mask) by :math:`W^2`, one the QE stage made from windowed maps (its ``apodize_arcmin`` attribute,
which must match) is left as it is, and the kappa spectra are divided by :math:`w_4 = \\langle W^4 \\rangle`;
the E maps are multiplied by W once and their spectra divided by :math:`w_2 = \\langle W^2 \\rangle`. The figures of merit
(:mod:`deepcmb.evaluation.metrics`) are then computed for groups of maps (all maps, each noise level,
each cosmology at each noise level), with theory curves (:mod:`deepcmb.evaluation.theory`); the
layout of the outputs is documented in :mod:`deepcmb.io.report`.

When the simulation file holds the noise-free lensed Stokes maps (``Q_lensed``, ``U_lensed``) of a
periodic patch, it also measures how much lensing B power a template built from each method's kappa
removes (:func:`per_map_delensing`, physics in :mod:`deepcmb.delensing`, figures of merit in
:func:`deepcmb.evaluation.metrics.delensing_metrics`); otherwise the report says why it was skipped.

An observation file (:mod:`deepcmb.io.observations`) has no truth: :func:`compare` then measures the
auto-spectrum of every reconstruction and the cross-spectrum of every pair of methods, with their
correlation coefficient, on the same bins and window, beside the analytic QE N0 of the file's
instrument and the fiducial C_L^kk (root attribute ``truth = False`` of the report).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..config import Bool, Int, ListOf, Number, Retired, resolve
from ..cosmology import PARAM_NAMES, compute_spectra
from ..delensing import gradient_b_template, phi_from_kappa, wiener_e_filter
from ..errors import ConfigError, InputError
from ..flatsky import gaussian_beam
from ..geometry import interp_spectrum
from ..io.files import atomic_files, check_output_folder
from ..io.reconstruction import read_n0
from ..io.report import FORMAT, FORMAT_VERSION, write_report, write_summary
from ..progress import Progress
from ..provenance import provenance_attrs
from ..qe import BAND
from ..binning import bin_centres, bin_theory, binned_fourier_power, linear_bins, mode_counts
from . import metrics
from .inputs import EvaluationInputs, read_rows
from .theory import estimator_labels, iterative_kappa_noise, qe_n0
from .window import Window

if TYPE_CHECKING:
    from ..geometry import FlatSkyGeometry

log = logging.getLogger(__name__)

_BAND_FROM_FILES = ("the CMB band of the QE N0 and of the iterative limit is that of the QE reconstructions "
                    "evaluated (run.qe of a preset), else deepcmb.qe.BAND")

SCHEMA = {
    "bins": {"Lmin": Number(100.0, min=0, doc="lowest lensing multipole of the kappa spectra"),
             "Lmax": Number(2000.0, doc="highest lensing multipole of the kappa spectra"),
             "width": Number(None, gt=0, keep_int=True,
                             doc="bin width of the kappa spectra, multipoles (null: twice the fundamental)")},
    "e_bins": {"lmin": Number(100.0, min=0, doc="lowest multipole of the unlensed-E spectra"),
               "lmax": Number(3000.0, doc="highest multipole of the unlensed-E spectra"),
               "width": Number(None, gt=0, keep_int=True,
                               doc="bin width of the unlensed-E spectra, multipoles (null: twice the fundamental)")},
    "apodize_arcmin": Number(None, min=0, keep_int=True,
                             doc="cosine taper of the window on every map, arcmin (null: 0 if periodic or masked, else 60)"),
    "snr": {"Lmax": Number(2000.0, doc="highest multipole of the cumulative S/N and the cosmology fit")},
    "theory": {"qe_estimators": ListOf(None, ["EB", "MV_POL"],
                                         doc="QE (names, or lists of names to combine) whose analytic N0 the report "
                                             "carries"),
               "iterative": Bool(True, doc="compute the iterative limit (about 10 s per noise level)"),
               "qe_lmin": Retired(_BAND_FROM_FILES), "qe_lmax": Retired(_BAND_FROM_FILES)},
    "delensing": {
        "enabled": Bool(True, doc="measure the lensing B power each method's template removes (needs Q_lensed, "
                                  "U_lensed in the simulation file)"),
        "lmin": Number(200.0, min=0, doc="lowest multipole of the B-mode bins of the delensing metric"),
        "lmax": Number(2000.0, doc="highest multipole of the B-mode bins of the delensing metric"),
        "width": Number(200.0, gt=0, keep_int=True, doc="bin width of the B-mode bins, multipoles"),
        "l_cut": Number(300.0, min=0, doc="B-mode bins starting below this multipole are checked for a spurious "
                                          "template-noise correlation"),
        "n_sigma": Number(3.0, gt=0, doc="a spurious correlation beyond this many jackknife errors is flagged"),
    },
    "examples": Int(4, min=0, doc="maps copied into the report for figures"),
    "jackknife": Int(20, min=2, doc="groups of the jackknife errors"),
}
"""The ``evaluate:`` section of a config, with its defaults (each leaf says what it is).

``theory.qe_estimators`` are the QE whose analytic N0 the report carries: read from the ``/n0`` of a
QE reconstruction of that estimator among the inputs, else computed on the CMB band of the QE
reconstructions evaluated (which must agree; without any, :data:`deepcmb.qe.BAND`), which is also
the band of the iterative limit (:func:`theory_curves`) and of the Wiener-filtered E of the delensing
templates (:func:`per_map_delensing`). ``delensing.lmin, lmax, width`` are the B-mode bins of the
delensing metric, over all of which :math:`A^{\\rm res}_{\\rm lens}` is summed.
"""

BATCH = 128
"""Maps read and transformed at once."""


def resolve_config(user: dict | None) -> dict:
    """Resolve the ``evaluate:`` section over :data:`SCHEMA` and check the values that need no geometry."""
    cfg = resolve(user, SCHEMA, prefix="evaluate.")
    estimator_labels(cfg["theory"]["qe_estimators"])
    return cfg


def make_bins(geom: FlatSkyGeometry, section: dict, lo: str, hi: str, name: str) -> dict:
    """Bin edges of a config section for a geometry; refuses empty or mode-less bins.

    Parameters
    ----------
    geom : FlatSkyGeometry
    section : dict
        ``{lo: ..., hi: ..., 'width': ...}`` (multipoles; width null: twice the fundamental).
    lo, hi : str
        Keys of the lower and upper limit (``'Lmin', 'Lmax'`` or ``'lmin', 'lmax'``).
    name : str
        Dotted config name for messages (``'evaluate.bins'``).

    Returns
    -------
    dict
        ``edges`` (nbin + 1,), ``L`` (nbin,) mode-weighted centres, ``n_modes`` (nbin,).
    """
    width = section["width"]
    if width is None:
        width = 2.0 * geom.ell_fundamental
    if not section[lo] < section[hi]:
        raise ConfigError(f"{name}: need {lo} < {hi}, got {section[lo]}, {section[hi]}")
    edges = linear_bins(section[lo], section[hi], float(width))
    if edges.size < 2:
        raise ConfigError(f"{name}: no bin of width {width:g} fits in [{section[lo]:g}, {section[hi]:g}]")
    n_modes = mode_counts(geom, edges)
    empty = np.flatnonzero(n_modes == 0)
    if empty.size:
        k = empty[0]
        raise ConfigError(f"{name}: bin [{edges[k]:g}, {edges[k + 1]:g}) holds no Fourier mode of the "
                          f"{geom.shape[0]} x {geom.shape[1]} patch (fundamental {geom.ell_fundamental:.1f}, "
                          f"Nyquist {geom.ell_nyquist:.0f}); widen {name}.width or narrow the range")
    return {"edges": edges, "L": bin_centres(geom, edges), "n_modes": n_modes}


def rec_window_powers(inp: EvaluationInputs, window: Window) -> dict[str, int]:
    """Power of the window already in each reconstruction: 2 for a QE made from maps apodised with the
    evaluation's taper, 0 for the others; a QE made with another taper, or from apodised masked maps,
    is refused."""
    powers = {}
    for label, f in inp.recs.items():
        applied = float(f.attrs.get("apodize_arcmin", 0.0))
        if applied > 0 and window.masked:
            raise ConfigError(f"{inp.rec_paths[label]}: made from maps apodised with a {applied:g}' taper; masked "
                              "maps are evaluated over their mask, with reconstructions of the whole patch")
        if applied > 0 and not np.isclose(applied, window.taper_arcmin):
            raise ConfigError(f"{inp.rec_paths[label]}: made from maps apodised with a {applied:g}' taper; "
                              f"evaluate it with evaluate.apodize_arcmin: {applied:g} (not {window.taper_arcmin:g})")
        powers[label] = 2 if applied > 0 else 0
    return powers


def _spectra(geom, fa, fb, edges, w):
    return binned_fourier_power(geom, fa, fb, edges) / w[:, None]


def per_map_spectra(inp: EvaluationInputs, bins: dict, e_bins: dict | None, window: Window,
                    progress: bool = True, powers: dict[str, int] | None = None) -> tuple[dict, dict]:
    """Binned spectra of every evaluated map, window-corrected.

    Parameters
    ----------
    inp : EvaluationInputs
    bins, e_bins : dict
        From :func:`make_bins` (``e_bins`` None when no method has an E map).
    window : Window
        Window of the evaluation: E maps are multiplied by it, kappa maps brought to ``W^2``, and the
        spectra divided by each map's :math:`\\langle W^2\\rangle` (E) or :math:`\\langle W^4\\rangle` (kappa)
        (see the module docstring and :mod:`deepcmb.evaluation.window`).
    progress : bool
    powers : dict, optional
        Label -> power of the window already in that reconstruction (:func:`rec_window_powers`;
        default 0).

    Returns
    -------
    truth : dict
        ``kappa_auto`` (n, nb) and ``E_auto`` (n, nbe) or None.
    methods : dict
        Label -> ``{'auto', 'cross'}`` (n, nb) and, for E methods, ``E_auto, E_cross, E_resid`` (n, nbe).
    """
    geom, n = inp.geom, inp.rows.size
    edges, nb = bins["edges"], len(bins["L"])
    do_e = bool(inp.e_labels)
    truth = {"kappa_auto": np.empty((n, nb)), "E_auto": np.empty((n, len(e_bins["L"]))) if do_e else None}
    methods = {label: {"auto": np.empty((n, nb)), "cross": np.empty((n, nb))} for label in inp.recs}
    for label in inp.e_labels:
        methods[label].update({k: np.empty((n, len(e_bins["L"]))) for k in ("E_auto", "E_cross", "E_resid")})

    powers = powers or {}

    with Progress(n, "evaluate", "map", enabled=progress, log=log) as bar:
        for start in range(0, n, BATCH):
            sel = slice(start, min(start + BATCH, n))
            rows = inp.rows[sel]
            w, w2, w4 = window.at(rows)

            def fourier(maps: np.ndarray, power: int = 1) -> np.ndarray:
                maps = maps.astype(np.float64)
                return geom.map2fourier(maps if w is None or power == 0 else maps * w**power)

            f_true = fourier(read_rows(inp.sims["maps/kappa"], rows), 2)
            truth["kappa_auto"][sel] = _spectra(geom, f_true, f_true, edges, w4)
            if do_e:
                fe_true = fourier(read_rows(inp.sims["maps/E_unlensed"], rows))
                truth["E_auto"][sel] = _spectra(geom, fe_true, fe_true, e_bins["edges"], w2)
            for label, f in inp.recs.items():
                pos = inp.positions[label][sel]
                fk = fourier(_finite(read_rows(f["maps/kappa"], pos), inp.rec_paths[label], "kappa", rows),
                             2 - powers.get(label, 0))
                methods[label]["auto"][sel] = _spectra(geom, fk, fk, edges, w4)
                methods[label]["cross"][sel] = _spectra(geom, fk, f_true, edges, w4)
                if label in inp.e_labels:
                    fe = fourier(_finite(read_rows(f["maps/E_unlensed"], pos), inp.rec_paths[label], "E_unlensed",
                                         rows))
                    m, e_edges = methods[label], e_bins["edges"]
                    m["E_auto"][sel] = _spectra(geom, fe, fe, e_edges, w2)
                    m["E_cross"][sel] = _spectra(geom, fe, fe_true, e_edges, w2)
                    m["E_resid"][sel] = _spectra(geom, fe - fe_true, fe - fe_true, e_edges, w2)
            bar.update(len(rows))
    return truth, methods


def per_map_coverage(inp: EvaluationInputs, bins: dict, progress: bool = True) -> dict[str, dict]:
    """Coverage of the per-map posterior of every reconstruction written with ``--uncertainty``.

    For each map: the fraction of pixels where the true kappa low-passed to the file's ``uq_lmax`` lies
    within 1 and 2 sigma of ``kappa_mean`` (sigma: ``kappa_sigma``), the same fraction over the Fourier
    modes of each bin of ``bins`` (per-mode sigma from the file's ``/uncertainty``), and the input
    score ``/meta/ood_score`` (:mod:`deepcmb.uncertainty`). The low-pass is the sharp cut on the maps'
    Fourier grid also for non-periodic patches, where the posterior (derived for periodic maps) is put
    to the test.

    Returns
    -------
    dict
        Label -> ``{'pixel_coverage': (n, 2), 'mode_coverage': (n, nb, 2), 'ood_score': (n,)}`` and the
        attributes ``uq_lmax``, ``ood_threshold``; labels without ``kappa_mean`` are absent.
    """
    from ..uncertainty.coverage import SIGMAS, lowpass, mode_coverage, pixel_coverage
    from ..uncertainty.modes import ModeCalibration

    labels = [label for label, f in inp.recs.items() if "kappa_mean" in f["maps"]]
    if not labels:
        return {}
    geom, n, nb = inp.geom, inp.rows.size, len(bins["L"])
    out, modes = {}, {}
    for label in labels:
        f = inp.recs[label]
        g = f["uncertainty"]
        modes[label] = ModeCalibration(edges=g["edges"][...], transfer=g["transfer"][...],
                                       residual=g["residual"][...], noise_p=g["noise_p"][...],
                                       n_maps=np.zeros(len(g["noise_p"]), int), lmax=float(f.attrs["uq_lmax"]),
                                       shape=geom.shape, pixel_arcmin=geom.pixel_arcmin)
        out[label] = {"pixel_coverage": np.empty((n, len(SIGMAS))), "mode_coverage": np.empty((n, nb, len(SIGMAS))),
                      "ood_score": read_rows(f["meta/ood_score"], inp.positions[label]),
                      "uq_lmax": modes[label].lmax, "ood_threshold": float(f.attrs["ood_threshold"])}
    with Progress(n, "coverage", "map", enabled=progress, log=log) as bar:
        for start in range(0, n, BATCH):
            sel = slice(start, min(start + BATCH, n))
            rows = inp.rows[sel]
            truth = read_rows(inp.sims["maps/kappa"], rows).astype(np.float64)
            for label in labels:
                f, pos, m = inp.recs[label], inp.positions[label][sel], modes[label]
                mean = read_rows(f["maps/kappa_mean"], pos).astype(np.float64)
                sigma = read_rows(f["maps/kappa_sigma"], pos).astype(np.float64)
                level = read_rows(f["meta/uq_level"], pos)
                out[label]["pixel_coverage"][sel] = pixel_coverage(lowpass(geom, truth, m.lmax), mean, sigma)
                cover = np.empty((len(rows), nb, len(SIGMAS)))
                for lev in np.unique(level):
                    i = level == lev
                    cover[i] = mode_coverage(geom, truth[i], mean[i], m.mode_variance(geom, int(lev)), bins["edges"])
                out[label]["mode_coverage"][sel] = cover
            bar.update(len(rows))
    return out


def qe_band(inp: EvaluationInputs) -> tuple[float, float]:
    """``(lmin, lmax)``: the CMB band of the QE reconstructions among the inputs (they must agree), else
    the default :data:`deepcmb.qe.BAND`."""
    bands = {(float(f.attrs["lmin"]), float(f.attrs["lmax"])): label for label, f in inp.recs.items()
             if str(f.attrs["method"]) == "qe" and "lmin" in f.attrs and "lmax" in f.attrs}
    if len(bands) > 1:
        raise InputError("QE reconstructions made with different CMB bands (" + ", ".join(
            f"{label}: {lo:g}..{hi:g}" for (lo, hi), label in bands.items()) + "); evaluate them separately")
    return next(iter(bands), (BAND["lmin"], BAND["lmax"]))


def theory_curves(th: dict, inp: EvaluationInputs, bins: dict, progress: bool = True) -> dict:
    """The report's theory curves: analytic QE N0 of each ``theory.qe_estimators`` and the iterative limit.

    The N0 of an estimator with a QE reconstruction among the inputs is that file's own (its ``/n0``,
    :func:`deepcmb.io.reconstruction.read_n0`, averaged over the modes of each bin); the others are
    computed (:func:`~deepcmb.evaluation.theory.qe_n0`) on the band of :func:`qe_band`.

    Returns
    -------
    dict
        ``n0``: label -> (n_levels, nbin) kappa N0 (sr); ``n_iterative``: (n_levels, nbin) or None.
    """
    geom, edges = inp.geom, bins["edges"]
    lmin, lmax = qe_band(inp)
    carried = {}
    for f in inp.recs.values():
        if str(f.attrs["method"]) == "qe" and "n0" in f:
            carried.setdefault(str(f.attrs["estimator"]), read_n0(f)["kappa_2d"])
    instruments, fiducial = inp.instruments(), compute_spectra({})
    n0 = {}
    for label in estimator_labels(th["qe_estimators"]):
        if label in carried:
            n0[label] = np.stack([bin_theory(geom, level, edges) for level in carried[label]])
        else:
            n0.update(qe_n0(geom, fiducial, instruments, [label], edges, lmin, lmax))
    n_iterative = iterative_kappa_noise(fiducial, instruments, bins["L"], lmin, lmax, progress) if th["iterative"] \
        else None
    return {"n0": n0, "n_iterative": n_iterative}


def delensing_skipped(cfg: dict, inp: EvaluationInputs) -> str | None:
    """Why the delensing metric is not measured on these inputs, in words; None when it is.

    Parameters
    ----------
    cfg : dict
        Resolved ``evaluate.delensing`` section.
    inp : EvaluationInputs
    """
    if not cfg["enabled"]:
        return "evaluate.delensing.enabled is false"
    if inp.sims is None:
        return "an observation file has no truth (no lensed sky to measure the residual against)"
    missing = [name for name in ("Q", "U", "Q_lensed", "U_lensed") if name not in inp.maps.fields]
    if missing:
        return f"the simulation file has no {', '.join(missing)} (add them to simulation.fields)"
    if not inp.periodic:
        return "the patch is not periodic (the templates' remapping and the E/B split need a periodic patch)"
    if inp.maps.masked:
        return "the maps are masked (the Wiener filter of the templates is that of full, white-noise maps)"
    return None


def kappa_wiener_filters(inp: EvaluationInputs, clpp: np.ndarray) -> dict[str, np.ndarray | None]:
    """The filter applied to each method's kappa before it lenses a delensing template.

    A QE reconstruction written unbiased (its ``wiener`` attribute false) is Wiener-filtered,
    :math:`W_\\mathbf{L} = C^{\\kappa\\kappa}_L / (C^{\\kappa\\kappa}_L + N^{(0)}_\\mathbf{L})`, with the
    fiducial :math:`C^{\\kappa\\kappa}_L = L^4 C^{\\phi\\phi}_L / 4` and the file's own N0 of each noise
    level (:func:`deepcmb.io.reconstruction.read_n0`), as a delensing analysis of its output would; the
    other methods (a network, a MAP, a Wiener-filtered QE) are Wiener-like already and used as they are.

    Parameters
    ----------
    inp : EvaluationInputs
    clpp : ndarray, shape (lmax + 1,)
        Fiducial :math:`C^{\\phi\\phi}_L`.

    Returns
    -------
    dict
        Label -> ``(n_levels, ny, nx // 2 + 1)`` filter on the rfft grid (zero where N0 is infinite, outside
        the QE's L band, or undefined, at a level without maps), or None.
    """
    L = inp.geom.ell()
    clkk = 0.25 * L**4 * interp_spectrum(clpp, L)
    out = {}
    for label, f in inp.recs.items():
        if str(f.attrs["method"]) != "qe" or bool(f.attrs.get("wiener", False)):
            out[label] = None
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            filt = clkk / (clkk + read_n0(f)["kappa_2d"])
        out[label] = np.where(np.isfinite(filt), filt, 0.0)
    return out


def per_map_delensing(inp: EvaluationInputs, bins: dict, band: tuple[float, float],
                      progress: bool = True) -> tuple[np.ndarray, dict, dict]:
    """Binned B-mode spectra of the delensing metric for every evaluated map (see :mod:`deepcmb.delensing`).

    For a map at noise level j: the Wiener-filtered E of its observed Q, U,
    :math:`E^{\\rm WF} = F_\\ell E^{\\rm obs}` (:func:`~deepcmb.delensing.wiener_e_filter` with the fiducial
    lensed :math:`C^{EE}`, the beam and noise of level j, on the CMB band ``band``); the true lensing B,
    those of its ``Q_lensed, U_lensed`` (the simulated unlensed B is zero: scalar spectra); the
    beam-deconvolved noise B of the data, :math:`n = B^{\\rm obs} / B_\\ell - B^{\\rm lens}`; and for each
    method the first-order template :math:`T` (:func:`~deepcmb.delensing.gradient_b_template`) lensed by
    :math:`\\hat\\phi = 2 \\hat\\kappa / L^2` of its kappa (after :func:`kappa_wiener_filters`).

    Parameters
    ----------
    inp : EvaluationInputs
        Inputs for which :func:`delensing_skipped` is None.
    bins : dict
        From :func:`make_bins` (``evaluate.delensing``).
    band : tuple of float
        ``(lmin, lmax)``: CMB multipoles of :math:`E^{\\rm WF}` (:func:`qe_band`).
    progress : bool

    Returns
    -------
    lens : ndarray, shape (n, nb)
        Per-map :math:`C^{BB}` of the true lensing B (µK² sr).
    methods : dict
        Label -> ``{'BB_res', 'TB_noise', 'TB_lens'}`` (n, nb): :math:`C^{(B-T)(B-T)}, C^{Tn}, C^{TB}`
        (µK² sr).
    wiener : dict
        Label -> whether its kappa was Wiener-filtered first (:func:`kappa_wiener_filters`).
    """
    geom, n, edges = inp.geom, inp.rows.size, bins["edges"]
    fiducial, ell = compute_spectra({}), geom.ell()
    e_filters, inv_beams = [], []
    in_bins = (ell >= edges[0]) & (ell < edges[-1])
    for inst in inp.instruments():
        e_filters.append(wiener_e_filter(geom, fiducial.lensed_cl("EE"), inst.beam_fwhm_arcmin,
                                         inst.noise_p_uk_arcmin, *band))
        beam = gaussian_beam(inst.beam_fwhm_arcmin, ell)
        inv_beams.append(np.where(in_bins, 1.0 / np.where(in_bins, beam, 1.0), 0.0))
    e_filters, inv_beams = np.stack(e_filters), np.stack(inv_beams)
    k_filters = kappa_wiener_filters(inp, fiducial.clpp)
    lens = np.empty((n, len(bins["L"])))
    methods = {label: {k: np.empty_like(lens) for k in ("BB_res", "TB_noise", "TB_lens")} for label in inp.recs}

    def read(name, rows):
        return inp.maps.read(name, rows).astype(np.float64)

    with Progress(n, "delensing", "map", enabled=progress, log=log) as bar:
        for start in range(0, n, BATCH):
            sel = slice(start, min(start + BATCH, n))
            rows, levels = inp.rows[sel], inp.noise_index[sel]
            e_obs, b_obs = geom.qu2eb(read("Q", rows), read("U", rows))
            b_lens = geom.qu2eb(read("Q_lensed", rows), read("U_lensed", rows))[1]
            e_wf = e_filters[levels] * e_obs
            noise = b_obs * inv_beams[levels] - b_lens
            lens[sel] = binned_fourier_power(geom, b_lens, b_lens, edges)
            for label, f in inp.recs.items():
                kappa = _finite(read_rows(f["maps/kappa"], inp.positions[label][sel]), inp.rec_paths[label], "kappa",
                                rows)
                fk = geom.map2fourier(kappa.astype(np.float64))
                if k_filters[label] is not None:
                    fk = fk * k_filters[label][levels]
                phi = phi_from_kappa(geom, fk)
                template = gradient_b_template(geom, e_wf, phi)
                m, resid = methods[label], b_lens - template
                m["BB_res"][sel] = binned_fourier_power(geom, resid, resid, edges)
                m["TB_noise"][sel] = binned_fourier_power(geom, template, noise, edges)
                m["TB_lens"][sel] = binned_fourier_power(geom, template, b_lens, edges)
            bar.update(len(rows))
    return lens, methods, {label: k is not None for label, k in k_filters.items()}


def _finite(maps, path, name, rows):
    bad = ~np.all(np.isfinite(maps), axis=(-2, -1))
    if bad.any():
        raise InputError(f"{path}: /maps/{name} has non-finite values (NaN or inf) for simulation row "
                         f"{int(rows[np.argmax(bad)])}")
    return maps


def map_groups(cosmology_index: np.ndarray, noise_index: np.ndarray) -> dict[str, dict]:
    """The groups of maps evaluated: ``'all'``, ``'noise<j>'``, ``'cosmo<c>_noise<j>'``.

    Returns
    -------
    dict
        Name -> ``{'index': positions (into the evaluated maps), 'cosmology_index': c or -1,
        'noise_index': j or -1}``.
    """
    out = {"all": {"index": np.arange(cosmology_index.size), "cosmology_index": -1, "noise_index": -1}}
    for j in np.unique(noise_index):
        out[f"noise{j}"] = {"index": np.flatnonzero(noise_index == j), "cosmology_index": -1, "noise_index": int(j)}
    for c, j in sorted({(int(c), int(j)) for c, j in zip(cosmology_index, noise_index)}):
        sel = np.flatnonzero((cosmology_index == c) & (noise_index == j))
        out[f"cosmo{c}_noise{j}"] = {"index": sel, "cosmology_index": c, "noise_index": j}
    return out


def _method_attrs(f, path):
    attrs = {"method": str(f.attrs["method"]), "file": str(path)}
    for key in ("estimator", "model", "wiener"):
        if key in f.attrs:
            attrs[key] = f.attrs[key]
    return attrs


def _examples(inp, k):
    rows_pos = np.arange(min(k, inp.rows.size))
    rows = inp.rows[rows_pos]
    maps = {name: inp.maps.read(name, rows) for name in ("T", "Q", "U", "kappa", "E_unlensed")
            if name in inp.maps.fields}
    methods = {}
    for label, f in inp.recs.items():
        pos = inp.positions[label][rows_pos]
        methods[label] = {name: read_rows(f["maps"][name], pos) for name in ("kappa", "E_unlensed")
                          if name in f["maps"]}
    return {"index": rows, "cosmology_index": inp.cosmology_index[rows_pos],
            "noise_index": inp.noise_index[rows_pos], "maps": maps, "methods": methods}


def evaluate(cfg: dict, inp: EvaluationInputs, progress: bool = True) -> dict:
    """Compute an evaluation in memory (everything :func:`deepcmb.io.report.write_report` writes).

    Parameters
    ----------
    cfg : dict
        Resolved ``evaluate`` config.
    inp : EvaluationInputs
        Open, checked inputs.
    progress : bool

    Returns
    -------
    dict
        ``bins``, ``e_bins``, ``meta``, ``cosmology``, ``instrument``, ``theory``, ``truth``,
        ``groups``, ``methods``, ``examples``, ``snr_last_bin``, ``window`` (:meth:`Window.summary`) and
        ``delensing``: ``{'skipped': reason}`` (:func:`delensing_skipped`) or ``{'bins', 'cmb_band',
        'l_cut', 'n_sigma'}``, with then ``truth['BB_lens']``, per method the spectra of
        :func:`per_map_delensing` in ``per_map``, those of :func:`~deepcmb.evaluation.metrics.delensing_metrics`
        in every group and the attribute ``delensing_wiener``; without truth (an observation file), those
        of :func:`compare`.
    """
    if inp.sims is None:
        return compare(cfg, inp, progress)
    geom, sims = inp.geom, inp.sims
    bins = make_bins(geom, cfg["bins"], "Lmin", "Lmax", "evaluate.bins")
    e_bins = make_bins(geom, cfg["e_bins"], "lmin", "lmax", "evaluate.e_bins") if inp.e_labels else None
    keep = bins["edges"][1:] <= cfg["snr"]["Lmax"]
    if not keep[0]:
        raise ConfigError(f"evaluate.snr.Lmax: {cfg['snr']['Lmax']:g} is below the first bin's upper edge "
                          f"{bins['edges'][1]:g}")
    window = Window(geom, inp.maps, cfg["apodize_arcmin"])
    powers = rec_window_powers(inp, window)
    dcfg = cfg["delensing"]
    skipped = delensing_skipped(dcfg, inp)
    d_bins = make_bins(geom, dcfg, "lmin", "lmax", "evaluate.delensing") if skipped is None else None
    theory = theory_curves(cfg["theory"], inp, bins, progress)
    truth, per_map = per_map_spectra(inp, bins, e_bins, window, progress, powers=powers)
    coverage = per_map_coverage(inp, bins, progress)
    for label, c in coverage.items():
        per_map[label].update({k: c[k] for k in ("pixel_coverage", "mode_coverage", "ood_score")})
    if skipped is None:
        band = qe_band(inp)
        truth["BB_lens"], d_maps, wiener = per_map_delensing(inp, d_bins, band, progress)
        for label, spectra in d_maps.items():
            per_map[label].update(spectra)
        delensing = {"bins": d_bins, "cmb_band": band, "l_cut": dcfg["l_cut"], "n_sigma": dcfg["n_sigma"]}
        checked = d_bins["edges"][:-1] < dcfg["l_cut"]
    else:
        log.info("delensing metric skipped: %s", skipped)
        delensing = {"skipped": skipped}

    clkk = np.stack([bin_theory(geom, cl, bins["edges"]) for cl in sims["cosmology/cl_kk"][...]])
    clkk_maps = clkk[inp.cosmology_index]
    groups = map_groups(inp.cosmology_index, inp.noise_index)
    for g in groups.values():
        g["clkk_theory"] = clkk_maps[g["index"]].mean(axis=0)
    methods = {}
    for label, pm in per_map.items():
        stats = {}
        for name, g in groups.items():
            i = g["index"]
            stats[name] = metrics.kappa_metrics(pm["auto"][i], pm["cross"][i], truth["kappa_auto"][i], clkk_maps[i],
                                                bins["n_modes"], keep, cfg["jackknife"])
            if label in inp.e_labels:
                stats[name].update(metrics.e_metrics(pm["E_auto"][i], pm["E_cross"][i], truth["E_auto"][i],
                                                     pm["E_resid"][i], cfg["jackknife"]))
            if label in coverage:
                stats[name].update(metrics.coverage_metrics(pm["pixel_coverage"][i], pm["mode_coverage"][i],
                                                            pm["ood_score"][i], coverage[label]["ood_threshold"]))
            if skipped is None:
                stats[name].update(metrics.delensing_metrics(truth["BB_lens"][i], pm["BB_res"][i], pm["TB_noise"][i],
                                                             pm["TB_lens"][i], checked, dcfg["n_sigma"],
                                                             cfg["jackknife"]))
        a = stats["all"]
        dependence = {int(c): metrics.cosmology_amplitude(pm["auto"][inp.cosmology_index == c], clkk[c],
                                                          a["auto_mean"], a["transfer"], a["truth_mean"],
                                                          a["clkk_theory"], keep)
                      for c in np.unique(inp.cosmology_index)}
        attrs = _method_attrs(inp.recs[label], inp.rec_paths[label])
        if label in coverage:
            attrs.update(uq_lmax=coverage[label]["uq_lmax"], ood_threshold=coverage[label]["ood_threshold"])
        if skipped is None:
            attrs["delensing_wiener"] = wiener[label]
        methods[label] = {"attrs": attrs, "per_map": pm, "groups": stats, "cosmology_dependence": dependence}

    inst = sims["instrument"]
    return {
        "bins": bins, "e_bins": e_bins, "snr_last_bin": int(np.flatnonzero(keep)[-1]),
        "window": window.summary(inp.rows),
        "meta": {"index": inp.rows, "cosmology_index": inp.cosmology_index, "noise_index": inp.noise_index},
        "cosmology": {"params": {p: sims["cosmology/params"][p][...] for p in PARAM_NAMES
                                 if p in sims["cosmology/params"]}, "clkk": clkk},
        "instrument": {"noise_p_uk_arcmin": inst["noise_p_uk_arcmin"][...],
                       "noise_t_uk_arcmin": inst["noise_t_uk_arcmin"][...],
                       "beam_fwhm_arcmin": float(inst.attrs["beam_fwhm_arcmin"])},
        "theory": theory, "truth": truth, "groups": groups, "methods": methods, "delensing": delensing,
        "examples": _examples(inp, cfg["examples"]),
    }


def compare(cfg: dict, inp: EvaluationInputs, progress: bool = True) -> dict:
    """An evaluation without truth (an observation file): the methods measured against each other.

    Every kappa map is brought to the footing of the window as in :func:`per_map_spectra`. For each
    method ``a`` it measures the per-map auto-spectrum and, for every other method ``b``, the
    cross-spectrum; the group ``'all'`` (the only one: one noise level) holds their means and scatter
    and the correlation coefficient
    :math:`r^{ab} = \\langle C^{ab}\\rangle / \\sqrt{\\langle C^{aa}\\rangle \\langle C^{bb}\\rangle}` with its
    delete-a-group jackknife error. A method's auto-spectrum minus its noise (for the QE, the analytic
    N0 of ``/theory``) estimates C_L^kk of the sky, to set beside the fiducial one.

    Parameters
    ----------
    cfg : dict
        Resolved ``evaluate`` config (``snr`` and ``e_bins`` are not used).
    inp : EvaluationInputs
        Open inputs of an observation file.
    progress : bool

    Returns
    -------
    dict
        The keys of :func:`evaluate`, with ``truth`` and ``e_bins`` None, ``delensing`` skipped, ``cosmology``
        the fiducial one,
        and per method ``per_map`` {``auto``, ``cross_<b>``} (n, nb) and ``groups['all']``
        {``auto_mean``, ``auto_std``, ``cross_<b>_mean``, ``cross_<b>_std``, ``rho_<b>``, ``rho_<b>_err``} (nb,).
    """
    from tqdm.auto import tqdm

    geom, labels = inp.geom, list(inp.recs)
    bins = make_bins(geom, cfg["bins"], "Lmin", "Lmax", "evaluate.bins")
    edges, n, nb = bins["edges"], inp.rows.size, len(bins["L"])
    window = Window(geom, inp.maps, cfg["apodize_arcmin"])
    powers = rec_window_powers(inp, window)
    theory = theory_curves(cfg["theory"], inp, bins, progress)
    spectra = {(a, b): np.empty((n, nb)) for i, a in enumerate(labels) for b in labels[i:]}
    with tqdm(total=n, desc="compare", unit="map", disable=not progress) as bar:
        for start in range(0, n, BATCH):
            sel = slice(start, min(start + BATCH, n))
            rows, fk = inp.rows[sel], {}
            w, _, w4 = window.at(rows)
            for label, f in inp.recs.items():
                maps = _finite(read_rows(f["maps/kappa"], inp.positions[label][sel]), inp.rec_paths[label], "kappa",
                               rows).astype(np.float64)
                power = 2 - powers[label]
                fk[label] = geom.map2fourier(maps if w is None or power == 0 else maps * w**power)
            for a, b in spectra:
                spectra[a, b][sel] = _spectra(geom, fk[a], fk[b], edges, w4)
            bar.update(len(rows))
    jk = metrics.jackknife_groups(n, cfg["jackknife"])
    means = {k: v.mean(axis=0) for k, v in spectra.items()}
    replicates = {k: metrics.delete_group_means(v, jk) for k, v in spectra.items()}
    methods = {}
    for a in labels:
        auto = spectra[a, a]
        per_map, stats = {"auto": auto}, {"auto_mean": means[a, a], "auto_std": np.std(auto, axis=0, ddof=1)}
        for b in labels:
            if b == a:
                continue
            key = (a, b) if (a, b) in spectra else (b, a)
            per_map[f"cross_{b}"] = spectra[key]
            stats[f"cross_{b}_mean"] = means[key]
            stats[f"cross_{b}_std"] = np.std(spectra[key], axis=0, ddof=1)
            stats[f"rho_{b}"] = metrics.cross_correlation(means[key], means[a, a], means[b, b])
            stats[f"rho_{b}_err"] = metrics.jackknife_error(metrics.cross_correlation(
                replicates[key], replicates[a, a], replicates[b, b]))
        methods[a] = {"attrs": _method_attrs(inp.recs[a], inp.rec_paths[a]), "per_map": per_map,
                      "groups": {"all": stats}}
    fiducial = compute_spectra({})
    inst = inp.maps
    instrument = {"noise_p_uk_arcmin": np.array([inst.instrument.noise_p_uk_arcmin]),
                  "beam_fwhm_arcmin": inst.instrument.beam_fwhm_arcmin}
    if inst.noise_t_uk_arcmin is not None:
        instrument["noise_t_uk_arcmin"] = np.array([inst.noise_t_uk_arcmin])
    return {
        "bins": bins, "e_bins": None, "snr_last_bin": nb - 1,
        "window": window.summary(inp.rows),
        "meta": {"index": inp.rows, "cosmology_index": inp.cosmology_index, "noise_index": inp.noise_index},
        "cosmology": {"params": {p: np.array([fiducial.params[p]]) for p in PARAM_NAMES if p in fiducial.params},
                      "clkk": bin_theory(geom, fiducial.clkk, edges)[None]},
        "instrument": instrument, "theory": theory, "truth": None,
        "groups": {"all": {"index": np.arange(n), "cosmology_index": -1, "noise_index": -1}},
        "methods": methods, "delensing": {"skipped": delensing_skipped(cfg["delensing"], inp)},
        "examples": _examples(inp, cfg["examples"]),
    }


def run_evaluate(config: dict | None, inputs: dict, out: str | Path, *, overwrite: bool = False,
                 progress: bool = True) -> Path:
    """Evaluate reconstructions of a simulation file against its truth (or, of an observation file, against
    each other: :func:`compare`).

    Parameters
    ----------
    config : dict
        The ``evaluate:`` section of a config (merged over :data:`SCHEMA`).
    inputs : dict
        ``sims``: simulation file of ``deepcmb simulate`` (the truth), or observation file
        (:mod:`deepcmb.io.observations`, no truth); ``recs``: label
        (``[A-Za-z0-9_]+``, e.g. ``'nn'``, ``'qe_eb'``) -> reconstruction file made from ``sims``. The
        rows common to all of them are evaluated.
    out : str or Path
        Output folder; receives ``report.h5`` and ``summary.json`` (layout in
        :mod:`deepcmb.io.report`).
    overwrite : bool
        Replace a report already in ``out``.
    progress : bool
        Show progress bars.

    Returns
    -------
    Path
        The output folder.
    """
    sims, recs = inputs["sims"], inputs["recs"]
    cfg = resolve_config(config)
    out = check_output_folder(out, overwrite, what="an evaluation report",
                              holds=lambda d: any((d / n).exists() for n in ("report.h5", "summary.json")))
    with EvaluationInputs(sims, recs) as inp:
        ev = evaluate(cfg, inp, progress)
        attrs = provenance_attrs({"evaluate": cfg, "sims": str(inp.sims_path),
                                  "recs": {k: str(v) for k, v in inp.rec_paths.items()}}, "evaluate")
        attrs.update(format=FORMAT, format_version=FORMAT_VERSION, sims_file=str(inp.sims_path),
                     methods=list(inp.recs), n_maps=int(inp.rows.size), shape=np.array(inp.geom.shape),
                     pixel_arcmin=inp.geom.pixel_arcmin, periodic=inp.periodic, truth=inp.sims is not None,
                     snr_Lmax=cfg["snr"]["Lmax"],
                     jackknife=cfg["jackknife"], **ev["window"])
        ev["attrs"] = attrs
    with atomic_files(out) as tmp:
        write_report(tmp / "report.h5", ev)
        write_summary(tmp / "summary.json", ev)
    return out
