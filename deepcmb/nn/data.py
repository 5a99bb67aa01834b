"""Data pipeline of the network: splits, normalisation statistics and batches streamed from HDF5.

Maps are read batch by batch from the simulate stage's file (one chunk per map), never all at once.
Channel ``kappa_qe`` comes from a quadratic-estimator reconstruction file of the same simulations
(:mod:`deepcmb.io.reconstruction`), matched row by row through its ``/meta/index``. Channels ``mask`` and
``ivar_p`` are the file's ``/mask`` and ``/ivar_p``, or, for a file without them, ones (or an edge taper, for
non-periodic maps, when asked) and the white noise of each map's level. Channels ``E`` and ``B``
(:data:`deepcmb.fields.EB_INPUTS`) are the flat-sky E/B split of the observed ``Q`` and ``U``, made as the maps
are read: for the normalisation statistics and the input checks of a network (whose own file takes ``Q`` and
``U`` and splits them in a layer), and to feed networks saved before that layer existed. Channels ``E_wf`` and
``B_wf`` (:data:`deepcmb.fields.WIENER_INPUTS`) are the Wiener filter of ``Q``, ``U`` with the mask and the
noise map (:mod:`deepcmb.nn.wiener`), made as the maps are read: by conjugate gradients, 50 ms a 64 x 64 map,
so a training on them holds its maps in memory (``data.in_memory``), where they are filtered once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import keras
import numpy as np

from ..errors import ConfigError, InputError
from ..geometry import FlatSkyGeometry
from ..fields import EB_INPUTS, SURVEY_INPUTS, WIENER_INPUTS
from ..io.files import read_rows
from ..io.maps import open_maps
from ..io.reconstruction import estimator_settings, open_reconstruction
from ..survey import edge_window
from .augment import allowed_transforms, transform_maps

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from .onthefly import FreshBatches

SPLITS = ("train", "validation", "test")

def split_rows(n_maps: int, fractions: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    """Fixed train / validation / test rows of a file of ``n_maps`` maps.

    Parameters
    ----------
    n_maps : int
    fractions : sequence of 3 floats
        Fractions of the maps in each split (they must sum to 1).
    seed : int
        The permutation is drawn from ``SeedSequence(seed, spawn_key=(1,))``.

    Returns
    -------
    dict
        ``'train'``, ``'validation'``, ``'test'`` -> sorted int64 row arrays, disjoint, covering all rows.
    """
    fr = np.asarray(fractions, float)
    if fr.shape != (3,) or np.any(fr < 0) or abs(fr.sum() - 1.0) > 1e-6 or fr[0] <= 0 or fr[1] <= 0:
        raise ConfigError(f"data.split: expected [train, validation, test] fractions summing to 1 with "
                          f"train and validation > 0, got {list(fractions)!r}")
    perm = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,))).permutation(n_maps)
    n_train = int(round(fr[0] * n_maps))
    n_val = int(round(fr[1] * n_maps))
    if n_train < 1 or n_val < 1:
        raise ConfigError(f"data.split: {n_maps} maps leave an empty training or validation split")
    cuts = np.split(perm, [n_train, n_train + n_val])
    return {name: np.sort(rows).astype(np.int64) for name, rows in zip(SPLITS, cuts)}


@dataclass(frozen=True)
class QEFile:
    """What the network stages use of a QE reconstruction file (``--qe``), read by :func:`read_qe_file`.

    Attributes
    ----------
    path : Path
    index : ndarray of int64, shape (n,)
        Row in the simulation file of each reconstructed map (``/meta/index``).
    identity : dict
        ``path`` (absolute), ``created``, ``method``: what a training run records of the file.
    settings : dict or None
        Keyword arguments of :class:`~deepcmb.qe.QuadraticEstimator` that made the maps
        (:func:`deepcmb.io.reconstruction.estimator_settings`); None for a file without them (one not written
        by the QE stage). Read them through :meth:`estimator`.
    wiener : bool or None
        Whether the maps are Wiener-filtered (None if the file does not say).
    apodize_arcmin : float or None
        Width of the apodisation taper of the QE stage, arcmin; 0 for none (None if the file does not say).
    """

    path: Path
    index: np.ndarray
    identity: dict
    settings: dict | None
    wiener: bool | None
    apodize_arcmin: float | None

    def estimator(self) -> dict:
        """:attr:`settings`, or an :class:`~deepcmb.errors.InputError` for a file without them."""
        if self.settings is None:
            raise InputError(f"{self.path}: has no quadratic-estimator settings (estimator, filter band, Lmax); "
                             "make it with `deepcmb reconstruct --method qe`")
        return self.settings


def read_qe_file(path: str | Path, sims_path: str | Path) -> QEFile:
    """Open a QE reconstruction file of a simulation file, check it, and read what the network stages use.

    The one place in :mod:`deepcmb.nn` that opens a ``--qe`` file to check and interpret it: the
    training stage records its identity and builds the Fourier loss from its settings,
    :class:`~deepcmb.nn.onthefly.FreshBatches` copies its settings, and :class:`MapSource` matches its
    rows through the index (and later reads the ``kappa`` maps themselves, batch by batch).

    Parameters
    ----------
    path : str or Path
        Reconstruction file (:mod:`deepcmb.io.reconstruction`, ``method = 'qe'``).
    sims_path : str or Path
        The simulation file it must have been made from (:func:`deepcmb.io.reconstruction.open_reconstruction`).

    Returns
    -------
    QEFile

    Raises
    ------
    InputError
        If the file is unreadable, was made from other simulations or has no ``/maps/kappa``.
    """
    path = Path(path)
    with open_reconstruction(path, sims_path) as g:
        index = g["meta/index"][...]
        if "kappa" not in g["maps"]:
            raise InputError(f"{path}: has no /maps/kappa")
        a = g.attrs
        try:
            settings = estimator_settings(g)
        except KeyError:  # a reconstruction written without the QE stage's attributes
            settings = None
        band = {k: float(a[k]) for k in ("lmin", "lmax", "Lmin", "Lmax") if k in a}
        return QEFile(path=path, index=index,
                      identity={"path": str(path.resolve()), "created": str(a["created"]), "method": str(a["method"]),
                                "estimator": str(a["estimator"]) if "estimator" in a else None, **band},
                      settings=settings, wiener=bool(a["wiener"]) if "wiener" in a else None,
                      apodize_arcmin=float(a["apodize_arcmin"]) if "apodize_arcmin" in a else None)


class MapSource:
    """Read named maps of given rows from a simulation or observation file (and, for ``kappa_qe``, a QE file).

    Parameters
    ----------
    sims_path : str or Path
        Simulation file, or observation file (:mod:`deepcmb.io.observations`), opened with
        :func:`deepcmb.io.maps.open_maps`.
    qe_path : str or Path, optional
        Reconstruction file (``method = 'qe'``) made from ``sims_path``; provides ``kappa_qe``. Read
        by :func:`read_qe_file` into :attr:`qe` (a :class:`QEFile`, or None).
    method : str, optional
        The reconstruction method reading the maps (:func:`~deepcmb.io.maps.open_maps` refuses masked
        observations for it).
    edge_arcmin : float
        The ``mask`` of non-periodic maps stored without one: the survey edge taper of this width
        (:func:`deepcmb.survey.edge_window`); 0 (and periodic maps): ones.

    Notes
    -----
    Files are opened lazily in the process that reads them, so the object can be sent to workers.
    """

    def __init__(self, sims_path, qe_path=None, method=None, edge_arcmin=0.0):
        self.sims_path = Path(sims_path)
        with open_maps(self.sims_path, method) as f:
            self.periodic = bool(f.periodic)
            self.shape = tuple(f.shape)
            self.pixel_arcmin = f.pixel_arcmin
            self.n_maps = f.n_maps
            self.fields = list(f.fields)
            self.weights = list(f.weights)
            self.instruments = f.instruments()
            self.noise_index = f.noise_index
        self.geom = FlatSkyGeometry(self.shape, self.pixel_arcmin)
        self.edge_arcmin = 0.0 if self.periodic else float(edge_arcmin)
        self.qe = None if qe_path is None else read_qe_file(qe_path, self.sims_path)
        self._qe_pos = None
        if self.qe is not None:
            index = self.qe.index
            if index.size and (index.min() < 0 or index.max() >= self.n_maps):
                raise InputError(f"{self.qe.path}: rows outside the {self.n_maps} maps of {self.sims_path}")
            pos = np.full(self.n_maps, -1, np.int64)
            pos[index] = np.arange(index.size)
            self._qe_pos = pos
        self._files = None
        self._memory: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._wiener = None
        self._filtered: tuple[bytes, np.ndarray] | None = None  # rows and E_wf, B_wf of the last filtered rows
        self.progress = False

    def load(self, names: Iterable[str], rows: ArrayLike) -> int:
        """Read maps ``names`` at ``rows`` into memory: later :meth:`read` calls of those rows take them from
        there (a training's in-memory option). Returns the bytes held."""
        rows = np.unique(np.asarray(rows, np.int64))
        pos = np.full(self.n_maps, -1, np.int64)
        pos[rows] = np.arange(rows.size)
        for name in names:
            self._memory[name] = (self.read(name, rows), pos)
        self._filtered = None
        return sum(a.nbytes for a, _ in self._memory.values())

    def available(self) -> list[str]:
        """Names this source can read."""
        derived = list(EB_INPUTS + WIENER_INPUTS) if {"Q", "U"} <= set(self.fields) else []
        return (self.fields + derived + list(SURVEY_INPUTS)
                + (["kappa_qe"] if self._qe_pos is not None else []))

    def require(self, names: Iterable[str], what: str) -> None:
        """Raise a clear error unless every name in ``names`` can be read."""
        missing = [n for n in names if n not in self.available()]
        if missing:
            hint = " (kappa_qe needs --qe QE_RECONSTRUCTION.h5)" if "kappa_qe" in missing else ""
            raise InputError(f"{self.sims_path}: {what} {missing} not in the file (it has "
                             f"{', '.join(self.available())}){hint}")

    def _open(self):
        if self._files is None:
            self._files = {"sims": open_maps(self.sims_path)}
            if self.qe is not None:
                self._files["qe"] = h5py.File(self.qe.path, "r")
        return self._files

    def read(self, name: str, rows: ArrayLike) -> np.ndarray:
        """Maps ``name`` at ``rows`` as float32 ``(len(rows), ny, nx)``."""
        rows = np.asarray(rows, np.int64)
        if name in self._memory:
            maps, pos = self._memory[name]
            if np.all(pos[rows] >= 0):
                return maps[pos[rows]]
        files = self._open()
        if name in EB_INPUTS:
            eb = self.geom.qu2eb_maps(self.read("Q", rows), self.read("U", rows))
            return eb[EB_INPUTS.index(name)].astype(np.float32)
        if name in WIENER_INPUTS:
            return self._wiener_filtered(rows)[:, WIENER_INPUTS.index(name)]
        if name == "kappa_qe":
            pos = self._qe_pos[rows]
            if np.any(pos < 0):
                raise InputError(f"{self.qe.path}: no QE reconstruction of sims rows "
                                 f"{rows[pos < 0][:5].tolist()}")
            return read_rows(files["qe"]["maps/kappa"], pos)
        if name in SURVEY_INPUTS and name not in self.weights:
            depth = np.array([i.noise_p_uk_arcmin for i in self.instruments])[self.noise_index[rows]]
            return uniform_weight(name, self.shape, self.pixel_arcmin, depth, self.sims_path, self.edge_arcmin)
        return files["sims"].read(name, rows)

    def _wiener_filtered(self, rows: np.ndarray) -> np.ndarray:
        """``E_wf`` and ``B_wf`` of ``rows``, ``(n, 2, ny, nx)``; those of the last rows asked are kept, so
        that reading both channels filters once."""
        key = rows.tobytes()
        if self._filtered is None or self._filtered[0] != key:
            if self._wiener is None:
                from .wiener import WienerInputs

                self._wiener = WienerInputs.for_maps(self.geom, self.instruments, self.periodic, str(self.sims_path))
            maps = [self.read(n, rows) for n in ("Q", "U", *SURVEY_INPUTS)]
            self._filtered = (key, self._wiener(*maps, progress=self.progress and len(rows) > 64))
        return self._filtered[1]

    def close(self) -> None:
        if self._files:
            for f in self._files.values():
                f.close()
        self._files = None

    def __getstate__(self):
        return {**self.__dict__, "_files": None, "_filtered": None}


def uniform_weight(name: str, shape: tuple[int, int], pixel_arcmin: float, depth: ArrayLike,
                   where: str | Path, edge_arcmin: float = 0.0) -> np.ndarray:
    """The survey input ``name`` of maps stored without it: the mask, all ones (or the survey edge taper of
    ``edge_arcmin``), or the noise map of white noise,
    :math:`\\mathrm{ivar}_P = (\\theta_{pix} / \\Delta_P)^2` (1/µK², :mod:`deepcmb.survey`).

    Parameters
    ----------
    name : {'mask', 'ivar_p'}
    shape : tuple of int
        ``(ny, nx)`` of the maps.
    pixel_arcmin : float
    depth : array_like, shape (n,)
        Polarization noise level of each map, µK-arcmin.
    where : str or Path
        The maps' file, for the message.
    edge_arcmin : float
        Width of the cosine taper along the border given as the mask (:func:`deepcmb.survey.edge_window`;
        for non-periodic maps); 0: ones.

    Returns
    -------
    ndarray, shape (n, ny, nx), float32

    Raises
    ------
    InputError
        For ``ivar_p`` of noise-free maps (infinite).
    """
    depth = np.asarray(depth, np.float64)
    out = np.ones((depth.size,) + tuple(shape), np.float32)
    if name == "mask":
        return out * edge_window(FlatSkyGeometry(tuple(shape), pixel_arcmin), edge_arcmin).astype(np.float32)
    if np.any(depth <= 0):
        raise InputError(f"{where}: noise-free maps have no noise map (ivar_p) to give a network that takes one")
    return out * ((pixel_arcmin / depth) ** 2).astype(np.float32)[:, None, None]


def channel_stats(source: MapSource, names: Iterable[str], rows: np.ndarray,
                  batch: int = 64) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation of each named map over ``rows`` (float64 accumulation).

    Returns
    -------
    dict
        name -> ``(mean, std)``.
    """
    names = list(names)
    if not names:
        return {}
    sums = {name: [0.0, 0.0] for name in names}
    count = 0
    for start in range(0, len(rows), batch):  # batches outside, channels inside: E_wf and B_wf filter once
        for name in names:
            with np.errstate(invalid="ignore"):  # signalling NaNs of a damaged file: refused just below
                m = source.read(name, rows[start:start + batch]).astype(np.float64)
            bad = ~np.isfinite(m)
            if bad.any():
                row = rows[start + np.argwhere(bad)[0][0]]
                raise InputError(f"{source.sims_path}: non-finite values in map {name!r} row {row}")
            sums[name][0] += m.sum()
            sums[name][1] += np.square(m).sum()
        count += m.size
    out = {}
    for name, (s, s2) in sums.items():
        mean = s / count
        std = float(np.sqrt(max(s2 / count - mean**2, 0.0)))
        if not std > 0:
            raise InputError(f"{source.sims_path}: map {name!r} is constant over the training rows; "
                             "it cannot be normalised")
        out[name] = (float(mean), std)
    return out


class SimsBatches(keras.utils.PyDataset):
    """Batches ``(x, {head: y})`` streamed from a simulation file, in physical units.

    Parameters
    ----------
    source : MapSource
    rows : array of int
        Rows of the split.
    inputs, outputs : list of str
        Input channels (stacked last, in order) and output heads.
    batch_size : int
    seed : int
        Root of the shuffling and augmentation streams: epoch ``e`` shuffles with
        ``SeedSequence(seed, spawn_key=(2, e))`` and batch ``b`` of it augments with
        ``SeedSequence(seed, spawn_key=(3, e, b))``.
    shuffle, augment : bool
        Reshuffle every epoch; apply a random symmetry (:mod:`deepcmb.nn.augment`) to each sample.
    drop_remainder : bool
        Drop the last incomplete batch (training) or keep it (validation, prediction).
    max_batches : int, optional
        Cap on the batches per epoch.
    endless : bool
        Training mode: an endless stream (``num_batches`` is None; use ``steps_per_epoch = len(self)``
        in ``fit``) whose item ``i`` is batch ``(offset + i) % len(self)`` of epoch
        ``(offset + i) // len(self)``. The content of every batch is thus fixed by its global position,
        whatever the prefetching, and a run resumed at epoch ``e`` with ``offset = e * len(self)``
        sees exactly the batches of an uninterrupted run.
    **kwargs
        ``workers``, ``use_multiprocessing``, ``max_queue_size`` of :class:`keras.utils.PyDataset`.

    Notes
    -----
    A non-finite value raises :class:`~deepcmb.errors.InputError` naming the field, the row and the
    batch; the error is also kept in :attr:`error`, because a backend may wrap exceptions raised in
    the data pipeline.
    """

    row_label = "sims rows"
    """What :meth:`batch_rows` returns, for messages."""

    def __init__(self, source, rows, inputs, outputs, batch_size, seed=0, shuffle=False, augment=False,
                 drop_remainder=False, max_batches=None, endless=False, split="data", **kwargs):
        super().__init__(**kwargs)
        self.source, self.rows = source, np.asarray(rows, np.int64)
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.shuffle, self.augment, self.drop_remainder = shuffle, augment, drop_remainder
        self.endless, self.offset = endless, 0
        self.split = split
        self.error = None
        n = len(self.rows) // self.batch_size if drop_remainder else -(-len(self.rows) // self.batch_size)
        if n < 1:
            raise ConfigError(f"training.batch_size: {self.batch_size} is larger than the {split} split "
                              f"({len(self.rows)} maps)")
        self.n_batches = n if max_batches is None else min(n, int(max_batches))
        self.transforms = allowed_transforms(source.shape)

    def __len__(self):
        return self.n_batches

    @property
    def num_batches(self) -> int | None:
        return None if self.endless else self.n_batches

    def position(self, i: int) -> tuple[int, int]:
        """``(epoch, batch)`` of item ``i``."""
        if self.endless:
            return divmod(self.offset + i, self.n_batches)
        return 0, i

    def batch_rows(self, epoch: int, batch: int) -> np.ndarray:
        """Rows of ``batch`` in ``epoch``."""
        order = self.rows
        if self.shuffle:
            rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(2, epoch)))
            order = self.rows[rng.permutation(len(self.rows))]
        return order[batch * self.batch_size:(batch + 1) * self.batch_size]

    def load(self, i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(rows, maps)`` of item ``i``: maps is field -> ``(b, ny, nx)`` float32, augmented."""
        epoch, batch = self.position(i)
        rows = self.batch_rows(epoch, batch)
        maps = {name: self.source.read(name, rows) for name in self.inputs + self.outputs}
        for name, m in maps.items():
            bad = ~np.isfinite(m)
            if bad.any():
                k = np.argwhere(bad)[0][0]
                where = f"{self.split} batch {batch}" + (f" of epoch {epoch + 1}" if self.endless else "")
                raise InputError(f"{self.source.sims_path}: NaN or inf in map {name!r} row {rows[k]} ({where}); "
                                 "stopped")
        if self.augment:
            rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(3, epoch, batch)))
            ks = rng.choice(self.transforms, size=len(rows))
            for j, k in enumerate(ks):
                one = transform_maps({name: m[j] for name, m in maps.items()}, int(k))
                for name in maps:
                    maps[name][j] = one[name]
        return rows, maps

    def __getitem__(self, i):
        return network_batch(self, i)


def network_batch(dataset: SimsBatches | FreshBatches, i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(x, {head: y})`` of item ``i`` of a training dataset (:class:`SimsBatches` or
    :class:`~deepcmb.nn.onthefly.FreshBatches`): its ``load(i)`` maps stacked as the network's input
    channels (last axis, in ``dataset.inputs`` order) and its heads (``dataset.outputs``), shape
    ``(b, ny, nx, 1)``. An error while loading is also kept in ``dataset.error`` (a backend may wrap it)."""
    try:
        _, maps = dataset.load(i)
    except Exception as exc:
        dataset.error = exc
        raise
    x = np.stack([maps[n] for n in dataset.inputs], axis=-1)
    y = {n: maps[n][..., None] for n in dataset.outputs}
    return x, y
