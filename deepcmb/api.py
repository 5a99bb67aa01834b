"""The notebook API: maps in memory, the estimators on them, and their figures of merit.

Each function works on :class:`Maps`, arrays in memory with what describes them (pixel size, beam, noise
levels, the cosmology of each map when it is known); the stages (``deepcmb simulate``, ``reconstruct``,
``evaluate``) do the same work on files. The names are importable from the top level, lazily
(``import deepcmb`` imports neither Keras nor CAMB)::

    import deepcmb
    sims = deepcmb.simulate(32)                       # 32 maps of the shipped preset quick_test
    qe = deepcmb.qe(sims, "MV_POL")                   # dict: kappa, phi, n0, ...
    net = deepcmb.load_network("quick")               # a shipped network by name, or a run folder
    nn = net.predict(sims, symmetrize=True)           # dict: kappa, E_unlensed
    table = deepcmb.metrics(nn["kappa"], sims)        # rho^2, N_eff, transfer per L bin
    post = deepcmb.posterior(nn["kappa"], sims, net.calibration)  # kappa_mean, kappa_sigma, ood_score
    sims.write_observations("mine.h5")                # the observation file (deepcmb.io.observations)
    mine = deepcmb.read_maps("mine.h5")               # a simulation or observation file, into memory

Spectra are in sr, kappa dimensionless, maps in µK; arrays of maps are ``(n, ny, nx)``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import shipped
from .binning import bin_centres, bin_theory, binned_auto_spectrum, binned_cross_spectrum, linear_bins, mode_counts
from .config import load_yaml, set_value
from .errors import InputError
from .geometry import FlatSkyGeometry

if TYPE_CHECKING:
    from .cosmology import CMBSpectra
    from .sample import Instrument

__all__ = ["Maps", "Network", "load_network", "metrics", "posterior", "qe", "read_maps", "simulate"]


@dataclass
class Maps:
    """Flat-sky maps in memory, with their instrument and (when known) their cosmology.

    Attributes
    ----------
    maps : dict of str to ndarray, shape (n, ny, nx)
        Field name (:data:`deepcmb.fields.FIELDS`: ``Q``, ``U``, ``T``, truth such as ``kappa``) -> maps;
        Q and U in deepcmb's (COSMO) convention, µK.
    pixel_arcmin : float
        Pixel side, arcmin.
    instruments : list of Instrument
        Beam and white-noise depths of each noise level (one beam for all).
    noise_index : ndarray of int, shape (n,)
        Noise level of each map (index into ``instruments``).
    spectra : list of CMBSpectra
        Spectra of each cosmology of the maps; for maps of unknown cosmology, the fiducial one.
    cosmology_index : ndarray of int, shape (n,)
        Cosmology of each map (index into ``spectra``).
    periodic : bool
        Whether the maps wrap around (flat-sky simulations) or are patches with edges.
    """

    maps: dict[str, np.ndarray]
    pixel_arcmin: float
    instruments: list[Instrument]
    noise_index: np.ndarray
    spectra: list[CMBSpectra]
    cosmology_index: np.ndarray
    periodic: bool = True

    def __repr__(self) -> str:
        ny, nx = self.geometry.shape
        levels = [self.instruments[i].noise_p_uk_arcmin for i in sorted(set(self.noise_index.tolist()))]
        return (f"Maps({len(self)} maps of {ny} x {nx} pixels of {self.pixel_arcmin:g}', {', '.join(self.maps)}; "
                f"beam {self.instruments[0].beam_fwhm_arcmin:g}', noise {levels} uK-arcmin, "
                f"{len(self.spectra)} cosmologies, {'periodic' if self.periodic else 'not periodic'})")

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.maps:
            raise InputError(f"no map {name!r} (these maps hold {', '.join(self.maps)})")
        return self.maps[name]

    def __len__(self) -> int:
        return len(self.noise_index)

    @property
    def geometry(self) -> FlatSkyGeometry:
        """The flat-sky geometry of the maps."""
        ny, nx = next(iter(self.maps.values())).shape[-2:]
        return FlatSkyGeometry((ny, nx), self.pixel_arcmin)

    def write_observations(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the observed maps as an observation file (:func:`deepcmb.io.observations.write_observations`,
        COSMO convention); needs a single noise level."""
        from .io.observations import write_observations

        levels = sorted(set(self.noise_index.tolist()))
        if len(levels) != 1:
            raise InputError(f"maps of {len(levels)} noise levels: an observation file holds one; select the "
                             "maps of one level first")
        inst = self.instruments[levels[0]]
        t = self.maps.get("T")
        return write_observations(path, self["Q"], self["U"], pixel_arcmin=self.pixel_arcmin,
                                  beam_fwhm_arcmin=inst.beam_fwhm_arcmin, noise_p_uk_arcmin=inst.noise_p_uk_arcmin,
                                  periodic=self.periodic, T=t,
                                  noise_t_uk_arcmin=None if t is None else inst.noise_t_uk_arcmin,
                                  overwrite=overwrite)


