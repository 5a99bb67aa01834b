"""The run folder of ``deepcmb train``: its layout, paths, resume logic, history and saved models.

Layout of a run folder ``RUN_DIR``::

    config.yaml          the full resolved config
    run.json             config, training data identity (created, git revision, config hash) and provenance;
                         a re-run with the same config and data resumes, anything else is refused
    normalization.json   per-channel mean / std of the training split (physical units)
    splits.npz           rows of the train / validation / test splits in the simulation file
    history.csv          one row per epoch: losses (total and per head, in physical units), validation
                         losses, learning rate, time and samples/s
    checkpoints/last.keras, last.json   model + optimizer after the last finished epoch, and the state
                                        of the schedule (epoch, learning rate, plateau counters) and of
                                        the layers' random generators (dropout masks, :func:`random_state`)
    checkpoints/best.keras              the epoch with the lowest validation loss (training.monitor)
    model.keras          the final network for inference (best epoch, no optimizer)
    model.json           what the network expects and how it was trained (see :func:`~deepcmb.nn.rundir.model_card`)

Every JSON file of the folder is written by :func:`deepcmb.io.files.write_json` (keys sorted), every
model by :func:`save_model`; both write a temporary file and rename it, so a file under its final name
is whole. A run that stops (an error, a full disk, SIGTERM) before its first checkpoint leaves nothing
behind (:meth:`RunDir.discard`): it had nothing to resume from.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np

from ..errors import InputError, OutputExistsError
from ..io.files import atomic_path, check_parent_writable, writing
from ..provenance import provenance_attrs

CARD_FORMAT = "deepcmb.nn.model"
"""``format`` of ``model.json``."""


class RunDir:
    """Paths of a run folder, its resume logic and its training history.

    Parameters
    ----------
    path : str or Path
        The run folder (``--out``).
    """

    def __init__(self, path):
        self.path = Path(path)
        self.ckpt = self.path / "checkpoints"
        self.created = False

    def __truediv__(self, name):
        return self.path / name

    @property
    def last(self) -> Path:
        """Model and optimizer after the last finished epoch."""
        return self.ckpt / "last.keras"

    @property
    def last_state(self) -> Path:
        """Schedule state of :attr:`last` (epoch, learning rate, counters, best epoch)."""
        return self.ckpt / "last.json"

    @property
    def best(self) -> Path:
        """Model of the epoch with the lowest monitored validation loss."""
        return self.ckpt / "best.keras"

    @property
    def history(self) -> Path:
        """One CSV row per finished epoch."""
        return self.path / "history.csv"

    def prepare(self, identity: dict, overwrite: bool) -> dict | None:
        """Create the folder, or check that it belongs to this very run.

        Parameters
        ----------
        identity : dict
            The run's config and data identity (``run.json``'s ``identity``); file paths are ignored
            in the comparison.
        overwrite : bool
            Remove a folder that holds another or a finished run.

        Returns
        -------
        dict or None
            The state of the last checkpoint of an interrupted run of the same identity (to resume
            from), or None for a new run.

        Raises
        ------
        OutputExistsError
            The folder holds another run, or this one finished (without ``overwrite``).
        InputError
            The parent folder is missing or not writable, or the folder is not writable.
        """
        p = self.path
        if p.exists() and not p.is_dir():
            raise OutputExistsError(f"{p}: exists and is not a folder")
        check_parent_writable(p)
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
        if p.exists() and not os.access(p, os.W_OK):
            raise InputError(f"{p}: folder is not writable")
        with writing(p):
            self.created = not p.exists()
            p.mkdir(exist_ok=True)
            self.ckpt.mkdir(exist_ok=True)
        return None

    def discard(self) -> None:
        """Remove what a run that saved no checkpoint wrote: the folder if :meth:`prepare` made it, else
        its contents (an empty folder, or the files of an earlier run of the same identity that saved
        no checkpoint either)."""
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for child in self.path.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)

    def read_state(self) -> dict | None:
        """The state saved with the last checkpoint, or None if there is no complete checkpoint."""
        if not (self.last_state.exists() and self.last.exists()):
            return None
        try:
            return json.loads(self.last_state.read_text())
        except ValueError:
            raise InputError(f"{self.last_state}: unreadable checkpoint state; use --overwrite") from None

    def append_history(self, row: dict) -> None:
        """Append one epoch's row to :attr:`history` (its first row fixes the columns)."""
        path = self.history
        new = not path.exists()
        if new:
            fields = list(row)
        else:
            with path.open() as f:
                fields = next(csv.reader(f))
        with writing(path), path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)

    def truncate_history(self, epochs: int) -> None:
        """Keep the history rows of the first ``epochs`` epochs (a resumed run rewrites the rest; a row
        cut short by a full disk goes too)."""
        path = self.history
        if not path.exists():
            return
        with path.open() as f:
            rows = list(csv.reader(f))
        if not rows:
            path.unlink()
            return
        keep = [rows[0]] + [r for r in rows[1:] if len(r) == len(rows[0]) and r[0].isdigit() and int(r[0]) <= epochs]
        with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
            csv.writer(f).writerows(keep)


