"""The training stage: config + simulation file -> a trained ResUNet in a run folder.

The run folder and its files are described in :mod:`deepcmb.nn.rundir`.

The network works in physical units: it standardises its inputs and de-standardises its outputs
with the training statistics (layers inside the model), and the loss of head ``h`` is weighted by
``loss_weights[h] / std_h^2`` so that it is the MSE of the standardised maps.

The config (schema, checks) is :mod:`deepcmb.nn.settings`, the callbacks :mod:`deepcmb.nn.callbacks`,
the backend setup :mod:`deepcmb.nn.backend`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np
import yaml

from ..config import resolve
from ..cosmology import compute_spectra
from ..errors import ConfigError, DeepCMBError, InputError
from ..fields import SURVEY_INPUTS, UNFILTERED, WIENER_INPUTS, stored_fields
from ..interrupts import TimeLimitReached
from ..io.files import atomic_path, write_json
from ..io.reconstruction import sims_identity
from ..io.sims import geometry, open_sims, read_instruments
from ..provenance import config_json, provenance_attrs
from ..qe.quadratic import QuadraticEstimator
from .backend import configure_backend, distribution_scope
from .callbacks import Checkpointer, EarlyStop, NanGuard, ReduceLR, TimeLimit, TrainingDiverged, TrainingProgress
from .data import MapSource, QEFile, SimsBatches, channel_stats, split_rows
from .losses import FourierWeightedMSE, inverse_variance_weights
from .model import (build_resunet, check_map_shape, filters_e, freeze_steps, model_spec, transfer_weights,
                    unrolled_e_filter, unrolled_steps)
from .onthefly import FreshBatches
from .rundir import RunDir, model_card, save_model, set_random_state
from .settings import MODEL_SCHEMA, resolve_config

__all__ = ["TrainingDiverged", "compile_model", "initial_network", "monitor_key", "run_train"]

log = logging.getLogger(__name__)


def run_train(config: dict | None, inputs: dict, out: str | Path, *, overwrite: bool = False,
              progress: bool = True, callbacks: Sequence[keras.callbacks.Callback] = (),
              time_limit: float | None = None) -> Path:
    """Run the training stage (or resume it).

    Parameters
    ----------
    config : dict
        Config as read from YAML (merged over :data:`deepcmb.nn.settings.SCHEMA`).
    inputs : dict
        ``sims``: simulation file of the simulate stage; ``qe`` (optional): QE reconstruction of it
        (needed when ``model.inputs`` has ``kappa_qe``).
    out : str or Path
        Run folder (created; if it holds an interrupted run of the same config and data, training
        resumes from its last checkpoint).
    overwrite : bool
        Replace a run folder that holds another or a finished run.
    progress : bool
        Log what is trained and one record per epoch (loss, elapsed time, ETA), and show the
        progress within each epoch (:class:`~deepcmb.nn.callbacks.TrainingProgress`).
    callbacks : sequence of keras.callbacks.Callback
        Extra callbacks, called after the stage's own.
    time_limit : float, optional
        Minutes of wall time for this call's training: it stops after the epoch in which they run out,
        that epoch checkpointed, and raises :class:`~deepcmb.interrupts.TimeLimitReached` without
        writing ``model.keras``; the same call continues the run (a batch job resubmitted).

    Returns
    -------
    Path
        The run folder.

    Raises
    ------
    ConfigError, InputError, OutputExistsError
        A bad config, unreadable or unsuitable data, a run folder of another run.
    OutputError
        The run folder cannot be written (full disk, read-only); a run stopped before its first
        checkpoint leaves nothing behind.
    TrainingDiverged
        The training or validation loss stopped being finite.
    TimeLimitReached
        ``time_limit`` ran out before the last epoch (or early stopping).
    """
    cfg = resolve_config(config)
    data, qe = inputs["sims"], inputs.get("qe")
    mcfg, dcfg = cfg["model"], cfg["data"]
    source = MapSource(data, qe)
    source.require(mcfg["inputs"], "input maps")
    source.require(mcfg["outputs"], "output (truth) maps")
    check_map_shape(mcfg, source.shape)  # before the run folder is made (build_resunet checks it again)
    n_maps = source.n_maps if dcfg["max_maps"] is None else min(source.n_maps, dcfg["max_maps"])
    splits = split_rows(n_maps, dcfg["split"], cfg["seed"])
    identity = {"config": json.loads(config_json(cfg)), "data": sims_identity(data),
                "qe": None if source.qe is None else source.qe.identity}
    run = RunDir(out)
    state = run.prepare(identity, overwrite)
    try:
        return _train(cfg, data, source, splits, identity, run, state, progress, callbacks, time_limit)
    except BaseException:
        if not run.last_state.exists():  # no checkpoint: nothing to resume from, nothing to keep
            run.discard()
        raise


def _train(cfg, data, source, splits, identity, run, state, progress, callbacks, time_limit):
    """The body of :func:`run_train` once the run folder is prepared (``state``: the checkpoint to resume
    from, or None)."""
    mcfg, tcfg, dcfg = cfg["model"], cfg["training"], cfg["data"]
    configure_backend(cfg["seed"], tcfg["deterministic"])
    source.progress = progress
    if dcfg["in_memory"] and not dcfg["on_the_fly"]:  # before the statistics, which then read from memory
        held = source.load(stored_fields(mcfg["inputs"]) + list(mcfg["outputs"]),
                           np.concatenate([splits["train"], splits["validation"]]))
        if progress:
            log.info("training and validation maps in memory: %.2f GiB", held / 2**30)
    elif set(WIENER_INPUTS) & set(mcfg["inputs"]) and progress:
        log.warning("inputs %s are filtered anew for every batch; data.in_memory: true filters them once",
                    ", ".join(WIENER_INPUTS))
    scope, dist_desc = distribution_scope(tcfg["distribution"], tcfg["batch_size"])
    if state is None:
        stats_rows = splits["train"][: dcfg["stats_maps"]]
        start = None if tcfg["init_from"] is None else initial_network(tcfg["init_from"], mcfg, source)
        stats = dict(start[1]["stats"]) if start else {}
        measured = [n for n in mcfg["inputs"] + mcfg["outputs"] if n not in stats]
        stats.update(channel_stats(source, measured, stats_rows) if measured else {})
        with atomic_path(run / "config.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
        write_json(run / "normalization.json", {"maps_used": int(len(stats_rows)) if measured else 0,
                                                "split": (f"init_from {tcfg['init_from']}" if start else "train")
                                                + (f"; train for {', '.join(measured)}" if start and measured
                                                   else ""),
                                                "stats": {k: {"mean": m, "std": s} for k, (m, s) in stats.items()}},
                   sort_keys=True)
        with atomic_path(run / "splits.npz", prefix="tmp_") as tmp:  # np.savez keeps a .npz name
            np.savez(tmp, **splits)
        write_json(run / "run.json", {"identity": identity, **provenance_attrs(cfg, "train")}, sort_keys=True)
        run.history.unlink(missing_ok=True)
        with scope, dtype_policy(tcfg["precision"]):
            e_filter = unrolled_e_filter(compute_spectra({}), source.instruments, source.pixel_arcmin) \
                if mcfg["unrolled_steps"] and filters_e(mcfg["inputs"]) else None
            model = build_resunet(mcfg, source.shape, stats, pixel_arcmin=source.pixel_arcmin,
                                  instruments=source.instruments, e_filter=e_filter)
            if start:
                transfer_weights(model, start[0])
                had = unrolled_steps(start[0])
                if unrolled_steps(model) > had:  # train the new steps alone: freeze its first network and steps
                    freeze_steps(model, had + 1)
            compile_model(model, tcfg, stats, data, source.qe)
        initial_epoch = 0
    else:
        with scope:
            model = _load_checkpoint(run.last)
        if model_spec(model)["inputs"] != stored_fields(mcfg["inputs"]):
            raise InputError(f"{run.last}: a checkpoint of an older deepcmb (E/B split outside the network); "
                             "use --overwrite to start again")
        if int(np.asarray(model.optimizer.iterations)) != state["optimizer_iterations"]:
            raise InputError(f"{run.last}: checkpoint and {run.last_state.name} disagree (interrupted while "
                             "saving?); use --overwrite to start again")
        model.optimizer.learning_rate = state["learning_rate"]
        if "random_state" in state:  # absent from the checkpoints of an older deepcmb
            set_random_state(model, state["random_state"], run.last_state)
        initial_epoch = state["epoch"]
        run.truncate_history(initial_epoch)
        if progress:
            log.info("resuming %s after epoch %d (learning rate %.3g)", run.path, initial_epoch,
                     state["learning_rate"])
    kw = dict(workers=dcfg["workers"], use_multiprocessing=False)
    takes = stored_fields(mcfg["inputs"])
    if dcfg["on_the_fly"]:
        steps = tcfg["steps_per_epoch"] or max(len(splits["train"]) // tcfg["batch_size"], 1)
        train_ds = FreshBatches(data, takes, mcfg["outputs"], tcfg["batch_size"], steps, seed=cfg["seed"],
                                qe_path=source.qe, curriculum=dcfg["noise_curriculum"], **kw)
    else:
        train_ds = SimsBatches(source, splits["train"], takes, mcfg["outputs"], tcfg["batch_size"],
                               seed=cfg["seed"], shuffle=True, augment=dcfg["augment"], drop_remainder=True,
                               max_batches=tcfg["steps_per_epoch"], endless=True, split="training", **kw)
    train_ds.offset = initial_epoch * len(train_ds)
    val_ds = SimsBatches(source, splits["validation"], takes, mcfg["outputs"], tcfg["batch_size"],
                         max_batches=tcfg["validation_steps"], split="validation", **kw)
    rl, es = tcfg["reduce_lr"], tcfg["early_stopping"]
    monitor = monitor_key(tcfg["monitor"], mcfg["outputs"])
    reduce_lr = ReduceLR(restore=(state or {}).get("reduce_lr"), monitor=monitor, mode="min", factor=rl["factor"],
                         patience=rl["patience"], min_delta=rl["min_delta"], min_lr=rl["min_lr"])
    early = EarlyStop(restore=(state or {}).get("early_stopping"), monitor=monitor, mode="min", patience=es["patience"],
                      min_delta=es["min_delta"])
    limit = TimeLimit(time_limit) if time_limit is not None else None  # after the checkpoint of its epoch
    cbs = [NanGuard(train_ds), reduce_lr, early,
           Checkpointer(run, reduce_lr, early, state, len(train_ds) * tcfg["batch_size"], monitor),
           TrainingProgress(tcfg["epochs"], len(train_ds), tcfg["batch_size"], progress),
           *([limit] if limit else []), *callbacks]
    if progress:
        what = "fresh simulated maps" if dcfg["on_the_fly"] else f"{len(splits['train'])} maps"
        log.info("training %s parameters on %s (%d batches of %d per epoch), %d validation maps; backend %s, %s",
                 f"{model.count_params():,}", what, len(train_ds), tcfg["batch_size"], len(splits["validation"]),
                 keras.backend.backend(), dist_desc)
    if initial_epoch < tcfg["epochs"] and not (state or {}).get("stopped_early"):
        try:
            model.fit(train_ds, validation_data=val_ds, epochs=tcfg["epochs"], initial_epoch=initial_epoch,
                      steps_per_epoch=len(train_ds), shuffle=False, callbacks=cbs, verbose=0)
        except Exception as exc:
            for d in (train_ds, val_ds):
                if d.error is not None and not isinstance(exc, DeepCMBError):
                    raise d.error from None
            raise
        finally:
            source.close()
    source.close()
    ckpt_state = run.read_state()
    if limit and limit.reached and ckpt_state["epoch"] < tcfg["epochs"] and not ckpt_state["stopped_early"]:
        raise TimeLimitReached(f"{run.path}: stopped at the time limit ({time_limit:.3g} min) after epoch "
                               f"{ckpt_state['epoch']}/{tcfg['epochs']}; re-run the same command to continue")
    best_model = _load_checkpoint(run.best)
    save_model(best_model, run / "model.keras", include_optimizer=False)
    card = model_card(cfg, model_spec(best_model), identity, ckpt_state["best"],
                      int(np.asarray(best_model.optimizer.iterations)))
    write_json(run / "model.json", card, sort_keys=True)
    ckpt_state["finished"] = True
    write_json(run.last_state, ckpt_state, sort_keys=True)
    return run.path


def initial_network(name: str, mcfg: dict, source: MapSource) -> tuple[keras.Model, dict]:
    """The network ``training.init_from`` names, checked against the ``model`` section and the training data.

    Parameters
    ----------
    name : str
        A shipped network's name, a run folder or a ``.keras`` file (:func:`deepcmb.shipped.network`).
    mcfg : dict
        The resolved ``model`` section: it must describe the same network (the model card's ``model``
        section, when the network has a card; else the same inputs, heads and weight shapes), or the same
        network with the survey inputs ``mask`` and ``ivar_p`` added, or its E and B Wiener-filtered
        (:func:`widened`), or with more ``unrolled_steps`` (the weights are then carried over by
        :func:`~deepcmb.nn.model.transfer_weights`, and the steps the network has are frozen).
    source : MapSource
        The training data: same pixel size and beam as the network's (:func:`~deepcmb.nn.reconstruct.check_compatible`).

    Returns
    -------
    (keras.Model, dict)
        The network and its :func:`~deepcmb.nn.model.model_spec` (the fine-tuned network keeps its
        normalisation statistics).

    Raises
    ------
    ConfigError
        If the network differs from the ``model`` section (the differing keys are named).
    """
    from ..shipped import network
    from .reconstruct import check_compatible, load_network

    path = network(name)
    model, spec = load_network(path)
    card_model = (spec["card"] or {}).get("config", {}).get("model")
    if card_model is not None:
        card_model = {**resolve({}, MODEL_SCHEMA), **card_model}  # an older deepcmb's card lacks newer keys
        differ = sorted(k for k in set(card_model) | set(mcfg) if card_model.get(k) != mcfg.get(k))
        if "inputs" in differ and widened(card_model["inputs"], mcfg["inputs"]):
            differ.remove("inputs")
        if "unrolled_steps" in differ and mcfg["unrolled_steps"] > card_model["unrolled_steps"]:
            differ.remove("unrolled_steps")
        if differ:
            raise ConfigError(f"training.init_from: {path} is another network than the model section describes "
                              f"(differs in model.{', model.'.join(differ)}: "
                              + "; ".join(f"{k} {card_model.get(k)!r} there" for k in differ) + ")")
    check_compatible(spec, source, np.arange(source.n_maps))
    return model, spec


def widened(before: list[str], after: list[str]) -> bool:
    """Whether input channels ``after`` are ``before`` (same order) with survey inputs
    (:data:`deepcmb.fields.SURVEY_INPUTS`) added, and ``E``, ``B`` possibly replaced by their Wiener-filtered
    ``E_wf``, ``B_wf`` (:data:`deepcmb.fields.WIENER_INPUTS`)."""
    plain = [n if n in before else UNFILTERED.get(n, n) for n in after]
    return [n for n in plain if n in before] == list(before) and \
        all(n in SURVEY_INPUTS for n in plain if n not in before)


def monitor_key(monitor: str, outputs: list) -> str:
    """Keras log key of the validation loss that ``training.monitor`` names.

    ``"loss"`` is the weighted total (``val_loss``); a head name ``h`` is that head's own loss
    (``val_h_loss``), except for a single-head model, whose total is that head's loss.

    Parameters
    ----------
    monitor : str
        ``training.monitor``: ``'loss'`` or an output head.
    outputs : list of str
        ``model.outputs``.

    Returns
    -------
    str
    """
    if monitor == "loss" or len(outputs) == 1:
        return "val_loss"
    return f"val_{monitor}_loss"


def compile_model(model: keras.Model, training: dict, stats: dict, sims_path: str | Path | None = None,
                  qe: QEFile | None = None) -> None:
    """Compile a ResUNet for training: Adam, the loss of each head and its weight.

    The loss of head ``h`` is ``training.loss`` weighted by ``loss_weights[h] / std_h^p`` (``p = 1``
    for ``mae``, else 2), i.e. the loss of the standardised maps. With ``fourier_mse`` the kappa head
    has the Fourier-weighted MSE (weights ``1 / (C^kk + N0)``, see :func:`_fourier_loss`) and the other
    heads the MSE.

    Parameters
    ----------
    model : keras.Model
        A network of :func:`deepcmb.nn.model.build_resunet` (compile it inside the distribution scope).
    training : dict
        The ``training`` section of a config resolved by :func:`deepcmb.nn.settings.resolve_config`
        (``loss_weights`` filled in for every head).
    stats : dict
        Field name -> ``(mean, std)`` of the training split, physical units; ``std`` of every head.
    sims_path : str or Path, optional
        The training simulation file; needed for ``fourier_mse`` only (its geometry and noise levels).
    qe : QEFile, optional
        The QE file of ``kappa_qe`` (:attr:`deepcmb.nn.data.MapSource.qe`); for ``fourier_mse`` its
        estimator makes the N0 (default ``MV_POL`` with the QE stage's defaults).

    Raises
    ------
    ValueError
        ``fourier_mse`` without ``sims_path``.
    """
    opt = keras.optimizers.Adam(learning_rate=training["learning_rate"], clipnorm=training["clipnorm"])
    heads = list(training["loss_weights"])
    # loss of head h = weight_h * MSE(standardised prediction, standardised truth)
    power = 1 if training["loss"] == "mae" else 2
    weights = {h: training["loss_weights"][h] / stats[h][1] ** power for h in heads}
    losses = {h: training["loss"] for h in heads}
    if training["loss"] == "fourier_mse":
        if sims_path is None:
            raise ValueError("compile_model: the fourier_mse loss needs sims_path")
        losses = {h: "mse" for h in heads}
        losses["kappa"] = _fourier_loss(sims_path, qe)
    model.compile(optimizer=opt, loss=losses, loss_weights=weights, jit_compile=training["jit_compile"])


def _fourier_loss(sims_path, qe=None):
    """The kappa loss weighted by ``1 / (C^kk + N0)``: fiducial C^kk, the N0 of the estimator of the QE
    file ``qe`` (default, and for a ``kappa_qe`` channel read from another method's reconstruction, such as
    the MAP's: MV_POL with the stage defaults) at each noise level of the training file."""
    settings = qe.estimator() if qe is not None and qe.identity["method"] == "qe" else {"estimator": "MV_POL"}
    with open_sims(sims_path) as f:
        geom = geometry(f)
        instruments = read_instruments(f)
    spectra = compute_spectra({})
    qes = [QuadraticEstimator(geom, spectra, inst, **settings) for inst in instruments]
    return FourierWeightedMSE(inverse_variance_weights(geom, qes[0].clkk_grid, [q.n0_kappa for q in qes]))


@contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Build layers under the Keras dtype policy ``name`` (``training.precision``), restoring the previous one
    after; a built network keeps its layers' policies (a resumed run reads them from the checkpoint)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _load_checkpoint(path):
    """A saved model with its optimizer, in Keras safe mode (the custom layers and losses it needs are
    registered by the imports of this module: :mod:`.losses` here, :mod:`.layers` through :mod:`.model`)."""
    return keras.saving.load_model(path, safe_mode=True)
