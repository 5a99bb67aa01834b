"""What deepcmb ships beside its code: the presets and the pretrained networks, found by name.

One source of truth, the repository's top-level folders::

    sims/*.yaml, train/*.yaml, evaluate/*.yaml   presets of the stages and of ``deepcmb run``
    data/pretrained/<name>/                      shipped networks (model.keras, model.json: the model
                                                 card, config.yaml, sims.yaml, history.csv, and
                                                 calibration.h5: its per-map uncertainty, deepcmb calibrate)

A source checkout (an editable install) reads them in place. A wheel or an sdist carries copies of them
as package data under ``deepcmb/_shipped/``, in the same layout, made by ``setup.py`` when the package
is built; they are read with :mod:`importlib.resources`. :func:`root` is whichever of the two this
installation has, and is the default root of relative paths in presets.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from .errors import InputError

PACKAGED = "_shipped"
"""Folder of the package that holds the copies in a built distribution."""

DEFAULT_NETWORK = "quick"
"""The network ``deepcmb reconstruct --method nn`` uses without ``--model``."""


def checkout() -> Path | None:
    """The source checkout this package is imported from (it has ``evaluate/`` and ``sims/``), or None."""
    top = Path(__file__).resolve().parents[1]
    return top if (top / "evaluate").is_dir() and (top / "sims").is_dir() else None


def root() -> Path:
    """The folder holding the shipped ``sims/``, ``train/``, ``evaluate/`` and ``data/pretrained/``.

    The package data of an installed distribution, else the source checkout.

    Raises
    ------
    InputError
        If neither exists (a package built without its data).
    """
    packaged = files("deepcmb") / PACKAGED
    if packaged.is_dir():
        return Path(str(packaged))
    top = checkout()
    if top is None:
        raise InputError("this deepcmb installation has neither its package data (deepcmb/_shipped) nor a "
                         "source checkout: reinstall it from a wheel or sdist built by its setup.py")
    return top


def is_packaged(path: Path) -> bool:
    """Whether ``path`` lies in the package data of an installed distribution (not a place to write)."""
    return (files("deepcmb") / PACKAGED).is_dir() and Path(path).resolve().is_relative_to(root().resolve())


def networks() -> list[str]:
    """Names of the shipped networks (folders of ``data/pretrained`` holding a ``model.keras``)."""
    base = root() / "data" / "pretrained"
    return sorted(p.name for p in base.iterdir() if (p / "model.keras").is_file()) if base.is_dir() else []


def network(model: str | Path | None) -> Path:
    """A network given by path or by name.

    Parameters
    ----------
    model : str, Path or None
        A run folder of ``deepcmb train`` or a ``.keras`` file; or the name of a shipped network
        (:func:`networks`, e.g. ``'quick'``); None for :data:`DEFAULT_NETWORK`.

    Returns
    -------
    Path
        The existing path (a shipped network's folder).

    Raises
    ------
    InputError
        If ``model`` is neither an existing path nor a shipped network's name.
    """
    model = DEFAULT_NETWORK if model is None else model
    if Path(model).exists():
        return Path(model)
    names = networks()
    if str(model) in names:
        return root() / "data" / "pretrained" / str(model)
    raise InputError(f"--model {model}: no such file or folder, and not a shipped network "
                     f"({', '.join(names) or 'none in this installation'})")