def read_maps(path: str | Path, fields: Sequence[str] | None = None, rows: Sequence[int] | None = None) -> Maps:
    """Read a simulation or an observation file into memory.

    Parameters
    ----------
    path : str or Path
        A file of ``deepcmb simulate`` or an observation file (:mod:`deepcmb.io.observations`).
    fields : sequence of str, optional
        Maps to read (default: all the file has, its ``mask`` and ``ivar_p`` included).
    rows : sequence of int, optional
        Maps to read (default: all).

    Returns
    -------
    Maps
        With the spectra of each map's cosmology for a simulation file, the fiducial ones otherwise.
    """
    from .cosmology import compute_spectra
    from .io.maps import open_maps
    from .io.sims import read_spectra

    with open_maps(path) as f:
        rows = np.arange(f.n_maps) if rows is None else np.asarray(rows, np.int64)
        names = list(f.fields) + list(f.weights) if fields is None else list(fields)
        maps = {name: f.read(name, rows) for name in names}
        if f.kind == "simulations":
            n_cosmo = f.file["cosmology/cl_kk"].shape[0]
            spectra = [read_spectra(f.file, c) for c in range(n_cosmo)]
            cosmology = f.file["meta/cosmology_index"][...][rows]
        else:
            spectra, cosmology = [compute_spectra({})], np.zeros(len(rows), np.int64)
        return Maps(maps, float(f.pixel_arcmin), f.instruments(), np.asarray(f.noise_index)[rows], spectra,
                    np.asarray(cosmology, np.int64), bool(f.periodic))


def simulate(n_maps: int = 32, preset: str | Path | Mapping = "quick_test", *, workers: int = 1,
             **overrides: Any) -> Maps:
    """Simulate lensed maps with their truth, in memory.

    Parameters
    ----------
    n_maps : int
        Number of maps.
    preset : str, Path or dict
        A shipped simulation preset's name (``sims/<name>.yaml`` of :func:`deepcmb.shipped.root`), a
        YAML file, or a config (:data:`deepcmb.simulate.SCHEMA`).
    workers : int
        Worker processes.
    **overrides
        Dotted keys of the config with ``__`` for ``.``, e.g. ``instrument__noise_p_uk_arcmin=[2.0]``
        or ``seed=7``.

    Returns
    -------
    Maps
        Every field of the config's ``simulation.fields``.
    """
    from .simulate import run_simulate

    if isinstance(preset, Mapping):
        config = dict(preset)
    else:
        named = shipped.root() / "sims" / f"{preset}.yaml"
        config = load_yaml(named if named.is_file() else Path(preset))
    set_value(config, "n_maps", int(n_maps), "simulate(n_maps)")
    for key, value in overrides.items():
        set_value(config, key.replace("__", "."), value, f"simulate({key})")
    with tempfile.TemporaryDirectory(prefix="deepcmb_") as tmp:
        path = run_simulate(config, {}, Path(tmp) / "sims.h5", workers=workers, progress=False)
        return read_maps(path)


