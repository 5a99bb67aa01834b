"""Provenance attributes written into every output file."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from . import __version__


SOFTWARE = ("numpy", "scipy", "h5py", "camb", "ducc0", "lenspyx", "healpy", "keras", "tensorflow", "jax", "torch")
"""Distributions whose installed versions every output records (those installed)."""


def git_revision() -> str:
    """Git commit of deepcmb's own source checkout (with ``-dirty`` if modified).

    Only a checkout whose top folder holds this very package counts: deepcmb installed into a virtual
    environment inside another git repository does not record that repository's commit. Otherwise
    ``'installed <version>'``, or ``'unknown'`` when git cannot be asked.
    """
    here = Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        top = Path(git("rev-parse", "--show-toplevel")).resolve()
    except (OSError, subprocess.SubprocessError):
        return f"installed {__version__}"
    if top != here.parent:
        return f"installed {__version__}"
    try:
        rev, dirty = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}-dirty" if dirty else rev


def software_versions() -> dict:
    """Installed versions of :data:`SOFTWARE` and the Keras backend in use (when Keras is imported).

    Returns
    -------
    dict
        Distribution name -> version string; ``keras_backend`` -> backend name if Keras is loaded. Read
        from the installed distributions' metadata: nothing is imported.
    """
    out = {"python": sys.version.split()[0]}
    for name in SOFTWARE:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if "keras" in sys.modules:
        out["keras_backend"] = sys.modules["keras"].backend.backend()
    return out


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def config_json(config: dict) -> str:
    """Canonical JSON text of a resolved config (sorted keys), used for provenance and resume checks."""
    return json.dumps(config, sort_keys=True, default=_jsonable)


def provenance_attrs(config: dict, stage: str) -> dict:
    """Attributes every output carries.

    Parameters
    ----------
    config : dict
        The full resolved config of the stage.
    stage : str
        Name of the stage that wrote the file (``'simulate'``, ...).

    Returns
    -------
    dict
        ``deepcmb_version``, ``git_revision`` (:func:`git_revision`), ``software`` (JSON text of
        :func:`software_versions`), ``stage``, ``created`` (ISO 8601, UTC) and ``config`` (JSON text).
    """
    return {
        "deepcmb_version": __version__,
        "git_revision": git_revision(),
        "software": json.dumps(software_versions(), sort_keys=True),
        "stage": stage,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config_json(config),
    }
