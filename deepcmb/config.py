"""YAML configuration: loading, defaults and strict validation.

A config is a nested mapping. :func:`resolve` merges it over a schema of defaults and refuses unknown
or misspelt keys (suggesting the closest known one) and values of the wrong type, naming the dotted
field in a :class:`~deepcmb.errors.ConfigError`. Range checks that need physics live with the value
objects they build (e.g. :class:`~deepcmb.geometry.FlatSkyGeometry`).
"""

import copy
import difflib
from pathlib import Path

import yaml

from .errors import ConfigError

REQUIRED = object()
"""Marker for a schema entry without a default."""


class OneOf:
    """Schema entry: a value from a fixed set of choices."""

    def __init__(self, default, *choices):
        self.default, self.choices = default, choices


class Free:
    """Schema entry: a free-form mapping or list (validated by its consumer)."""

    def __init__(self, default):
        self.default = default


def load_yaml(path):
    """Read a YAML config file into a dict, with clear errors for missing or malformed files."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def resolve(user, schema, prefix=""):
    """Merge ``user`` over the defaults of ``schema`` and validate types.

    Parameters
    ----------
    user : dict
        Values given by the user (may be partial).
    schema : dict
        Nested mapping of defaults. A leaf is a default value (its type is enforced; ``None`` means
        "optional, any type"), :data:`REQUIRED`, a :class:`OneOf` or a :class:`Free`.
    prefix : str
        Dotted path of ``user`` inside the whole config (for messages).

    Returns
    -------
    dict
        The fully resolved config.
    """
    if user is None:
        user = {}
    if not isinstance(user, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {user!r}")
    for key in user:
        if key not in schema:
            near = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f"; did you mean '{prefix}{near[0]}'?" if near else f"; known keys: {', '.join(schema)}"
            raise ConfigError(f"{prefix}{key}: unknown config key{hint}")
    out = {}
    for key, spec in schema.items():
        name = f"{prefix}{key}"
        given = key in user
        value = user.get(key)
        if isinstance(spec, dict):
            out[key] = resolve(value if given else {}, spec, prefix=f"{name}.")
        elif spec is REQUIRED:
            if not given:
                raise ConfigError(f"{name}: required")
            out[key] = value
        elif isinstance(spec, OneOf):
            value = value if given else spec.default
            if value not in spec.choices:
                raise ConfigError(f"{name}: must be one of {', '.join(map(str, spec.choices))}, got {value!r}")
            out[key] = value
        elif isinstance(spec, Free):
            out[key] = copy.deepcopy(value if given else spec.default)
        else:
            out[key] = _check_type(name, value, spec) if given else copy.deepcopy(spec)
    return out


def _check_type(name, value, default):
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return list(value)
    return value