def qe(maps: Maps, estimator: str = "MV_POL", *, wiener: bool = False, **settings: Any) -> dict[str, Any]:
    """Reconstruct kappa with a flat-sky quadratic estimator (:func:`deepcmb.qe.quadratic.reconstruct_qe`).

    Parameters
    ----------
    maps : Maps
        Observed maps (``Q``, ``U``; ``T`` for the temperature estimators), periodic.
    estimator : str
        ``'TT', 'TE', 'EE', 'EB', 'TB', 'MV', 'MV_POL'``.
    wiener : bool
        Return the Wiener-filtered kappa instead of the unbiased one.
    **settings
        Further keywords of :func:`~deepcmb.qe.quadratic.reconstruct_qe` (``lmin``, ``lmax``, ``Lmin``,
        ``Lmax``: default :data:`deepcmb.qe.BAND`).

    Returns
    -------
    dict
        ``kappa`` and ``phi``, shape (n, ny, nx); ``n0`` per noise level (list of binned N0, sr) at ``L``;
        filters built for the fiducial spectra (the first of ``maps.spectra``) and each map's noise level.
    """
    from .qe.quadratic import reconstruct_qe

    if not maps.periodic:
        raise InputError("qe(): the maps are not periodic; use `deepcmb reconstruct --method qe`, which "
                         "apodises them and subtracts a mean field")
    kappa = np.empty(maps["Q"].shape)
    phi = np.empty_like(kappa)
    n0 = []
    for level in sorted(set(maps.noise_index.tolist())):
        sel = maps.noise_index == level
        out = reconstruct_qe(maps.geometry, {k: v[sel] for k, v in maps.maps.items() if k in ("T", "Q", "U")},
                             maps.spectra[0], maps.instruments[level], estimator, wiener=wiener, **settings)
        kappa[sel], phi[sel] = out["kappa"], out["phi"]
        n0.append(out["n0"])
    return {"kappa": kappa, "phi": phi, "n0": n0, "L": out["L"], "estimator": out["estimator"]}


