"""Figures of merit of a lensing reconstruction from binned per-map spectra (pure functions, no I/O).

Every statistic is a function of band powers averaged over a set of maps, in bins ``b`` of the
lensing multipole ``L`` (spectra in sr, convergence dimensionless):

* cross-correlation coefficient
  :math:`\\rho_b = \\langle C^{\\hat\\kappa\\kappa}_b\\rangle /
  \\sqrt{\\langle C^{\\hat\\kappa\\hat\\kappa}_b\\rangle \\langle C^{\\kappa\\kappa}_b\\rangle}`;
* effective noise :math:`N^{\\rm eff}_b = C^{\\kappa\\kappa, {\\rm th}}_b (1/\\rho_b^2 - 1)`: for
  :math:`\\hat\\kappa = T\\kappa + n` it is :math:`N/T^2`, the noise of the unbiased
  :math:`\\hat\\kappa / T`, so :math:`\\rho^2 = C / (C + N^{\\rm eff})`;
* transfer function :math:`T_b = \\langle C^{\\hat\\kappa\\kappa}_b\\rangle / \\langle C^{\\kappa\\kappa}_b\\rangle`;
* signal-to-noise of the lensing amplitude measured from one map, Gaussian form:
  :math:`(S/N)_b^2 = (n_b / 2)\\, \\rho_b^4` with :math:`n_b` the Fourier modes of the bin (``l`` and
  ``-l`` counted separately, so :math:`n_b/2` independent complex modes, each contributing
  :math:`[\\partial \\ln(A C + N)/\\partial A]^2 = [C/(C+N)]^2`), accumulated as
  :math:`\\sqrt{\\sum_{b' \\le b} (S/N)_{b'}^2}`.

Delensing (:func:`delensing_metrics`; bins ``b`` of the B-mode multipole, spectra in µK² sr, see
:mod:`deepcmb.delensing`): the residual lensing-B power left by a template :math:`T`,
:math:`r_b = C^{(B-T)(B-T)}_b / C^{BB}_b` with :math:`B` the true lensing B; its sum over the bins
:math:`A^{\\rm res}_{\\rm lens} = \\sum_b C^{(B-T)(B-T)}_b / \\sum_b C^{BB}_b` (1: nothing removed,
0: everything); and the spurious correlation :math:`s_b = C^{Tn}_b / C^{TB}_b` of the template with
the beam-deconvolved noise B of the data, :math:`n = B^{\\rm obs} / B_\\ell - B`, relative to its
correlation with the lensing B (zero in expectation for a template whose lensing field does not depend
on the data's B noise).

Errors come from a delete-a-group jackknife over groups of maps: with :math:`\\theta_k` a statistic
recomputed without group :math:`k` of :math:`K`,
:math:`\\sigma^2 = \\frac{K-1}{K} \\sum_k (\\theta_k - \\bar\\theta)^2`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def cross_correlation(cross: np.ndarray, auto: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Cross-correlation coefficient
    :math:`\\rho = C^{\\hat\\kappa\\kappa} / \\sqrt{C^{\\hat\\kappa\\hat\\kappa} C^{\\kappa\\kappa}}`.

    Parameters
    ----------
    cross, auto, truth : ndarray, shape (..., nbin)
        Mean band powers (sr) of estimate x truth, estimate x estimate and truth x truth.

    Returns
    -------
    ndarray, shape (..., nbin)
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        return cross / np.sqrt(auto * truth)


def effective_noise(rho: np.ndarray, clkk: np.ndarray) -> np.ndarray:
    """Effective noise :math:`N^{\\rm eff} = C^{\\kappa\\kappa} (1/\\rho^2 - 1)` (sr), shape of ``rho``.

    Parameters
    ----------
    rho : ndarray, shape (..., nbin)
        Cross-correlation coefficient.
    clkk : ndarray, shape (..., nbin)
        Theory :math:`C_L^{\\kappa\\kappa}` binned on the same modes (sr).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        return clkk * (1.0 / rho**2 - 1.0)


