"""The ``deepcmb reconstruct --method qe`` stage: a simulation file -> quadratic-estimator kappa maps.

Reads the observed maps of a simulation file in batches, reconstructs kappa with one
:class:`~deepcmb.qe.QuadraticEstimator` per noise level of the file (filters and N0 follow that
level's beam and noise), and writes the reconstruction layout of :mod:`deepcmb.recio` (maps
``kappa`` and ``phi``, ``(n_maps, ny, nx)`` float32, and ``/meta/noise_index``, ``(n_maps,)`` int64;
attributes estimator, estimators, lmin, lmax, Lmin, Lmax, wiener, response, mv_covariance,
apodize_arcmin, mean_field, and window_w2, window_w4 on windowed maps) plus the analytic N0 of each
level::

    /n0/edges        (nbin + 1,) float64   L bin edges
    /n0/L            (nbin,) float64       mode-weighted bin centres
    /n0/kappa        (n_levels, nbin) float64   binned analytic N0 of the kappa estimate (sr)
    /n0/kappa_2d     (n_levels, ny, nx // 2 + 1) float64  N0 on the rfft grid (inf outside the band)

The filters use the fiducial (Planck 2018) spectra, as a QE on data would. Curved-sky patches are
not periodic: they are apodised with a cosine window and a mean field is subtracted, estimated for
each map from maps of the same file and noise level in the other half of the file (odd rows for
even rows and vice versa), so no map enters its own mean field.
"""

import json

import numpy as np

from ..cosmology import compute_spectra
from ..errors import ConfigError, InputError
from ..geometry import FlatSkyGeometry
from ..h5io import check_output_path, open_sims, read_instruments
from ..recio import ReconstructionWriter
from ..spectra import bin_centres, linear_bins
from .apodization import cosine_window, window_moment
from .estimators import fields_needed, resolve
from .reconstruct import QuadraticEstimator


def estimator_settings(f):
    """Keyword arguments of :class:`~deepcmb.qe.QuadraticEstimator` that made an open QE reconstruction
    file ``f``: ``estimator, lmin, lmax, Lmin, Lmax, precision``."""
    out = {k: float(f.attrs[k]) for k in ("lmin", "lmax", "Lmin", "Lmax")}
    out.update(estimator=str(f.attrs["estimator"]), precision=json.loads(f.attrs["config"])["precision"])
    return out


def _mean_fields(f, qe, rows, need, window, n_max):
    """Mean-field maps for even and odd rows: each from up to ``n_max`` maps of the other parity."""
    out = {}
    for parity in (0, 1):
        use = rows[rows % 2 != parity][:n_max]
        if use.size == 0:
            raise InputError("qe mean field: needs maps of both parities at every noise level")
        maps = {k: f["maps"][k][np.sort(use)] for k in need}
        out[parity] = qe.mean_field(maps, window=window)
    return out


