"""The training stage: config + simulation file -> a trained ResUNet in a run folder.

Run folder (``RUN_DIR``)::

    config.yaml          the full resolved config
    run.json             config, training data identity (created, git revision, config hash) and provenance;
                         a re-run with the same config and data resumes, anything else is refused
    normalization.json   per-channel mean / std of the training split (physical units)
    splits.npz           rows of the train / validation / test splits in the simulation file
    history.csv          one row per epoch: losses (total and per head, in physical units), validation
                         losses, learning rate, time and samples/s
    checkpoints/last.keras, last.json   model + optimizer after the last finished epoch, and the state
                                        of the schedule (epoch, learning rate, plateau counters)
    checkpoints/best.keras              the epoch with the lowest validation loss (training.monitor)
    model.keras          the final network for inference (best epoch, no optimizer)
    model.json           what the network expects and how it was trained (see :func:`model_card`)

The network works in physical units: it standardises its inputs and de-standardises its outputs
with the training statistics (layers inside the model), and the loss of head ``h`` is weighted by
``loss_weights[h] / std_h^2`` so that it is the MSE of the standardised maps.
"""

import csv
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import yaml

from ..config import Free, OneOf, resolve
from ..errors import ConfigError, DeepCMBError, InputError, OutputExistsError
from ..io.reconstruction import sims_identity
from ..provenance import config_json, provenance_attrs
from .model import MODEL_SCHEMA, check_model_config

SCHEMA = {
    "seed": 1234,
    "data": {
        "split": [0.8, 0.1, 0.1],
        "augment": True,
        "max_maps": None,
        "stats_maps": 4096,
        "workers": 1,
        "on_the_fly": False,
        "noise_curriculum": Free([]),
    },
    "model": MODEL_SCHEMA,
    "training": {
        "batch_size": 32,
        "epochs": 100,
        "steps_per_epoch": None,
        "validation_steps": None,
        "learning_rate": 1.0e-3,
        "loss": OneOf("mse", "mse", "mae", "fourier_mse"),
        "loss_weights": Free({}),
        "clipnorm": None,
        "reduce_lr": {"factor": 0.5, "patience": 3, "min_delta": 0.0, "min_lr": 1.0e-6},
        "early_stopping": {"patience": 10, "min_delta": 0.0},
        "monitor": "loss",
        "jit_compile": OneOf("auto", "auto", True, False),
        "deterministic": True,
        "distribution": OneOf("auto", "auto", "none", "data_parallel"),
    },
}
"""Config schema of ``deepcmb train`` with its defaults (see ``train/quick.yaml``)."""

CARD_FORMAT = "deepcmb.nn.model"


def _pos_int(value, name, allow_none=False):
    if allow_none and value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}: must be a positive integer{' or null' if allow_none else ''}, got {value!r}")
    return value


