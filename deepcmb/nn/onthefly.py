"""Training batches simulated on the fly: the network never sees the same map twice.

:class:`FreshBatches` draws every training batch from the same distribution as the training file
(its geometry, cosmologies, noise levels, beam and band limits, read from the file's own config and
stored spectra) but with new random seeds, so no CAMB call is needed and no map repeats. With
``kappa_qe`` among the inputs, the quadratic-estimator channel is computed for each fresh map with
the settings of the QE file the network was configured with (estimator, filter band, Lmax), one
estimator per noise level, exactly as ``deepcmb reconstruct --method qe`` makes it.

Costs on one core at 64 x 64 (2.34 arcmin pixels): about 2 ms a map for the simulation and 1 ms for
an MV_POL QE, a few percent of a training step of the quick network; 9 ms for a masked, non-periodic map
with a noise map (sims/masked.yaml: lensed on a 128 x 128 box). The Wiener-filtered inputs ``E_wf`` and
``B_wf`` (:mod:`deepcmb.nn.wiener`) are made for each fresh map too, at 50 ms a masked map: several times the
training step, so a network on them trains faster on a file held in memory.
"""

from __future__ import annotations

import json
import threading

import keras
import numpy as np

from ..errors import ConfigError
from ..fields import SURVEY_INPUTS, WIENER_INPUTS
from ..foregrounds import Foregrounds
from ..io.sims import assignment, geometry, open_sims, read_instruments, read_spectra
from ..qe.estimators import fields_needed, parse_estimator
from ..sample import FlatSimulator
from ..survey import Survey
from .data import QEFile, network_batch, read_qe_file, uniform_weight

_STREAM = 4
"""``spawn_key`` slot of the fresh-map seeds (1-3 are the split, shuffling and augmentation streams)."""


def fresh_root_seed(seed: int) -> int:
    """Root seed of the fresh maps of a training run with seed ``seed``.

    A 64-bit integer drawn from ``SeedSequence(seed, spawn_key=(4,))``: independent of the seeds of
    the simulation files (the training and test files keep their own root seeds).
    """
    return int(np.random.SeedSequence(int(seed), spawn_key=(_STREAM,)).generate_state(1, np.uint64)[0])


