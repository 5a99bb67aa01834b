"""Provenance attributes written into every output file."""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path

import numpy as np

from . import __version__


def git_revision() -> str:
    """Git commit of the deepcmb source tree (with ``-dirty`` if modified), or ``'unknown'``."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}-dirty" if dirty else rev


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
        ``deepcmb_version``, ``git_revision``, ``stage``, ``created`` (ISO 8601, UTC) and ``config``
        (JSON text).
    """
    return {
        "deepcmb_version": __version__,
        "git_revision": git_revision(),
        "stage": stage,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config_json(config),
    }