def resolve_config(user):
    """Resolve a training config over :data:`SCHEMA` and check every value (raises ConfigError)."""
    cfg = resolve(user, SCHEMA)
    if isinstance(cfg["seed"], bool) or not isinstance(cfg["seed"], int) or cfg["seed"] < 0:
        raise ConfigError(f"seed: must be a non-negative integer, got {cfg['seed']!r}")
    check_model_config(cfg["model"])
    d, t = cfg["data"], cfg["training"]
    _pos_int(d["max_maps"], "data.max_maps", allow_none=True)
    _pos_int(d["stats_maps"], "data.stats_maps")
    _pos_int(d["workers"], "data.workers")
    if not isinstance(d["on_the_fly"], bool):
        raise ConfigError(f"data.on_the_fly: must be true or false, got {d['on_the_fly']!r}")
    check_curriculum(d["noise_curriculum"], d["on_the_fly"])
    if t["loss"] == "fourier_mse" and "kappa" not in cfg["model"]["outputs"]:
        raise ConfigError("training.loss: fourier_mse weights the modes of the kappa head; model.outputs has no kappa")
    _pos_int(t["batch_size"], "training.batch_size")
    _pos_int(t["epochs"], "training.epochs")
    _pos_int(t["steps_per_epoch"], "training.steps_per_epoch", allow_none=True)
    _pos_int(t["validation_steps"], "training.validation_steps", allow_none=True)
    if not (isinstance(t["learning_rate"], float) and t["learning_rate"] > 0):
        raise ConfigError(f"training.learning_rate: must be positive, got {t['learning_rate']!r}")
    if t["clipnorm"] is not None and (isinstance(t["clipnorm"], bool) or not isinstance(t["clipnorm"], (int, float))
                                      or t["clipnorm"] <= 0):
        raise ConfigError(f"training.clipnorm: must be positive or null, got {t['clipnorm']!r}")
    lw = t["loss_weights"]
    if not isinstance(lw, dict):
        raise ConfigError(f"training.loss_weights: expected a mapping head -> weight, got {lw!r}")
    for head, w in lw.items():
        if head not in cfg["model"]["outputs"]:
            raise ConfigError(f"training.loss_weights.{head}: not an output head "
                              f"({', '.join(cfg['model']['outputs'])})")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            raise ConfigError(f"training.loss_weights.{head}: must be a non-negative number, got {w!r}")
    t["loss_weights"] = {h: float(lw.get(h, 1.0)) for h in cfg["model"]["outputs"]}
    if t["monitor"] != "loss" and t["monitor"] not in cfg["model"]["outputs"]:
        raise ConfigError(f"training.monitor: 'loss' (the weighted total) or an output head "
                          f"({', '.join(cfg['model']['outputs'])}), got {t['monitor']!r}")
    rl = t["reduce_lr"]
    if not 0 < rl["factor"] < 1:
        raise ConfigError(f"training.reduce_lr.factor: must lie in (0, 1), got {rl['factor']!r}")
    _pos_int(rl["patience"], "training.reduce_lr.patience")
    _pos_int(t["early_stopping"]["patience"], "training.early_stopping.patience")
    return cfg


def check_curriculum(stages, on_the_fly):
    """Validate ``data.noise_curriculum``: a list of ``{epochs: int, noise_p_uk_arcmin: [float, ...]}``.

    Stage ``k`` trains for ``epochs`` epochs on fresh maps of the listed noise levels only (Q/U
    depths in uK-arcmin, each one of the training file's levels); after the last stage every level
    of the file is used. Needs ``data.on_the_fly`` (the levels of a file's maps are fixed).
    """
    if not isinstance(stages, list):
        raise ConfigError(f"data.noise_curriculum: expected a list of stages, got {stages!r}")
    if stages and not on_the_fly:
        raise ConfigError("data.noise_curriculum: needs data.on_the_fly: true (it chooses the noise level of "
                          "each fresh map)")
    for k, stage in enumerate(stages):
        where = f"data.noise_curriculum[{k}]"
        if not isinstance(stage, dict) or set(stage) != {"epochs", "noise_p_uk_arcmin"}:
            raise ConfigError(f"{where}: expected {{epochs: N, noise_p_uk_arcmin: [levels]}}, got {stage!r}")
        _pos_int(stage["epochs"], f"{where}.epochs")
        levels = stage["noise_p_uk_arcmin"]
        if (not isinstance(levels, list) or not levels
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in levels)):
            raise ConfigError(f"{where}.noise_p_uk_arcmin: expected a non-empty list of noise levels, got {levels!r}")


# -- the run folder --------------------------------------------------------------------------------