def run_reconstruct_qe(data, out, estimator="EB", lmin=300.0, lmax=3500.0, Lmin=20.0, Lmax=3500.0, wiener=False,
                       apodize_arcmin=None, mean_field_maps=64, batch_size=64, precision="single",
                       overwrite=False, progress=True):
    """Reconstruct kappa from every map of a simulation file with a quadratic estimator.

    Parameters
    ----------
    data : str or Path
        Simulation file of ``deepcmb simulate``.
    out : str or Path
        Output reconstruction file.
    estimator : str
        ``TT, TE, EE, EB, TB, MV`` (all five) or ``MV_POL`` (EE + EB); case-insensitive.
    lmin, lmax : float
        CMB multipoles used by the filters.
    Lmin, Lmax : float
        Lensing multipoles kept in the output.
    wiener : bool
        Write the Wiener-filtered kappa ``C / (C + N0) kappa_hat`` instead of the unbiased one.
    apodize_arcmin : float, optional
        Width of the cosine taper of the window; default 0 (no window) for periodic flat-sky maps and
        60 arcmin for non-periodic (curved-sky) patches, which also get a mean field subtracted.
    mean_field_maps : int
        Maps per mean-field estimate (non-periodic patches only).
    batch_size : int
        Maps read and reconstructed at once.
    precision : {'single', 'double'}
        Arithmetic of the map estimate (the stored maps are float32; single is twice as fast).
    overwrite : bool
        Replace an existing output.
    progress : bool
        Show a progress bar.

    Returns
    -------
    Path
        The written file.
    """
    label, names = resolve(estimator)
    check_output_path(out, overwrite)
    if batch_size < 1 or mean_field_maps < 1:
        raise ConfigError("--batch-size and --mean-field-maps must be positive")
    config = {"method": "qe", "estimator": label, "lmin": lmin, "lmax": lmax, "Lmin": Lmin, "Lmax": Lmax,
              "wiener": bool(wiener), "apodize_arcmin": apodize_arcmin, "mean_field_maps": mean_field_maps,
              "precision": precision, "data": str(data)}
    from tqdm.auto import tqdm

    with open_sims(data) as f:
        geom = FlatSkyGeometry(tuple(int(n) for n in f.attrs["shape"]), float(f.attrs["pixel_arcmin"]))
        need = fields_needed(names)
        missing = [k for k in need if k not in f["maps"]]
        if missing:
            raise InputError(f"{data}: the {label} estimator needs maps {', '.join(need)}; "
                             f"missing {', '.join(missing)} (add them to simulation.fields)")
        periodic = bool(f.attrs["periodic"])
        taper = (0.0 if periodic else 60.0) if apodize_arcmin is None else float(apodize_arcmin)
        window = cosine_window(geom, taper) if taper > 0 else None
        spectra = compute_spectra({})
        levels = f["meta/noise_index"][...]
        instruments = read_instruments(f)
        qes = {lev: QuadraticEstimator(geom, spectra, instruments[lev], label, lmin=lmin, lmax=lmax, Lmin=Lmin,
                                       Lmax=Lmax, precision=precision) for lev in np.unique(levels)}
        mean_fields = {}
        if not periodic:
            for lev, qe in qes.items():
                mean_fields[lev] = _mean_fields(f, qe, np.flatnonzero(levels == lev), need, window,
                                                mean_field_maps)
        n = int(f.attrs["n_maps"])
        edges = linear_bins(max(Lmin, geom.ell_fundamental), Lmax, 2.0 * geom.ell_fundamental)
        attrs = {"estimator": label, "estimators": list(qes[levels[0]].names), "lmin": lmin, "lmax": lmax,
                 "Lmin": Lmin, "Lmax": Lmax, "wiener": bool(wiener), "response": "gradient",
                 "mv_covariance": qes[levels[0]].mv_covariance, "apodize_arcmin": taper,
                 "mean_field": "half-split, from the file's own maps" if mean_fields else "none"}
        if window is not None:
            attrs.update(window_w2=window_moment(window, 2), window_w4=window_moment(window, 4))
        with ReconstructionWriter(out, np.arange(n), ["kappa", "phi"], data, "qe", config, attrs=attrs,
                                  overwrite=overwrite) as writer:
            bar = tqdm(total=n, desc=f"QE {label}", unit="map", disable=not progress)
            with bar:
                for start in range(0, n, batch_size):
                    stop = min(start + batch_size, n)
                    maps = {k: f["maps"][k][start:stop] for k in need}
                    kappa = np.empty((stop - start,) + geom.shape)
                    phi = np.empty_like(kappa)
                    rows = np.arange(start, stop)
                    for lev in np.unique(levels[start:stop]):
                        for parity in ((0, 1) if mean_fields else (None,)):
                            sel = (levels[start:stop] == lev) & ((rows % 2 == parity) if parity is not None else True)
                            if not sel.any():
                                continue
                            mf = mean_fields[lev][parity] if parity is not None else None
                            est = qes[lev].estimate({k: v[sel] for k, v in maps.items()}, window=window,
                                                    mean_field=mf, wiener=wiener)
                            kappa[sel], phi[sel] = est["kappa"], est["phi"]
                    writer.write(start, {"kappa": kappa, "phi": phi})
                    bar.update(stop - start)
            writer.write_meta("noise_index", levels)
            writer.write_group("n0", {
                "edges": edges, "L": bin_centres(geom, edges),
                "kappa": np.stack([qes[lev].n0_binned(edges) if lev in qes else np.full(len(edges) - 1, np.nan)
                                   for lev in range(len(instruments))]),
                "kappa_2d": np.stack([qes[lev].n0_kappa if lev in qes else np.full(geom.fourier_shape(), np.nan)
                                      for lev in range(len(instruments))]),
            })
    return writer.out
