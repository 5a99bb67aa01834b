"""Keras callbacks of the training stage: NaN guard, resumable schedules, checkpoints, progress.

:class:`Checkpointer` keeps the run folder (:class:`~deepcmb.nn.rundir.RunDir`) consistent after every
epoch; :class:`ReduceLR` and :class:`EarlyStop` are Keras' schedules whose counters it saves and a
resumed run restores, and it saves the state of the dropout layers' random generators
(:func:`~deepcmb.nn.rundir.random_state`), so an interrupted run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time

import keras
import numpy as np

from ..errors import DeepCMBError
from ..io.files import write_json
from ..progress import Progress, format_duration
from .rundir import random_state, save_model

log = logging.getLogger(__name__)


class TrainingDiverged(DeepCMBError):
    """The loss became NaN or infinite."""


class NanGuard(keras.callbacks.Callback):
    """Stop with a message naming the batch as soon as the loss is not finite.

    Parameters
    ----------
    dataset : SimsBatches or FreshBatches
        The training data (its ``batch_rows`` and ``row_label`` name the maps of the batch).
    """

    def __init__(self, dataset):
        super().__init__()
        self.dataset, self.epoch = dataset, 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = float(np.asarray((logs or {}).get("loss", 0.0)))
        if not math.isfinite(loss):
            self.model.stop_training = True
            rows = self.dataset.batch_rows(self.epoch, batch)
            raise TrainingDiverged(
                f"the loss became {loss} at epoch {self.epoch + 1}, training batch {batch} ({self.dataset.row_label} "
                f"{rows[:8].tolist()}{'...' if len(rows) > 8 else ''}); the model was not saved past the "
                "last checkpoint: lower training.learning_rate or set training.clipnorm")


class Restorable:
    """Mixin for a Keras schedule callback: restore its counters on resume, report them for the checkpoint.

    Parameters
    ----------
    restore : dict, optional
        The callback's :meth:`state` saved with the checkpoint to resume from.
    **kw
        Arguments of the Keras callback.
    """

    COUNTERS = ()
    """Names of the integer counters to save and restore (besides ``best``)."""

    def __init__(self, restore=None, **kw):
        super().__init__(**kw)
        self.restore = restore

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        if self.restore:
            self.best = self.restore["best"]
            for name in self.COUNTERS:
                setattr(self, name, self.restore[name])

    def state(self) -> dict:
        """``best`` and the :attr:`COUNTERS`, as plain JSON values."""
        return {"best": None if self.best is None else float(self.best),
                **{name: int(getattr(self, name)) for name in self.COUNTERS}}


class ReduceLR(Restorable, keras.callbacks.ReduceLROnPlateau):
    """:class:`keras.callbacks.ReduceLROnPlateau` that resumes where it stopped."""

    COUNTERS = ("wait", "cooldown_counter")


class EarlyStop(Restorable, keras.callbacks.EarlyStopping):
    """:class:`keras.callbacks.EarlyStopping` that resumes where it stopped."""

    COUNTERS = ("wait", "best_epoch")


class Checkpointer(keras.callbacks.Callback):
    """After every epoch: history row, best and last checkpoints, schedule state (in this order).

    Parameters
    ----------
    run : RunDir
    reduce_lr : ReduceLR
    early : EarlyStop
    state : dict or None
        State of the checkpoint the run resumes from (None for a new run).
    samples_per_epoch : int
        Training maps per epoch (for the samples/s column).
    monitor : str
        Keras log key of the validation loss that picks the best epoch.
    """

    def __init__(self, run, reduce_lr, early, state, samples_per_epoch, monitor):
        super().__init__()
        self.run, self.reduce_lr, self.early, self.monitor = run, reduce_lr, early, monitor
        self.best = (state or {}).get("best", [None, math.inf])
        self.samples = samples_per_epoch
        self.t0 = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = {k: float(np.asarray(v)) for k, v in (logs or {}).items()}
        elapsed = time.perf_counter() - self.t0
        row = {"epoch": epoch + 1, **logs, "time_s": round(elapsed, 3),
               "samples_per_s": round(self.samples / elapsed, 2)}
        self.run.append_history(row)
        val = logs.get(self.monitor, math.nan)
        if not all(math.isfinite(logs.get(k, math.nan)) for k in ("val_loss", self.monitor)):
            self.model.stop_training = True
            raise TrainingDiverged(f"the validation loss is {logs.get('val_loss')} ({self.monitor} {val}) after "
                                   f"epoch {epoch + 1}; "
                                   "the model was not saved past the last checkpoint")
        if val < self.best[1]:
            self.best = [epoch + 1, val]
            save_model(self.model, self.run.best)
        save_model(self.model, self.run.last)
        lr = float(np.asarray(self.model.optimizer.learning_rate))
        state = {"epoch": epoch + 1, "learning_rate": lr, "best": self.best,
                 "optimizer_iterations": int(np.asarray(self.model.optimizer.iterations)),
                 "reduce_lr": self.reduce_lr.state(), "early_stopping": self.early.state(),
                 "random_state": random_state(self.model),
                 "stopped_early": bool(self.model.stop_training), "finished": False}
        write_json(self.run.last_state, state, sort_keys=True)


class TimeLimit(keras.callbacks.Callback):
    """Stop training after the epoch in which ``minutes`` of wall time have passed since training began.

    Placed after :class:`Checkpointer`, so the epoch is saved first and the stop is not recorded as early
    stopping: the run stays resumable.

    Parameters
    ----------
    minutes : float
        Wall-time budget of this call, minutes.
    """

    def __init__(self, minutes: float):
        super().__init__()
        self.seconds = 60.0 * minutes
        self.reached = False
        self.t0 = 0.0

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if time.perf_counter() - self.t0 >= self.seconds:
            self.reached = self.model.stop_training = True


class TrainingProgress(keras.callbacks.Callback):
    """Progress of training through :mod:`deepcmb.progress`, and one log record per epoch.

    Within an epoch, the batches done and the running loss (a bar, or a record every
    :data:`deepcmb.progress.INTERVAL_S` seconds); after it, ``epoch k/N, loss ..., val_loss ...,
    learning_rate ..., S samples/s, elapsed T, ETA T'``, where the ETA assumes every remaining epoch
    takes the mean time of the epochs run so far (early stopping may end sooner).

    Parameters
    ----------
    epochs : int
    steps : int
        Batches per epoch.
    batch_size : int
    enabled : bool
        Show anything at all.
    """

    def __init__(self, epochs: int, steps: int, batch_size: int, enabled: bool):
        super().__init__()
        self.epochs, self.steps, self.bs, self.enabled = epochs, steps, batch_size, enabled
        self.bar = self.first = None
        self.t0 = self.t_start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.enabled:
            self.t0 = time.monotonic()
            if self.first is None:  # a resumed run starts past epoch 0
                self.first, self.t_start = epoch, self.t0
            self.bar = Progress(self.steps, f"epoch {epoch + 1}/{self.epochs}", "batch", leave=False, log=log)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.update(1, loss=f"{float(np.asarray((logs or {}).get('loss', np.nan))):.4g}")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.bar is None:
            return
        self.bar.close()
        self.bar = None
        now = time.monotonic()
        elapsed = now - self.t_start
        eta = (self.epochs - epoch - 1) * elapsed / (epoch + 1 - self.first)
        metrics = "".join(f", {k} {float(np.asarray(v)):.4g}" for k, v in (logs or {}).items()
                          if k in ("loss", "val_loss", "learning_rate"))
        log.info("epoch %d/%d%s, %.1f samples/s, elapsed %s, ETA %s", epoch + 1, self.epochs, metrics,
                 self.steps * self.bs / (now - self.t0), format_duration(elapsed), format_duration(eta))

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.close()