class RunDir:
    """Paths of a run folder and its resume logic."""

    def __init__(self, path):
        self.path = Path(path)
        self.ckpt = self.path / "checkpoints"

    def __truediv__(self, name):
        return self.path / name

    @property
    def last(self):
        return self.ckpt / "last.keras"

    @property
    def last_state(self):
        return self.ckpt / "last.json"

    @property
    def best(self):
        return self.ckpt / "best.keras"

    def prepare(self, identity, overwrite):
        """Create the folder, or check that it belongs to this very run; return the saved state or None."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise OutputExistsError(f"{p}: exists and is not a folder")
        parent = p.parent if str(p.parent) else Path(".")
        if not parent.is_dir():
            raise InputError(f"{p}: parent folder {parent} does not exist")
        if p.exists() and any(p.iterdir()):
            run_json = p / "run.json"
            same = False
            if run_json.exists():
                try:
                    same = _portable(json.loads(run_json.read_text())["identity"]) == _portable(identity)
                except (ValueError, KeyError, TypeError):
                    same = False
            if overwrite:
                shutil.rmtree(p)
            elif not same:
                raise OutputExistsError(f"{p}: holds another run (different config or data); use --overwrite "
                                        "to replace it or choose another --out")
            else:
                state = self.read_state()
                if state is not None and state.get("finished"):
                    raise OutputExistsError(f"{p}: training already finished (use --overwrite to train again)")
                return state
        p.mkdir(exist_ok=True)
        self.ckpt.mkdir(exist_ok=True)
        if not os.access(p, os.W_OK):
            raise InputError(f"{p}: folder is not writable")
        return None

    def read_state(self):
        if not (self.last_state.exists() and self.last.exists()):
            return None
        try:
            return json.loads(self.last_state.read_text())
        except ValueError:
            raise InputError(f"{self.last_state}: unreadable checkpoint state; use --overwrite") from None


def _portable(identity):
    """A run's identity without file paths (moving the data does not make it another run)."""
    return {k: ({kk: vv for kk, vv in v.items() if kk != "path"} if isinstance(v, dict) and k != "config" else v)
            for k, v in identity.items()}


def _write_json(path, obj):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _save_model(model, path, include_optimizer=True):
    """Save atomically (Keras wants the ``.keras`` suffix, so the temporary name is ``tmp_<name>``)."""
    tmp = path.with_name("tmp_" + path.name)
    if include_optimizer:
        model.save(tmp)
    else:
        clone = _inference_copy(model)
        clone.save(tmp)
    os.replace(tmp, path)


def _inference_copy(model):
    import keras

    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    return clone


def model_card(cfg, spec, identity, history_best, steps):
    """The ``model.json`` written next to ``model.keras``."""
    return {
        "format": CARD_FORMAT, "format_version": 1,
        "inputs": spec["inputs"], "outputs": spec["outputs"], "shape": list(spec["shape"]),
        "pixel_arcmin": spec["pixel_arcmin"],
        "normalization": {k: {"mean": m, "std": s} for k, (m, s) in spec["stats"].items()},
        "trained_on": identity["data"], "qe_input": identity["qe"],
        "best_epoch": history_best[0], "best_val_loss": history_best[1], "optimizer_steps": steps,
        "config": cfg, "provenance": {k: v for k, v in provenance_attrs(cfg, "train").items() if k != "config"},
    }


# -- callbacks ---------------------------------------------------------------------------------------