def _portable(identity):
    """A run's identity without file paths (moving the data does not make it another run)."""
    return {k: ({kk: vv for kk, vv in v.items() if kk != "path"} if isinstance(v, dict) and k != "config" else v)
            for k, v in identity.items()}


def save_model(model: keras.Model, path: Path, include_optimizer: bool = True) -> None:
    """Save a model atomically (Keras wants the ``.keras`` suffix, so the temporary name is ``tmp_<name>``).

    Parameters
    ----------
    model : keras.Model
    path : Path
        Final ``.keras`` path.
    include_optimizer : bool
        Save the optimizer state (a checkpoint); otherwise save an inference copy of the network alone.
    """
    with atomic_path(path, prefix="tmp_") as tmp:
        if include_optimizer:
            model.save(tmp)
        else:
            clone = keras.Model.from_config(model.get_config())
            clone.set_weights(model.get_weights())
            clone.save(tmp)


def random_state(model: keras.Model) -> dict:
    """The state of the random generators of a model's layers (each Dropout's seed generator), which a
    ``.keras`` file does not hold: what a checkpoint needs besides the weights and the optimizer for a
    resumed run to draw the same dropout masks as an uninterrupted one.

    Returns
    -------
    dict
        Layer name -> list of generator states (each ``[seed, counter]``), for the layers that have any.
    """
    out = {}
    for layer in model.layers:
        weights = {id(v) for v in layer.weights}
        states = [np.asarray(v).tolist() for v in layer.variables if id(v) not in weights]
        if states:
            out[layer.name] = states
    return out


def set_random_state(model: keras.Model, state: dict, where: Path) -> None:
    """Restore the :func:`random_state` saved with a checkpoint into the model loaded from it.

    Raises
    ------
    InputError
        The saved state does not match the model's generators (``where`` names the checkpoint).
    """
    for layer in model.layers:
        weights = {id(v) for v in layer.weights}
        variables = [v for v in layer.variables if id(v) not in weights]
        saved = state.get(layer.name, [])
        if len(saved) != len(variables):
            raise InputError(f"{where}: random state of layer {layer.name} does not match the checkpoint's model; "
                             "use --overwrite to start again")
        for v, value in zip(variables, saved):
            v.assign(np.asarray(value, dtype=v.dtype))


def model_card(cfg: dict, spec: dict, identity: dict, history_best: list, steps: int) -> dict:
    """The ``model.json`` written next to ``model.keras``: what the network expects and how it was trained.

    Parameters
    ----------
    cfg : dict
        The resolved training config.
    spec : dict
        :func:`deepcmb.nn.model.model_spec` of the network.
    identity : dict
        The run's identity (``data`` and ``qe`` entries: the training files).
    history_best : list
        ``[epoch, validation loss]`` of the best epoch (1-based epoch).
    steps : int
        Optimizer steps of the saved network.

    Returns
    -------
    dict
        ``format``, ``format_version``; ``inputs`` (the maps the network file takes, e.g. Q, U),
        ``channels`` (what its convolutions read, e.g. E, B), ``outputs``, ``shape`` (ny, nx),
        ``pixel_arcmin``, ``beam_fwhm_arcmin``, ``noise_p_uk_arcmin`` (training noise levels, µK-arcmin),
        ``normalization`` (name -> mean, std in physical units); ``trained_on`` and ``qe_input`` (identity
        of the training files), ``best_epoch``, ``best_val_loss``, ``optimizer_steps``, ``config`` (the
        resolved training config) and ``provenance`` (git revision, versions). A shipped network's card
        also has ``training`` (epochs, seconds, samples/s) and may have ``measured`` (the evaluation
        summary of its test maps; ``benchmarks/ship_network.py``).
    """
    return {
        "format": CARD_FORMAT, "format_version": 1,
        "inputs": spec["inputs"], "channels": spec["channels"], "outputs": spec["outputs"],
        "shape": list(spec["shape"]), "pixel_arcmin": spec["pixel_arcmin"],
        "beam_fwhm_arcmin": spec["beam_fwhm_arcmin"], "noise_p_uk_arcmin": spec["noise_p_uk_arcmin"],
        "normalization": {k: {"mean": m, "std": s} for k, (m, s) in spec["stats"].items()},
        "trained_on": identity["data"], "qe_input": identity["qe"],
        "best_epoch": history_best[0], "best_val_loss": history_best[1], "optimizer_steps": steps,
        "config": cfg, "provenance": {k: v for k, v in provenance_attrs(cfg, "train").items() if k != "config"},
    }
