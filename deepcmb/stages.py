"""The stage contract: what every stage declares, and the table of deepcmb's stages.

Every stage is a function ``run_<stage>(config, inputs, out, *, overwrite=False, progress=True)``:

``config``
    The stage's section of a YAML config (a mapping, partial or empty), resolved once inside the stage
    over the stage's schema (:mod:`deepcmb.config`), which holds every default exactly once.
``inputs``
    Mapping of input name -> path (or, for a labelled input, label -> path): the files the stage reads,
    named alike across stages (``sims``, ``qe``, ``model``, ``recs``, ``report``, ``chains``,
    ``evaluations``).
``out``
    The file or folder the stage writes; an existing one is refused unless ``overwrite``.

and returns the path it wrote. A :class:`Stage` row says where that function and its schema live
(imported only when the stage is used, so the command line starts fast), what it reads and writes,
which YAML section configures it, whether its schema's leaves are also command-line options, and
whether an interrupted run resumes by itself. The command line (:mod:`deepcmb.cli`) and ``deepcmb
run`` (:mod:`deepcmb.pipeline`) are both built from this table.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .shipped import DEFAULT_NETWORK


@dataclass(frozen=True)
class Input:
    """A file a stage reads.

    Attributes
    ----------
    name : str
        Key in the stage's ``inputs`` mapping and the command-line option ``--<name>``.
    help : str
        One line for the command line.
    required : bool
        Whether the stage needs it.
    labelled : bool
        Several files, each under a label: ``--<option> LABEL=FILE``, repeated; the input is then a
        mapping label -> path.
    option : str, optional
        Command-line option when it differs from ``--<name>`` (e.g. ``--rec`` for ``recs``).
    aliases : tuple of str
        Older option names still accepted.
    """

    name: str
    help: str
    required: bool = True
    labelled: bool = False
    option: str | None = None
    aliases: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return self.option or f"--{self.name}"


@dataclass(frozen=True)
class Stage:
    """One stage of deepcmb (see the module docstring for the contract its function follows).

    Attributes
    ----------
    name : str
        Stage name (``reconstruct_qe``); its function is ``run_<name>``.
    command : str
        Subcommand of ``deepcmb`` that runs it; ``method`` tells stages of one subcommand apart.
    method : str or None
        Value of ``--method`` selecting this stage (``deepcmb reconstruct --method qe``).
    module : str
        Module holding ``run_<name>``.
    schema : str
        ``'module:NAME'`` of its config schema, in a module that imports no deep-learning backend.
    summary : str
        One line: what the stage does (the subcommand's help).
    inputs : tuple of Input
    output : {'file', 'folder'}
        What ``out`` is.
    section : str or None
        Dotted section of a YAML file read by ``--config`` (``''``: the whole file; ``None``: the stage
        takes no ``--config``).
    config_required : bool
        Whether ``--config`` must be given.
    flags : bool
        Whether every leaf of the schema is also a command-line option (``--batch-size``), overriding
        ``--config``.
    resumes : bool
        Whether re-running it on an interrupted output continues where it stopped (``deepcmb run`` then
        lets it) rather than starting again.
    finished : str or None
        Path inside a folder output whose presence means the stage finished (a resumable stage's
        output exists before it is done); None: the output itself.
    keras : bool
        Whether the stage runs a network (its backend is imported quietly first, see :attr:`function`).
    """

    name: str
    command: str
    module: str
    schema: str
    summary: str
    inputs: tuple[Input, ...]
    output: str
    section: str | None = ""
    config_required: bool = True
    flags: bool = False
    resumes: bool = False
    finished: str | None = None
    keras: bool = False
    method: str | None = None
    options: tuple[str, ...] = ()

    def load_schema(self) -> dict:
        """The stage's config schema (imports its module)."""
        module, name = self.schema.split(":")
        return getattr(importlib.import_module(module), name)

    @property
    def function(self) -> Callable[..., Path]:
        """``run_<name>`` (imports its module; for a stage that runs a network, first Keras and its backend,
        quietly, through :func:`deepcmb.nn.backend.import_keras`)."""
        if self.keras:
            from .nn.backend import import_keras

            import_keras()
        return getattr(importlib.import_module(self.module), f"run_{self.name}")

    def run(self, config: dict | None, inputs: dict, out: str | Path, **kwargs: Any) -> Path:
        """Call ``run_<name>(config, inputs, out, **kwargs)`` holding the lock of ``out``
        (:func:`deepcmb.io.lock.output_lock`: one writer per output; another command's lock raises
        :class:`~deepcmb.errors.OutputLockedError`); a shard of a simulation (``shard='K/N'``) holds a lock
        of its own, ``OUT.shard-K-of-N.lock``, so that the shards run side by side."""
        from .io.lock import output_lock

        target = Path(out)
        if kwargs.get("shard"):  # the shards of one simulation write one partial folder side by side
            target = target.with_name(f"{target.name}.shard-{str(kwargs['shard']).replace('/', '-of-')}")
        with output_lock(target):
            return self.function(config, inputs, out, **kwargs)

    def is_finished(self, out: str | Path) -> bool:
        """Whether ``out`` holds a finished output of this stage (for a stage that resumes)."""
        out = Path(out)
        return (out / self.finished).exists() if self.finished else out.exists()


SIMS = Input("sims", "simulation file of `deepcmb simulate`", aliases=("--data",))
MAPS = Input("sims", "simulation or observation file (maps deepcmb did not simulate: deepcmb.io.observations)",
             aliases=("--data",))
QE = Input("qe", "QE reconstruction of --sims (for a network with a kappa_qe input channel)", required=False)
UQ = Input("uncertainty", "calibration file of `deepcmb calibrate` for this method: adds the per-map posterior "
                          "(kappa_mean, kappa_sigma) and the input score (ood_score)", required=False)

STAGES = {s.name: s for s in (
    Stage("simulate", "simulate", "deepcmb.simulate", "deepcmb.simulate:SCHEMA",
          "simulate lensed CMB maps with their truth into HDF5", (), "file", resumes=True,
          options=("workers", "scheduler", "scheduler_file", "shard")),
    Stage("cutout", "cutout", "deepcmb.cutout", "deepcmb.cutout:SCHEMA",
          "cut gnomonic patches from HEALPix Q/U (T) maps into an observation file",
          (Input("maps", "HEALPix FITS map with columns (I, Q, U) or (Q, U), uK"),
           Input("mask", "HEALPix FITS mask in [0, 1]", required=False),
           Input("hits", "HEALPix FITS hit-count map (with noise_uk_arcmin_per_hit)", required=False),
           Input("ivar", "HEALPix FITS map of the Q/U inverse noise variance per HEALPix pixel, 1/uK^2",
                 required=False)),
          "file", section="cutout", config_required=False, flags=True),
    Stage("train", "train", "deepcmb.nn.train", "deepcmb.nn.settings:SCHEMA",
          "train the ResUNet on a simulation file", (SIMS, QE), "folder", resumes=True, finished="model.keras",
          keras=True, options=("time_limit",)),
    Stage("reconstruct_qe", "reconstruct", "deepcmb.qe.stage", "deepcmb.qe.stage:SCHEMA",
          "reconstruct kappa with a flat-sky quadratic estimator", (MAPS, UQ), "file", section="run.qe",
          config_required=False, flags=True, method="qe"),
    Stage("reconstruct_nn", "reconstruct", "deepcmb.nn.reconstruct", "deepcmb.nn.settings:RECONSTRUCT_SCHEMA",
          "reconstruct kappa with a trained ResUNet",
          (MAPS, Input("model", "run folder of `deepcmb train`, a .keras file, or the name of a shipped network "
                                f"(default: {DEFAULT_NETWORK})", required=False), QE, UQ),
          "file", section=None, config_required=False, flags=True, keras=True, method="nn"),
    Stage("reconstruct_map", "reconstruct", "deepcmb.iterative.stage", "deepcmb.iterative.settings:SCHEMA",
          "reconstruct kappa with the iterative MAP estimator (flat-sky maps)", (MAPS, UQ), "file",
          section="run.map", config_required=False, flags=True, method="map", resumes=True,
          options=("workers", "scheduler", "scheduler_file")),
    Stage("calibrate", "calibrate", "deepcmb.uncertainty.stage", "deepcmb.uncertainty.stage:SCHEMA",
          "measure a method's per-map uncertainty on calibration simulations (for reconstruct --uncertainty)",
          (Input("sims", "calibration simulation file of `deepcmb simulate` (the truth)"),
           Input("rec", "reconstruction of --sims by the method to calibrate")),
          "file", section="uncertainty", config_required=False, flags=True),
    Stage("evaluate", "evaluate", "deepcmb.evaluation.stage", "deepcmb.evaluation.stage:SCHEMA",
          "compare reconstructions with the simulation truth (spectra, rho, noise, S/N), or with each other",
          (Input("sims", "simulation file of `deepcmb simulate` (the truth), or observation file (no truth: "
                         "the methods are compared with each other)"),
           Input("recs", "a reconstruction of --sims under a label (letters, digits, _), e.g. nn=rec_nn.h5; "
                         "repeat for several methods", labelled=True, option="--rec")),
          "folder", section="evaluate"),
    Stage("params", "params", "deepcmb.params.stage", "deepcmb.params.schema:SCHEMA",
          "fit Alens and cosmological parameters to the reconstructed lensing spectra",
          (Input("report", "report.h5 of `deepcmb evaluate`"),), "folder", section="params"),
    Stage("figures", "figures", "deepcmb.figures.stage", "deepcmb.figures.stage:SCHEMA",
          "draw every figure from an evaluation report (and chains)",
          (Input("report", "report.h5 of `deepcmb evaluate`"),
           Input("chains", "chains.h5 of `deepcmb params` (adds the posterior figures)", required=False)),
          "folder", section="figures", config_required=False, flags=True),
    Stage("results", "results", "deepcmb.results", "deepcmb.results:SCHEMA",
          "gather evaluations into one table with the benchmark targets",
          (Input("evaluations", "an evaluation folder of `deepcmb evaluate` under a tag, e.g. test=OUT/eval; "
                                "repeat for several test sets", labelled=True, option="--eval"),),
          "folder", section="results", config_required=False),
)}
"""Stage name -> :class:`Stage`, in the order ``deepcmb run`` runs them (``cutout``, which turns a user's HEALPix
maps into an observation file, is not part of a run)."""


def commands() -> dict[str, list[Stage]]:
    """Subcommand -> the stages it runs (one, or one per ``--method``)."""
    out: dict[str, list[Stage]] = {}
    for s in STAGES.values():
        out.setdefault(s.command, []).append(s)
    return out