def _callbacks():
    """Callback classes (defined lazily: importing Keras picks the backend)."""
    import keras

    class NanGuard(keras.callbacks.Callback):
        """Stop with a message naming the batch as soon as the loss is not finite."""

        def __init__(self, dataset):
            super().__init__()
            self.dataset, self.epoch = dataset, 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            loss = float(np.asarray((logs or {}).get("loss", 0.0)))
            if not math.isfinite(loss):
                self.model.stop_training = True
                rows = self.dataset.batch_rows(self.epoch, batch)
                raise TrainingDiverged(
                    f"the loss became {loss} at epoch {self.epoch + 1}, training batch {batch} ({self.dataset.row_label} "
                    f"{rows[:8].tolist()}{'...' if len(rows) > 8 else ''}); the model was not saved past the "
                    "last checkpoint: lower training.learning_rate or set training.clipnorm")

    class Restorable:
        """Mixin for a Keras schedule callback: restore its counters on resume, report them for the checkpoint."""

        COUNTERS = ()

        def __init__(self, restore=None, **kw):
            super().__init__(**kw)
            self.restore = restore

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if self.restore:
                self.best = self.restore["best"]
                for name in self.COUNTERS:
                    setattr(self, name, self.restore[name])

        def state(self):
            return {"best": None if self.best is None else float(self.best),
                    **{name: int(getattr(self, name)) for name in self.COUNTERS}}

    class ReduceLR(Restorable, keras.callbacks.ReduceLROnPlateau):
        COUNTERS = ("wait", "cooldown_counter")

    class EarlyStop(Restorable, keras.callbacks.EarlyStopping):
        COUNTERS = ("wait", "best_epoch")

    class Checkpointer(keras.callbacks.Callback):
        """After every epoch: history row, best and last checkpoints, schedule state (in this order)."""

        def __init__(self, run, reduce_lr, early, state, samples_per_epoch, monitor):
            super().__init__()
            self.run, self.reduce_lr, self.early, self.monitor = run, reduce_lr, early, monitor
            self.best = (state or {}).get("best", [None, math.inf])
            self.samples = samples_per_epoch
            self.t0 = None

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = {k: float(np.asarray(v)) for k, v in (logs or {}).items()}
            elapsed = time.perf_counter() - self.t0
            row = {"epoch": epoch + 1, **logs, "time_s": round(elapsed, 3),
                   "samples_per_s": round(self.samples / elapsed, 2)}
            _append_history(self.run / "history.csv", row)
            val = logs.get(self.monitor, math.nan)
            if not all(math.isfinite(logs.get(k, math.nan)) for k in ("val_loss", self.monitor)):
                self.model.stop_training = True
                raise TrainingDiverged(f"the validation loss is {logs.get('val_loss')} ({self.monitor} {val}) after "
                                       f"epoch {epoch + 1}; "
                                       "the model was not saved past the last checkpoint")
            if val < self.best[1]:
                self.best = [epoch + 1, val]
                _save_model(self.model, self.run.best)
            _save_model(self.model, self.run.last)
            lr = float(np.asarray(self.model.optimizer.learning_rate))
            state = {"epoch": epoch + 1, "learning_rate": lr, "best": self.best,
                     "optimizer_iterations": int(np.asarray(self.model.optimizer.iterations)),
                     "reduce_lr": self.reduce_lr.state(), "early_stopping": self.early.state(),
                     "stopped_early": bool(self.model.stop_training), "finished": False}
            _write_json(self.run.last_state, state)

    class Progress(keras.callbacks.Callback):
        """tqdm bar per epoch with the running loss and samples/s; one summary line per epoch."""

        def __init__(self, epochs, steps, batch_size, enabled):
            super().__init__()
            self.epochs, self.steps, self.bs, self.enabled = epochs, steps, batch_size, enabled
            self.bar = None

        def on_epoch_begin(self, epoch, logs=None):
            if self.enabled:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                                leave=False, smoothing=0.1)
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if self.bar is not None:
                self.bar.update(1)
                rate = (batch + 1) * self.bs / (time.perf_counter() - self.t0)
                self.bar.set_postfix(loss=f"{float(np.asarray(logs.get('loss', np.nan))):.4g}",
                                     samples_s=f"{rate:.1f}", refresh=False)

        def on_epoch_end(self, epoch, logs=None):
            if self.bar is not None:
                elapsed = time.perf_counter() - self.t0
                self.bar.close()
                self.bar = None
                logs = logs or {}
                msg = " ".join(f"{k}={float(np.asarray(v)):.4g}" for k, v in logs.items()
                               if k in ("loss", "val_loss", "learning_rate"))
                print(f"epoch {epoch + 1}/{self.epochs}: {msg} ({self.steps * self.bs / elapsed:.1f} samples/s)",
                      flush=True)

        def on_train_end(self, logs=None):
            if self.bar is not None:
                self.bar.close()

    return NanGuard, ReduceLR, EarlyStop, Checkpointer, Progress