def transfer_function(cross: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Transfer function :math:`T = C^{\\hat\\kappa\\kappa} / C^{\\kappa\\kappa}` (dimensionless), shape of
    ``cross``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return cross / truth


def snr_per_bin(rho: np.ndarray, n_modes: np.ndarray) -> np.ndarray:
    """Per-bin S/N of the lensing amplitude from one map, :math:`\\sqrt{n_b/2}\\, \\rho_b^2`.

    Parameters
    ----------
    rho : ndarray, shape (..., nbin)
    n_modes : ndarray, shape (nbin,)
        Fourier modes per bin, ``l`` and ``-l`` counted separately.
    """
    return np.sqrt(0.5 * np.asarray(n_modes, dtype=float)) * rho**2


def snr_cumulative(snr_bin: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Cumulative S/N :math:`\\sqrt{\\sum_{b' \\le b} (S/N)^2_{b'}}` over the bins ``keep``; NaN elsewhere.

    Parameters
    ----------
    snr_bin : ndarray, shape (..., nbin)
        Per-bin S/N (:func:`snr_per_bin`).
    keep : ndarray of bool, shape (nbin,)
        Bins counted (those below the S/N cut); must be a leading run of bins.
    """
    keep = np.asarray(keep, dtype=bool)
    total = np.sqrt(np.cumsum(np.where(keep, snr_bin**2, 0.0), axis=-1))
    return np.where(keep, total, np.nan)


def jackknife_groups(n: int, n_groups: int) -> list[np.ndarray]:
    """Split maps ``0 .. n-1`` into ``min(n_groups, n)`` contiguous groups of (nearly) equal size.

    Returns
    -------
    list of ndarray of int
    """
    return np.array_split(np.arange(n), min(int(n_groups), n))


def delete_group_means(x: np.ndarray, groups: Sequence[np.ndarray]) -> np.ndarray:
    """Means of ``x`` over all maps but one group, for each group.

    Parameters
    ----------
    x : ndarray, shape (n, ...)
        Per-map values.
    groups : list of ndarray of int
        Partition of ``0 .. n-1`` (:func:`jackknife_groups`).

    Returns
    -------
    ndarray, shape (K, ...)
        Row ``k``: the mean over the maps outside group ``k`` (NaN if there are none).
    """
    x = np.asarray(x, dtype=float)
    total, n = x.sum(axis=0), x.shape[0]
    sums = np.stack([x[g].sum(axis=0) for g in groups])
    counts = np.array([n - len(g) for g in groups], dtype=float).reshape((-1,) + (1,) * (x.ndim - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total - sums) / counts


def jackknife_error(replicates: np.ndarray) -> np.ndarray:
    """Delete-a-group jackknife standard error from the ``K`` replicates (axis 0); NaN for ``K < 2``."""
    replicates = np.asarray(replicates, dtype=float)
    k = replicates.shape[0]
    if k < 2:
        return np.full(replicates.shape[1:], np.nan)
    dev = replicates - replicates.mean(axis=0)
    return np.sqrt((k - 1) / k * np.sum(dev**2, axis=0))


def _scatter(x):
    """Standard deviation over maps (axis 0, ``ddof=1``); NaN for a single map."""
    x = np.asarray(x, dtype=float)
    if x.shape[0] < 2:
        return np.full(x.shape[1:], np.nan)
    return x.std(axis=0, ddof=1)


def kappa_statistics(auto: np.ndarray, cross: np.ndarray, truth: np.ndarray, clkk: np.ndarray, n_modes: np.ndarray,
                     keep: np.ndarray) -> dict[str, np.ndarray]:
    """rho, rho^2, effective noise, transfer and S/N from mean band powers.

    Parameters
    ----------
    auto, cross, truth : ndarray, shape (..., nbin)
        Mean :math:`C^{\\hat\\kappa\\hat\\kappa}, C^{\\hat\\kappa\\kappa}, C^{\\kappa\\kappa}` (sr).
    clkk : ndarray, shape (..., nbin)
        Mean theory :math:`C_L^{\\kappa\\kappa}` of the maps' cosmologies (sr).
    n_modes : ndarray, shape (nbin,)
        Fourier modes per bin (``l`` and ``-l`` counted separately).
    keep : ndarray of bool, shape (nbin,)
        Bins counted in the cumulative S/N.

    Returns
    -------
    dict of ndarray, shape (..., nbin)
        ``rho``, ``rho2``, ``n_eff`` (sr), ``transfer``, ``snr_per_bin``, ``snr_cumulative``.
    """
    rho = cross_correlation(cross, auto, truth)
    snr = snr_per_bin(rho, n_modes)
    return {"rho": rho, "rho2": rho**2, "n_eff": effective_noise(rho, clkk),
            "transfer": transfer_function(cross, truth), "snr_per_bin": snr,
            "snr_cumulative": snr_cumulative(snr, keep)}


def kappa_metrics(auto: np.ndarray, cross: np.ndarray, truth: np.ndarray, clkk: np.ndarray, n_modes: np.ndarray,
                  keep: np.ndarray, n_groups: int) -> dict[str, np.ndarray]:
    """Every kappa figure of merit of a set of maps, with scatter and jackknife errors.

    Parameters
    ----------
    auto, cross, truth : ndarray, shape (n, nbin)
        Per-map binned :math:`C^{\\hat\\kappa\\hat\\kappa}, C^{\\hat\\kappa\\kappa}, C^{\\kappa\\kappa}` (sr).
    clkk : ndarray, shape (n, nbin)
        Binned theory :math:`C_L^{\\kappa\\kappa}` of each map's cosmology (sr).
    n_modes : ndarray, shape (nbin,)
        Fourier modes per bin.
    keep : ndarray of bool, shape (nbin,)
        Bins counted in the cumulative S/N.
    n_groups : int
        Jackknife groups (at most one map per group when there are fewer maps).

    Returns
    -------
    dict of ndarray, shape (nbin,)
        ``auto_mean, auto_std, cross_mean, cross_std, truth_mean, truth_std, clkk_theory`` (the
        std is the scatter over maps, not the error of the mean), the statistics of
        :func:`kappa_statistics` and their jackknife errors ``rho_err, rho2_err, n_eff_err,
        transfer_err, snr_cumulative_err``.
    """
    per_map = {"auto": auto, "cross": cross, "truth": truth, "clkk": clkk}
    means = {k: np.mean(v, axis=0) for k, v in per_map.items()}
    groups = jackknife_groups(len(auto), n_groups)
    reps = {k: delete_group_means(v, groups) for k, v in per_map.items()}
    out = {f"{k}_{s}": v for k in ("auto", "cross", "truth")
           for s, v in (("mean", means[k]), ("std", _scatter(per_map[k])))}
    out["clkk_theory"] = means["clkk"]
    out.update(kappa_statistics(means["auto"], means["cross"], means["truth"], means["clkk"], n_modes, keep))
    rep_stats = kappa_statistics(reps["auto"], reps["cross"], reps["truth"], reps["clkk"], n_modes, keep)
    for name in ("rho", "rho2", "n_eff", "transfer", "snr_cumulative"):
        out[f"{name}_err"] = np.where(np.isnan(out[name]), np.nan, jackknife_error(rep_stats[name]))
    return out


def e_metrics(e_auto: np.ndarray, e_cross: np.ndarray, e_truth: np.ndarray, e_resid: np.ndarray,
              n_groups: int) -> dict[str, np.ndarray]:
    """Figures of merit of an unlensed-E estimate.

    Parameters
    ----------
    e_auto, e_cross, e_truth, e_resid : ndarray, shape (n, nbin)
        Per-map binned :math:`C^{\\hat E\\hat E}, C^{\\hat E E}, C^{EE}` and the residual power
        :math:`C^{(\\hat E - E)(\\hat E - E)}` (µK² sr).
    n_groups : int
        Jackknife groups.

    Returns
    -------
    dict of ndarray, shape (nbin,)
        ``E_rho`` (cross-correlation coefficient), ``E_rho_err`` (jackknife), ``E_resid_mean``,
        ``E_resid_std`` (scatter over maps), ``E_truth_mean``.
    """
    groups = jackknife_groups(len(e_auto), n_groups)
    rho = cross_correlation(np.mean(e_cross, axis=0), np.mean(e_auto, axis=0), np.mean(e_truth, axis=0))
    reps = cross_correlation(*(delete_group_means(x, groups) for x in (e_cross, e_auto, e_truth)))
    return {"E_rho": rho, "E_rho_err": jackknife_error(reps), "E_resid_mean": np.mean(e_resid, axis=0),
            "E_resid_std": _scatter(e_resid), "E_truth_mean": np.mean(e_truth, axis=0)}


def cosmology_amplitude(auto_c: np.ndarray, clkk_c: np.ndarray, auto_all: np.ndarray, transfer_all: np.ndarray,
                        truth_all: np.ndarray, clkk_all: np.ndarray, keep: np.ndarray) -> dict[str, float]:
    """How the reconstructed power of one cosmology's maps compares with all maps, measured and expected.

    Parameters
    ----------
    auto_c : ndarray, shape (n_c, nbin)
        Per-map :math:`C^{\\hat\\kappa\\hat\\kappa}` of the maps of cosmology ``c`` (sr).
    clkk_c : ndarray, shape (nbin,)
        Binned theory :math:`C^{\\kappa\\kappa}` of cosmology ``c`` (sr).
    auto_all, transfer_all, truth_all, clkk_all : ndarray, shape (nbin,)
        Of the pooled group of all maps: mean auto power, transfer function :math:`T`, mean truth
        power and mean theory power.
    keep : ndarray of bool, shape (nbin,)
        Bins used (below the S/N cut).

    Returns
    -------
    dict
        ``amplitude``: inverse-variance weighted mean over the bins of
        :math:`r_b = \\langle C^{\\hat\\kappa\\hat\\kappa}_b\\rangle_c /
        \\langle C^{\\hat\\kappa\\hat\\kappa}_b\\rangle_{\\rm all}`,
        weights :math:`1/\\sigma_b^2` with :math:`\\sigma_b` the error of the mean over the ``n_c``
        maps (scatter / sqrt(n_c)) divided by the pooled mean; ``amplitude_err`` =
        :math:`(\\sum_b \\sigma_b^{-2})^{-1/2}`; ``theory_amplitude``: the same weighted mean of
        :math:`(T^2 C_c + N)/(T^2 C_{\\rm all} + N)` with
        :math:`N = \\langle C^{\\hat\\kappa\\hat\\kappa}\\rangle_{\\rm all}
        - T^2 \\langle C^{\\kappa\\kappa}\\rangle_{\\rm all}`;
        ``n_maps``. NaN amplitudes when no bin has a finite, positive error (fewer than 2 maps).
    """
    auto_c = np.asarray(auto_c, dtype=float)
    n_c = auto_c.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = auto_c.mean(axis=0) / auto_all
        sigma = _scatter(auto_c) / np.sqrt(n_c) / auto_all
        noise = auto_all - transfer_all**2 * truth_all
        expected = (transfer_all**2 * clkk_c + noise) / (transfer_all**2 * clkk_all + noise)
    use = np.asarray(keep, bool) & np.isfinite(ratio) & np.isfinite(expected) & np.isfinite(sigma) & (sigma > 0)
    if not use.any():
        return {"amplitude": np.nan, "amplitude_err": np.nan, "theory_amplitude": np.nan, "n_maps": n_c}
    w = 1.0 / sigma[use] ** 2
    return {"amplitude": float(np.sum(w * ratio[use]) / w.sum()), "amplitude_err": float(1.0 / np.sqrt(w.sum())),
            "theory_amplitude": float(np.sum(w * expected[use]) / w.sum()), "n_maps": n_c}


def delensing_statistics(lens: np.ndarray, resid: np.ndarray, t_noise: np.ndarray,
                         t_lens: np.ndarray) -> dict[str, np.ndarray]:
    """Residual ratio, :math:`A^{\\rm res}_{\\rm lens}` and spurious correlation from mean band powers.

    Parameters
    ----------
    lens, resid, t_noise, t_lens : ndarray, shape (..., nbin)
        Mean :math:`C^{BB}` of the true lensing B, :math:`C^{BB}` of the residual
        :math:`B^{\\rm lens} - B^{\\rm temp}`, and the cross-spectra of the template with the noise B
        of the data and with the true lensing B (µK² sr).

    Returns
    -------
    dict of ndarray
        ``BB_res_ratio`` (..., nbin) = resid / lens; ``A_res`` (...) = sum of resid over the bins /
        sum of lens; ``spurious`` (..., nbin) = t_noise / t_lens.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"BB_res_ratio": resid / lens, "A_res": resid.sum(axis=-1) / lens.sum(axis=-1),
                "spurious": t_noise / t_lens}


def delensing_metrics(lens: np.ndarray, resid: np.ndarray, t_noise: np.ndarray, t_lens: np.ndarray,
                      checked: np.ndarray, n_sigma: float, n_groups: int) -> dict[str, np.ndarray]:
    """Every delensing figure of merit of a set of maps, with jackknife errors and the spurious-correlation flag.

    Parameters
    ----------
    lens, resid, t_noise, t_lens : ndarray, shape (n, nbin)
        Per-map binned :math:`C^{BB}` of the true lensing B, of the residual, and the cross-spectra of
        the template with the data's noise B and with the true lensing B (µK² sr); see
        :func:`delensing_statistics`.
    checked : ndarray of bool, shape (nbin,)
        Bins tested for a spurious correlation (those below the cut).
    n_sigma : float
        A bin is flagged when :math:`|{\\rm spurious}| > n_\\sigma\\, \\sigma_{\\rm jackknife}`.
    n_groups : int
        Jackknife groups.

    Returns
    -------
    dict
        ``BB_lens_mean``, ``BB_res_mean``, ``BB_res_ratio``, ``BB_res_ratio_err``, ``spurious``,
        ``spurious_err`` (nbin,); ``A_res``, ``A_res_err`` (scalars); ``spurious_flag`` (bool scalar:
        some checked bin is flagged; False when the errors are undefined, for one map).
    """
    per_map = {"lens": lens, "resid": resid, "t_noise": t_noise, "t_lens": t_lens}
    groups = jackknife_groups(len(lens), n_groups)
    stats = delensing_statistics(**{k: np.mean(v, axis=0) for k, v in per_map.items()})
    reps = delensing_statistics(**{k: delete_group_means(v, groups) for k, v in per_map.items()})
    out = {"BB_lens_mean": np.mean(lens, axis=0), "BB_res_mean": np.mean(resid, axis=0)}
    for name, value in stats.items():
        out[name], out[f"{name}_err"] = value, jackknife_error(reps[name])
    with np.errstate(invalid="ignore"):
        beyond = np.abs(out["spurious"]) > n_sigma * out["spurious_err"]
    out["spurious_flag"] = bool(np.any(beyond & np.asarray(checked, dtype=bool)))
    return out


def coverage_metrics(pixel: np.ndarray, modes: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Coverage of a group of maps' per-map posteriors (:mod:`deepcmb.uncertainty.coverage`).

    Parameters
    ----------
    pixel : ndarray, shape (n, 2)
        Per map, the fraction of pixels within 1 and 2 sigma.
    modes : ndarray, shape (n, nb, 2)
        Per map and bin, the fraction of Fourier-mode parts within 1 and 2 sigma (NaN: no mode).
    scores : ndarray, shape (n,)
        The inputs' scores (:mod:`deepcmb.uncertainty.ood`).
    threshold : float
        The score above which a map is flagged (the reconstruction file's ``ood_threshold``).

    Returns
    -------
    dict
        ``coverage_1sigma``, ``coverage_2sigma`` and their ``_err`` (scalars: mean over maps, error of the
        mean from the map scatter); ``mode_coverage_1sigma``, ``mode_coverage_2sigma`` and their ``_err``
        (nb,); ``ood_score_median`` and ``ood_outside`` (the fraction of maps above ``threshold``).
    """
    from ..uncertainty.coverage import SIGMAS, coverage_error

    out = {}
    for j, k in enumerate(SIGMAS):
        out[f"coverage_{k}sigma"] = float(pixel[:, j].mean())
        out[f"coverage_{k}sigma_err"] = float(coverage_error(pixel[:, j]))
        out[f"mode_coverage_{k}sigma"] = modes[:, :, j].mean(axis=0)
        out[f"mode_coverage_{k}sigma_err"] = coverage_error(modes[:, :, j])
    out["ood_score_median"] = float(np.median(scores))
    out["ood_outside"] = float(np.mean(scores > threshold))
    return out
