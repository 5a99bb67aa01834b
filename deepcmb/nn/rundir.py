"""The run folder of ``deepcmb train``: its paths, resume logic, JSON and CSV files, saved models.

Layout (see :mod:`deepcmb.nn.train`)::

    config.yaml, run.json, normalization.json, splits.npz, history.csv, model.keras, model.json
    checkpoints/last.keras, checkpoints/last.json, checkpoints/best.keras

Every JSON file of the folder is written by :func:`write_run_json` (keys sorted, indent 1, no trailing
newline), every model by :func:`save_model`; both write a temporary file and rename it, so a file under
its final name is whole.
"""

import csv
import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np

from ..errors import InputError, OutputExistsError
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
            The parent folder is missing, or the folder is not writable.
        """
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
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)

    def truncate_history(self, epochs: int) -> None:
        """Keep the history rows of the first ``epochs`` epochs (a resumed run rewrites the rest)."""
        path = self.history
        if not path.exists():
            return
        with path.open() as f:
            rows = list(csv.reader(f))
        keep = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= epochs]
        with path.open("w", newline="") as f:
            csv.writer(f).writerows(keep)


def _portable(identity):
    """A run's identity without file paths (moving the data does not make it another run)."""
    return {k: ({kk: vv for kk, vv in v.items() if kk != "path"} if isinstance(v, dict) and k != "config" else v)
            for k, v in identity.items()}


def write_run_json(path: Path, obj: dict) -> None:
    """Write a JSON file of the run folder atomically (``PATH.tmp``, then renamed).

    Keys sorted, indent 1, no trailing newline; numpy values become plain numbers and lists, anything
    else JSON cannot hold its ``str``. (Not :func:`deepcmb.jsonio.write_json`, whose files differ:
    keys in insertion order, a trailing newline, non-finite numbers as null.)
    """
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


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
    tmp = path.with_name("tmp_" + path.name)
    if include_optimizer:
        model.save(tmp)
    else:
        clone = keras.Model.from_config(model.get_config())
        clone.set_weights(model.get_weights())
        clone.save(tmp)
    os.replace(tmp, path)


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
    """
    return {
        "format": CARD_FORMAT, "format_version": 1,
        "inputs": spec["inputs"], "outputs": spec["outputs"], "shape": list(spec["shape"]),
        "pixel_arcmin": spec["pixel_arcmin"],
        "normalization": {k: {"mean": m, "std": s} for k, (m, s) in spec["stats"].items()},
        "trained_on": identity["data"], "qe_input": identity["qe"],
        "best_epoch": history_best[0], "best_val_loss": history_best[1], "optimizer_steps": steps,
        "config": cfg, "provenance": {k: v for k, v in provenance_attrs(cfg, "train").items() if k != "config"},
    }