class TrainingDiverged(DeepCMBError):
    """The loss became NaN or infinite."""


def _append_history(path, row):
    new = not path.exists()
    fields = list(row) if new else next(csv.reader(path.open()))
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)


def _truncate_history(path, epochs):
    """Keep the history rows of the first ``epochs`` epochs (a resumed run rewrites the rest)."""
    if not path.exists():
        return
    with path.open() as f:
        rows = list(csv.reader(f))
    keep = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= epochs]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(keep)


# -- backend setup -----------------------------------------------------------------------------------

def configure_backend(seed, deterministic):
    """Seed Python, NumPy and the backend; make tensorflow ops deterministic when asked."""
    import keras

    keras.utils.set_random_seed(seed)
    if deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def distribution_scope(mode, batch_size):
    """Context in which to build and compile the model for data parallelism over several devices.

    ``auto`` uses every GPU when there are several; ``data_parallel`` uses every device (GPUs, else
    CPUs); ``none`` one device. jax: :class:`keras.distribution.DataParallel` (set globally);
    tensorflow: :class:`tf.distribute.MirroredStrategy`; torch: one device only (a message says so).

    Returns
    -------
    (context manager, str)
        The scope and a description such as ``'jax DataParallel over 4 gpu devices'``.
    """
    import contextlib

    import keras

    backend = keras.backend.backend()
    if mode == "none":
        return contextlib.nullcontext(), "single device"
    if backend == "jax":
        try:
            gpus = keras.distribution.list_devices("gpu")
        except RuntimeError:  # jax without a GPU platform
            gpus = []
        devices = gpus if gpus else keras.distribution.list_devices("cpu")
        if len(devices) < 2 or (mode == "auto" and len(gpus) < 2):
            return contextlib.nullcontext(), "single device"
        if batch_size % len(devices):
            raise ConfigError(f"training.batch_size: {batch_size} is not divisible by the {len(devices)} devices")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return contextlib.nullcontext(), f"jax DataParallel over {len(devices)} devices"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus if gpus else tf.config.list_logical_devices("CPU")
        if len(devices) < 2 or (mode == "auto" and len(gpus) < 2):
            return contextlib.nullcontext(), "single device"
        strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
        return strategy.scope(), f"tensorflow MirroredStrategy over {len(devices)} devices"
    if mode == "data_parallel":
        raise ConfigError("training.distribution: data_parallel is implemented for the jax and tensorflow "
                          "backends; with torch train on one GPU (or use KERAS_BACKEND=jax)")
    return contextlib.nullcontext(), "single device"


# -- the stage -------------------------------------------------------------------------------------