class Network:
    """A trained network, applied to :class:`Maps` (use :func:`load_network`).

    Attributes
    ----------
    model : keras.Model
        Takes the Stokes maps of :attr:`spec` ``['inputs']`` in µK (its E/B split is a layer).
    spec : dict
        :func:`deepcmb.nn.model.model_spec` plus the model card (``card``).
    path : Path
    """

    def __init__(self, model: Any, spec: dict, path: Path):
        self.model, self.spec, self.path = model, spec, path

    def __repr__(self) -> str:
        s = self.spec
        return (f"Network({self.path.name!r}: {s['inputs']} -> {s['outputs']}, {s['shape'][0]} x {s['shape'][1]} "
                f"pixels of {s['pixel_arcmin']}', beam {s['beam_fwhm_arcmin']}', "
                f"noise {s['noise_p_uk_arcmin']} uK-arcmin)")

    @property
    def calibration(self) -> Path | None:
        """The calibration file shipped beside the network (``calibration.h5`` in its folder, made by
        ``deepcmb calibrate`` on maps of its training distribution), for :func:`posterior`; None if absent."""
        folder = self.path if self.path.is_dir() else self.path.parent
        return folder / "calibration.h5" if (folder / "calibration.h5").exists() else None

    def predict(self, maps: Maps, *, symmetrize: bool = False, batch_size: int = 32,
                edge_arcmin: float | None = None) -> dict[str, np.ndarray]:
        """The network's outputs on ``maps``.

        Parameters
        ----------
        maps : Maps
            Holding the network's inputs, at its pixel size and beam; any map size whose sides the network
            divides (a fully convolutional network is rebuilt for it, :func:`deepcmb.nn.reconstruct.at_shape`).
        symmetrize : bool
            Average over the 8 symmetries of the grid (:func:`deepcmb.nn.reconstruct.predict_symmetrized`).
        batch_size : int
        edge_arcmin : float, optional
            A network that takes a mask (:func:`deepcmb.nn.reconstruct.mask_aware`), on non-periodic maps
            without one: width of the edge taper given as their mask (default: ``deepcmb reconstruct``'s,
            :data:`deepcmb.nn.settings.RECONSTRUCT_SCHEMA`). Maps without a noise map get the white noise of
            their level (:func:`deepcmb.nn.data.uniform_weight`), periodic maps without a mask ones.

        Returns
        -------
        dict of str to ndarray, shape (n, ny, nx)
            One entry per head (``kappa``, ``E_unlensed``), physical units.
        """
        from .nn.reconstruct import at_shape, check_instrument, predict_symmetrized

        s = self.spec
        check_instrument(s, maps.pixel_arcmin, maps.instruments, "maps")
        x = np.stack(self._inputs(maps, s["inputs"], edge_arcmin), axis=-1).astype(np.float32)
        model = self.model if x.shape[1:3] == tuple(s["shape"]) else at_shape(self.model, x.shape[1:3])
        parts = {h: [] for h in s["outputs"]}
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size]
            if symmetrize:
                pred = predict_symmetrized(model, xb, s["inputs"], s["outputs"])
            else:
                pred = {h: np.asarray(p)[..., 0] for h, p in model.predict_on_batch(xb).items()}
            for h in s["outputs"]:
                parts[h].append(pred[h])
        return {h: np.concatenate(v) for h, v in parts.items()}


    @classmethod
    def _inputs(cls, maps: Maps, names: Sequence[str], edge_arcmin: float | None) -> list[np.ndarray]:
        """Input maps ``names``, as :meth:`_input` makes them; the Wiener-filtered ``E_wf``, ``B_wf``
        (:mod:`deepcmb.nn.wiener`) from the maps' Q, U, mask and noise map, filtered once for both."""
        from .fields import SURVEY_INPUTS, WIENER_INPUTS
        from .nn.wiener import WienerInputs

        filtered = None
        if any(n in WIENER_INPUTS and n not in maps.maps for n in names):
            wiener = WienerInputs.for_maps(maps.geometry, maps.instruments, maps.periodic, "maps")
            filtered = wiener(maps["Q"], maps["U"], *(cls._input(maps, k, edge_arcmin) for k in SURVEY_INPUTS))
        return [filtered[:, WIENER_INPUTS.index(n)] if n in WIENER_INPUTS and n not in maps.maps
                else cls._input(maps, n, edge_arcmin) for n in names]

    @staticmethod
    def _input(maps: Maps, name: str, edge_arcmin: float | None) -> np.ndarray:
        """Input map ``name``: the maps' own, or a survey input they lack, made as ``deepcmb reconstruct``
        makes it."""
        from .config import resolve
        from .fields import SURVEY_INPUTS
        from .nn.data import uniform_weight
        from .nn.settings import RECONSTRUCT_SCHEMA

        if name in maps.maps or name not in SURVEY_INPUTS:
            return maps[name]
        width = resolve(None, RECONSTRUCT_SCHEMA)["edge_arcmin"] if edge_arcmin is None else edge_arcmin
        depth = np.array([i.noise_p_uk_arcmin for i in maps.instruments])[maps.noise_index]
        return uniform_weight(name, maps.geometry.shape, maps.pixel_arcmin, depth, "maps",
                              0.0 if maps.periodic else width)


def load_network(model: str | Path | None = None) -> Network:
    """Load a shipped network by name (:func:`deepcmb.shipped.networks`), a run folder or a ``.keras`` file
    (default :data:`deepcmb.shipped.DEFAULT_NETWORK`), in Keras safe mode."""
    from .nn.backend import import_keras

    path = shipped.network(model)
    import_keras()  # quietly, before the network modules import it
    from .nn.reconstruct import load_network as load

    return Network(*load(path), path)