class FreshBatches(keras.utils.PyDataset):
    """Endless stream of freshly simulated training batches ``(x, {head: y})`` in physical units.

    Follows the training interface of :class:`~deepcmb.nn.data.SimsBatches` (``endless`` mode):
    item ``i`` is batch ``offset + i`` of the run, whose maps are samples
    ``(offset + i) * batch_size + j`` of the root seed :func:`fresh_root_seed`, so a resumed run
    continues the stream of an uninterrupted one.

    Parameters
    ----------
    sims_path : str or Path
        Training simulation file (flat sky); fresh maps follow its config, its ``survey`` section included:
        every fresh map gets its own mask and noise map, and is cut from a larger periodic box when the file's
        maps are (:mod:`deepcmb.survey`). A ``mask`` or ``ivar_p`` input the file's maps do not have is ones
        or the white noise of the map's level (:func:`~deepcmb.nn.data.uniform_weight`).
    inputs, outputs : list of str
        The network's input maps (stored fields such as ``Q``, ``U``, or ``kappa_qe``: the maps a network
        file takes, :func:`deepcmb.fields.stored_fields`) and output heads.
    batch_size : int
    steps_per_epoch : int
        Batches per epoch (``len(self)``).
    seed : int
        Training seed.
    qe_path : str, Path or QEFile, optional
        QE reconstruction file of ``sims_path`` (or the :class:`~deepcmb.nn.data.QEFile` already read
        of it, e.g. a :class:`~deepcmb.nn.data.MapSource`'s ``qe``): its settings make the ``kappa_qe``
        channel.
    curriculum : list of dict, optional
        Noise curriculum (``data.noise_curriculum``, see :func:`deepcmb.nn.settings.check_curriculum`):
        stages ``{epochs, noise_p_uk_arcmin}`` restricting the noise levels of the fresh maps, epoch by
        epoch; afterwards (or without one) the maps cycle through all the file's levels.
    **kwargs
        ``workers``, ``use_multiprocessing``, ``max_queue_size`` of :class:`keras.utils.PyDataset`.
    """

    row_label = "fresh sample indices"
    """What :meth:`batch_rows` returns, for messages."""

    def __init__(self, sims_path, inputs, outputs, batch_size, steps_per_epoch, seed=0, qe_path=None, curriculum=(),
                 **kwargs):
        super().__init__(**kwargs)
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.batch_size, self.n_batches = int(batch_size), int(steps_per_epoch)
        self.root_seed = fresh_root_seed(seed)
        self.endless, self.offset, self.error = True, 0, None
        with open_sims(sims_path) as f:
            config = json.loads(f.attrs["config"])
            if str(f.attrs["kind"]) != "flat":
                raise ConfigError(f"data.on_the_fly: {sims_path} holds curved-sky patches; fresh maps are made for "
                                  "flat-sky simulation files only")
            if Foregrounds.from_config(config.get("foregrounds")).any:
                raise ConfigError(f"data.on_the_fly: {sims_path} holds foreground residuals; fresh maps are made "
                                  "without them (train on the file's maps, data.on_the_fly: false)")
            self.geom = geometry(f)
            self.spectra = [read_spectra(f, c) for c in range(f["cosmology/cl_kk"].shape[0])]
            self.instruments = read_instruments(f)
        self.stages = self._stages(curriculum or (), sims_path)
        sim = config["simulation"]
        self.survey = Survey.from_config(config.get("survey"))
        self.sim_kw = {"lmax_cmb": sim["lmax_cmb"], "lmax_phi": sim["lmax_phi"], "include_b": sim["include_b"],
                       "epsilon": sim["nufft_epsilon"], "survey": self.survey}
        self.qe_config, self.qe_fields = None, ()
        if "kappa_qe" in self.inputs:
            if qe_path is None:
                raise ConfigError("data.on_the_fly: input kappa_qe needs the QE file (--qe) whose settings it copies")
            qe = qe_path if isinstance(qe_path, QEFile) else read_qe_file(qe_path, sims_path)
            q, self.qe_wiener = qe.estimator(), qe.wiener
            if self.survey.maps or not self.survey.periodic:
                raise ConfigError(f"data.on_the_fly: input kappa_qe is made for fresh periodic maps without a mask "
                                  f"or noise map; {sims_path} holds others")
            if qe.apodize_arcmin > 0:
                raise ConfigError(f"data.on_the_fly: {qe.path} was made with an apodisation window; fresh "
                                  "periodic maps need a QE without one")
            self.qe_config, self.qe_fields = q, fields_needed(parse_estimator(q["estimator"])[1])
        self.wiener = [n for n in WIENER_INPUTS if n in self.inputs]
        # survey inputs made here (the file's maps have none): for the network, or for the Wiener filter
        self.made = [n for n in SURVEY_INPUTS if (n in self.inputs or self.wiener) and n not in self.survey.maps]
        needed = set(self.inputs + self.outputs) - {"kappa_qe", *self.made, *self.wiener} | set(self.qe_fields)
        if self.wiener:  # the filter reads Q, U and the survey maps the simulator makes
            needed |= {"Q", "U"} | (set(SURVEY_INPUTS) - set(self.made))
        self.fields = sorted(needed)
        # the maps a batch holds: those asked for, then what only the filter reads
        self._kept = list(dict.fromkeys(self.inputs + self.outputs + self.fields))
        self._local = threading.local()

    def __len__(self):
        return self.n_batches

    @property
    def num_batches(self) -> None:
        return None

    def position(self, i: int) -> tuple[int, int]:
        """``(epoch, batch)`` of item ``i``."""
        return divmod(self.offset + i, self.n_batches)

    def batch_rows(self, epoch: int, batch: int) -> np.ndarray:
        """Fresh sample indices of ``batch`` in ``epoch``."""
        step = epoch * self.n_batches + batch
        return np.arange(step * self.batch_size, (step + 1) * self.batch_size)

    def _stages(self, curriculum, sims_path):
        """``[(end_epoch, noise indices)]`` of the curriculum stages, levels matched to the file's."""
        depths = [inst.noise_p_uk_arcmin for inst in self.instruments]
        stages, end = [], 0
        for k, stage in enumerate(curriculum):
            indices = []
            for level in stage["noise_p_uk_arcmin"]:
                match = [i for i, d in enumerate(depths) if abs(d - level) <= 1e-6 * max(d, 1.0)]
                if not match:
                    raise ConfigError(f"data.noise_curriculum[{k}]: {sims_path} has no noise level {level} uK-arcmin "
                                      f"(its levels: {', '.join(f'{d:g}' for d in depths)})")
                indices.append(match[0])
            end += int(stage["epochs"])
            stages.append((end, indices))
        return stages

    def levels(self, epoch: int) -> list[int]:
        """Noise-level indices of the fresh maps of ``epoch`` (0-based): the curriculum's, then all."""
        for end, indices in self.stages:
            if epoch < end:
                return indices
        return list(range(len(self.instruments)))

    def assignment(self, index: int) -> tuple[int, int]:
        """``(cosmology_index, noise_index)`` of fresh sample ``index``: cycling through the cosmologies,
        then through the noise levels of its epoch (all the file's levels, as the simulate stage does,
        unless a curriculum stage restricts them)."""
        levels = self.levels(index // (self.batch_size * self.n_batches))
        c, k = assignment(index, len(self.spectra), len(levels))
        return c, levels[k]

    def _simulator(self, c, n):
        cache = self._local.__dict__.setdefault("sims", {})
        if (c, n) not in cache:
            cache[c, n] = FlatSimulator(self.geom, self.spectra[c], self.instruments[n], **self.sim_kw)
        return cache[c, n]

    def _qe(self, n):
        from ..cosmology import compute_spectra
        from ..qe.quadratic import QuadraticEstimator

        cache = self._local.__dict__.setdefault("qes", {})
        if n not in cache:
            cache[n] = QuadraticEstimator(self.geom, compute_spectra({}), self.instruments[n], **self.qe_config)
        return cache[n]

    def load(self, i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(indices, maps)`` of item ``i``: maps is name -> ``(batch_size, ny, nx)`` float32."""
        indices = self.batch_rows(*self.position(i))
        names = self.inputs + self.outputs
        maps = {name: np.empty((self.batch_size,) + self.geom.shape, np.float32) for name in self._kept + self.made}
        levels = np.empty(self.batch_size, np.int64)
        observed = {k: np.empty((self.batch_size,) + self.geom.shape) for k in self.qe_fields}
        for j, index in enumerate(indices):
            c, n = self.assignment(int(index))
            levels[j] = n
            sample = self._simulator(c, n).sample(self.root_seed, int(index), fields=self.fields)
            for name in self.fields:
                maps[name][j] = sample[name]
            for k in self.qe_fields:
                observed[k][j] = sample[k]
        depths = np.array([inst.noise_p_uk_arcmin for inst in self.instruments])[levels]
        for name in self.made:
            maps[name][...] = uniform_weight(name, self.geom.shape, self.geom.pixel_arcmin, depths, "fresh maps")
        if self.qe_fields:
            for n in np.unique(levels):
                sel = levels == n
                est = self._qe(int(n)).estimate({k: v[sel] for k, v in observed.items()},
                                                wiener=self.qe_wiener)
                maps["kappa_qe"][sel] = est["kappa"]
        if self.wiener:
            filtered = self._filter()(*(maps[k] for k in ("Q", "U", *SURVEY_INPUTS)))
            for k, name in enumerate(WIENER_INPUTS):
                maps[name] = filtered[:, k]
        return indices, {name: maps[name] for name in names}

    def _filter(self):
        """The Wiener filter of the fresh maps (:class:`deepcmb.nn.wiener.WienerInputs`), one per thread."""
        from .wiener import WienerInputs

        if "wiener" not in self._local.__dict__:
            self._local.wiener = WienerInputs.for_maps(self.geom, self.instruments, self.survey.periodic, "fresh maps")
        return self._local.wiener

    def __getitem__(self, i):
        return network_batch(self, i)