def run_train(user_config, data, out, qe=None, overwrite=False, progress=True, callbacks=()):
    """Run the training stage (or resume it).

    Parameters
    ----------
    user_config : dict
        Config as read from YAML (merged over :data:`SCHEMA`).
    data : str or Path
        Simulation file of the simulate stage.
    out : str or Path
        Run folder (created; if it holds an interrupted run of the same config and data, training
        resumes from its last checkpoint).
    qe : str or Path, optional
        QE reconstruction of ``data`` (needed when ``model.inputs`` has ``kappa_qe``).
    overwrite : bool
        Replace a run folder that holds another or a finished run.
    progress : bool
        Progress bar and one line per epoch on stdout/stderr.
    callbacks : sequence of keras.callbacks.Callback
        Extra callbacks, called after the stage's own.

    Returns
    -------
    Path
        The run folder.
    """
    from .data import MapSource, SimsBatches, channel_stats, split_rows

    cfg = resolve_config(user_config)
    mcfg, tcfg, dcfg = cfg["model"], cfg["training"], cfg["data"]
    source = MapSource(data, qe)
    source.require(mcfg["inputs"], "input maps")
    source.require(mcfg["outputs"], "output (truth) maps")
    check_model_config(mcfg, source.shape)
    n_maps = source.n_maps if dcfg["max_maps"] is None else min(source.n_maps, dcfg["max_maps"])
    splits = split_rows(n_maps, dcfg["split"], cfg["seed"])
    identity = {"config": json.loads(config_json(cfg)), "data": _data_identity(data),
                "qe": None if qe is None else _data_identity(qe, kind="qe")}
    run = RunDir(out)
    state = run.prepare(identity, overwrite)

    import keras

    from .model import build_resunet, model_spec

    configure_backend(cfg["seed"], tcfg["deterministic"])
    scope, dist_desc = distribution_scope(tcfg["distribution"], tcfg["batch_size"])
    if state is None:
        stats_rows = splits["train"][: dcfg["stats_maps"]]
        stats = channel_stats(source, mcfg["inputs"] + mcfg["outputs"], stats_rows)
        (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        _write_json(run / "normalization.json", {"maps_used": int(len(stats_rows)), "split": "train",
                                                 "stats": {k: {"mean": m, "std": s} for k, (m, s) in stats.items()}})
        np.savez(run / "splits.npz", **splits)
        _write_json(run / "run.json", {"identity": identity, **provenance_attrs(cfg, "train")})
        (run / "history.csv").unlink(missing_ok=True)
        with scope:
            model = build_resunet(mcfg, source.shape, stats, pixel_arcmin=source.pixel_arcmin)
            _compile(model, tcfg, stats, data, qe)
        initial_epoch = 0
    else:
        with scope:
            model = _load_checkpoint(run.last)
        if int(np.asarray(model.optimizer.iterations)) != state["optimizer_iterations"]:
            raise InputError(f"{run.last}: checkpoint and {run.last_state.name} disagree (interrupted while "
                             "saving?); use --overwrite to start again")
        model.optimizer.learning_rate = state["learning_rate"]
        initial_epoch = state["epoch"]
        _truncate_history(run / "history.csv", initial_epoch)
        if progress:
            print(f"resuming {run.path} after epoch {initial_epoch} (learning rate {state['learning_rate']:.3g})",
                  flush=True)
    kw = dict(workers=dcfg["workers"], use_multiprocessing=False)
    if dcfg["on_the_fly"]:
        from .onthefly import FreshBatches

        steps = tcfg["steps_per_epoch"] or max(len(splits["train"]) // tcfg["batch_size"], 1)
        train_ds = FreshBatches(data, mcfg["inputs"], mcfg["outputs"], tcfg["batch_size"], steps, seed=cfg["seed"],
                                qe_path=qe, curriculum=dcfg["noise_curriculum"], **kw)
    else:
        train_ds = SimsBatches(source, splits["train"], mcfg["inputs"], mcfg["outputs"], tcfg["batch_size"],
                               seed=cfg["seed"], shuffle=True, augment=dcfg["augment"], drop_remainder=True,
                               max_batches=tcfg["steps_per_epoch"], endless=True, split="training", **kw)
    train_ds.offset = initial_epoch * len(train_ds)
    val_ds = SimsBatches(source, splits["validation"], mcfg["inputs"], mcfg["outputs"], tcfg["batch_size"],
                         max_batches=tcfg["validation_steps"], split="validation", **kw)
    NanGuard, ReduceLR, EarlyStop, Checkpointer, Progress = _callbacks()
    rl, es = tcfg["reduce_lr"], tcfg["early_stopping"]
    monitor = monitor_key(tcfg["monitor"], mcfg["outputs"])
    reduce_lr = ReduceLR(restore=(state or {}).get("reduce_lr"), monitor=monitor, mode="min", factor=rl["factor"],
                         patience=rl["patience"], min_delta=rl["min_delta"], min_lr=rl["min_lr"])
    early = EarlyStop(restore=(state or {}).get("early_stopping"), monitor=monitor, mode="min", patience=es["patience"],
                      min_delta=es["min_delta"])
    cbs = [NanGuard(train_ds), reduce_lr, early,
           Checkpointer(run, reduce_lr, early, state, len(train_ds) * tcfg["batch_size"], monitor),
           Progress(tcfg["epochs"], len(train_ds), tcfg["batch_size"], progress), *callbacks]
    if progress:
        what = "fresh simulated maps" if dcfg["on_the_fly"] else f"{len(splits['train'])} maps"
        print(f"training {model.count_params():,} parameters on {what} "
              f"({len(train_ds)} batches of {tcfg['batch_size']} per epoch), {len(splits['validation'])} "
              f"validation maps; backend {keras.backend.backend()}, {dist_desc}", flush=True)
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
    best_model = _load_checkpoint(run.best)
    ckpt_state = run.read_state()
    _save_model(best_model, run / "model.keras", include_optimizer=False)
    card = model_card(cfg, model_spec(best_model), identity, ckpt_state["best"],
                      int(np.asarray(best_model.optimizer.iterations)))
    _write_json(run / "model.json", card)
    ckpt_state["finished"] = True
    _write_json(run.last_state, ckpt_state)
    return run.path


def monitor_key(monitor, outputs):
    """Keras log key of the validation loss that ``training.monitor`` names.

    ``"loss"`` is the weighted total (``val_loss``); a head name ``h`` is that head's own loss
    (``val_h_loss``), except for a single-head model, whose total is that head's loss.
    """
    if monitor == "loss" or len(outputs) == 1:
        return "val_loss"
    return f"val_{monitor}_loss"


def _data_identity(path, kind="sims"):
    if kind == "sims":
        return sims_identity(path)
    from ..io.reconstruction import open_reconstruction

    with open_reconstruction(path) as f:
        return {"path": str(Path(path).resolve()), "created": str(f.attrs["created"]),
                "method": str(f.attrs["method"])}


def _compile(model, tcfg, stats, data, qe=None):
    import keras

    opt = keras.optimizers.Adam(learning_rate=tcfg["learning_rate"], clipnorm=tcfg["clipnorm"])
    heads = list(tcfg["loss_weights"])
    # loss of head h = weight_h * MSE(standardised prediction, standardised truth)
    power = 1 if tcfg["loss"] == "mae" else 2
    weights = {h: tcfg["loss_weights"][h] / stats[h][1] ** power for h in heads}
    losses = {h: tcfg["loss"] for h in heads}
    if tcfg["loss"] == "fourier_mse":
        losses = {h: "mse" for h in heads}
        losses["kappa"] = _fourier_loss(data, qe)
    model.compile(optimizer=opt, loss=losses, loss_weights=weights, jit_compile=tcfg["jit_compile"])


def _fourier_loss(data, qe=None):
    """The kappa loss weighted by ``1 / (C^kk + N0)``: fiducial C^kk, the N0 of the QE of ``qe`` (default
    MV_POL with the stage defaults) at each noise level of the training file."""
    from ..cosmology import compute_spectra
    from ..io.reconstruction import estimator_settings, open_reconstruction
    from ..io.sims import geometry, open_sims, read_instruments
    from ..qe.quadratic import QuadraticEstimator
    from .losses import FourierWeightedMSE, inverse_variance_weights

    settings = {"estimator": "MV_POL"}
    if qe is not None:
        with open_reconstruction(qe) as g:
            settings = estimator_settings(g)
    with open_sims(data) as f:
        geom = geometry(f)
        instruments = read_instruments(f)
    spectra = compute_spectra({})
    qes = [QuadraticEstimator(geom, spectra, inst, **settings) for inst in instruments]
    return FourierWeightedMSE(inverse_variance_weights(geom, qes[0].clkk_grid, [q.n0_kappa for q in qes]))


def _load_checkpoint(path):
    import keras

    from . import layers, losses  # noqa: F401  (registers the custom layers and losses)

    return keras.saving.load_model(path, safe_mode=True)