def posterior(kappa: np.ndarray, maps: Maps, calibration: str | Path) -> dict[str, np.ndarray]:
    """The calibrated posterior of the convergence low-passed to ``uq_lmax`` (:mod:`deepcmb.uncertainty`) of
    each map, from its reconstruction ``kappa``.

    Parameters
    ----------
    kappa : ndarray, shape (n, ny, nx)
        A reconstruction of ``maps`` by the method the calibration was made for (the caller vouches for it;
        ``deepcmb reconstruct --uncertainty`` checks it).
    maps : Maps
        The observed maps (``Q``, ``U``: the input score) with their noise levels, and their ``mask`` and
        ``ivar_p`` if they have them (a calibration on masked maps needs masked or non-periodic maps, and
        gives each pixel the standard deviation of its local depth, :mod:`deepcmb.uncertainty.window`).
    calibration : str or Path
        Calibration file of ``deepcmb calibrate`` (e.g. :attr:`Network.calibration` of a shipped network).

    Returns
    -------
    dict
        ``kappa_mean``, ``kappa_sigma`` (n, ny, nx), ``ood_score`` (n,; :mod:`deepcmb.uncertainty.ood`) and
        ``ood_threshold`` (float, 1: above it a map is unlike the calibration maps of every noise level).
    """
    from .io.calibration import read_calibration, read_window
    from .uncertainty.ood import THRESHOLD
    from .uncertainty.stage import check_window, posterior_maps

    _, modes, reference = read_calibration(calibration)
    window = read_window(calibration)
    geom = maps.geometry
    try:
        modes.check_geometry(geom)
    except ValueError as exc:
        raise InputError(f"{calibration}: {exc}") from None
    own = maps.maps
    masked = bool("mask" in own and np.any(own["mask"] != 1)
                  or "ivar_p" in own and np.any(own["ivar_p"] != own["ivar_p"][..., :1, :1]))
    check_window(window, masked, maps.periodic, calibration, "the maps")
    weights = {}  # the maps' own mask and noise map, or ones and their white noise (the window has the border)
    if window is not None:
        weights = {key: Network._input(maps, name, 0.0).astype(float) for key, name in (("mask", "mask"),
                                                                                         ("ivar", "ivar_p"))}
    mean = np.empty(kappa.shape)
    sigma = np.empty(kappa.shape)
    for j in np.unique(maps.noise_index):
        sel = maps.noise_index == j
        level = modes.level_of(maps.instruments[j].noise_p_uk_arcmin)
        mean[sel], sigma[sel] = posterior_maps(modes, window, geom, np.asarray(kappa, float)[sel], level,
                                               periodic=maps.periodic, **{k: w[sel] for k, w in weights.items()})
    return {"kappa_mean": mean, "kappa_sigma": sigma, "ood_score": reference.score(geom, maps["Q"], maps["U"]),
            "ood_threshold": THRESHOLD}


def metrics(kappa: np.ndarray, truth: Maps, *, Lmin: float = 150.0, Lmax: float = 1500.0,
            width: float = 150.0, jackknife: int = 10) -> dict[str, np.ndarray]:
    """Figures of merit of a kappa reconstruction against the truth (:func:`deepcmb.evaluation.metrics.kappa_metrics`).

    Parameters
    ----------
    kappa : ndarray, shape (n, ny, nx)
        Reconstructed convergence of the maps of ``truth``.
    truth : Maps
        Holding ``kappa`` (the true convergence); its spectra give the theory C_L^kk of each map.
    Lmin, Lmax, width : float
        Linear L bins.
    jackknife : int
        Jackknife groups of the errors.

    Returns
    -------
    dict of ndarray, shape (nbin,)
        ``L`` (mode-weighted bin centres), ``edges``, and ``rho2``, ``n_eff`` (sr), ``transfer``,
        ``snr_cumulative``, spectra means and their errors, as :func:`~deepcmb.evaluation.metrics.kappa_metrics`.
    """
    from .evaluation.metrics import kappa_metrics

    geom = truth.geometry
    edges = linear_bins(Lmin, Lmax, width)
    true = truth["kappa"]
    if np.shape(kappa) != true.shape:
        raise InputError(f"kappa of shape {np.shape(kappa)}, the truth is {true.shape}")
    theory = np.array([bin_theory(geom, s.clkk, edges) for s in truth.spectra])[truth.cosmology_index]
    out = kappa_metrics(binned_auto_spectrum(geom, kappa, edges), binned_cross_spectrum(geom, kappa, true, edges),
                        binned_auto_spectrum(geom, true, edges), theory, mode_counts(geom, edges),
                        np.ones(len(edges) - 1, bool), jackknife)
    return {"L": bin_centres(geom, edges), "edges": edges, **out}
