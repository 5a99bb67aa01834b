"""JSON summaries: numpy values to plain JSON types, written atomically.

Every stage's ``summary.json`` goes through :func:`write_json`, so they all read the same way: numpy
scalars and arrays become numbers and lists, and non-finite numbers (NaN, inf) become ``null``.
"""

import json
import math
import os
from pathlib import Path

import numpy as np


def plain(obj):
    """Nested dicts / lists / numpy values -> plain JSON types; non-finite floats -> None."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, np.generic):
        return plain(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path, obj):
    """Write ``plain(obj)`` as indented JSON to ``PATH.tmp`` and rename it to ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(plain(obj), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path
