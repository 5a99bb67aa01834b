"""YAML configuration: loading, defaults and strict validation.

A config is a nested mapping. A *schema* is a nested mapping of the same shape whose leaves say what
each value may be: a :class:`Leaf` (:class:`Int`, :class:`Number`, :class:`Bool`, :class:`Str`,
:class:`OneOf`, :class:`ListOf`, :class:`Free`, :class:`Retired`) carries the default, the type, the constraints
(``Int(1, min=1)``: an integer at least 1; ``Number(2.0, gt=0)``: a number greater than 0;
``nullable=True``: ``null`` allowed) and a one-line description that the command line shows as help.
A plain value is shorthand for a leaf of its type with that default (``None``: anything, ``null``
included).

:func:`resolve` merges a user config over a schema. It refuses unknown or misspelt keys (suggesting
the closest known one) and values that break their leaf, ``null`` for a value that may not be null
included, naming the dotted field in a :class:`~deepcmb.errors.ConfigError`. Checks that tie several
values together, or that need physics, live with the stage or value object that uses them (e.g.
:class:`~deepcmb.geometry.FlatSkyGeometry`).
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from .errors import ConfigError

REQUIRED = object()
"""Marker for a schema entry without a default."""


class Leaf:
    """A config value: default, constraints and a one-line description.

    Parameters
    ----------
    default : object
        Value used when the key is absent; :data:`REQUIRED` makes the key mandatory.
    nullable : bool
        Whether ``null`` (None) is a valid value. A default of None implies it.
    doc : str
        One line saying what the value is (with its units); the command line's help.
    """

    what = "a value"

    def __init__(self, default: Any = REQUIRED, *, nullable: bool = False, doc: str = ""):
        self.default, self.doc = default, doc
        self.nullable = nullable or default is None

    def resolve(self, name: str, given: bool, value: Any) -> Any:
        """The checked value of field ``name`` (``given``: the user set it)."""
        if not given:
            if self.default is REQUIRED:
                raise ConfigError(f"{name}: required")
            return copy.deepcopy(self.default)
        if value is None:
            if self.nullable:
                return None
            raise ConfigError(f"{name}: expected {self.describe()}, got null")
        return self.check(name, value)

    def check(self, name: str, value: Any) -> Any:
        """Check a non-null value; return it in canonical form (e.g. an int given for a float as float)."""
        return value

    def describe(self) -> str:
        """What a valid value is, in words (for messages and help)."""
        return self.what + (" or null" if self.nullable else "")

    def plural(self) -> str:
        """What a list of such values holds, in words: ``'an integer >= 1'`` -> ``'integers >= 1'``."""
        noun, _, rest = self.describe().split(" ", 1)[1].partition(" ")
        return f"{noun}s" + (f" {rest}" if rest else "")

    def fail(self, name: str, value: Any) -> NoReturn:
        raise ConfigError(f"{name}: expected {self.describe()}, got {value!r}")


def _bounds(what, min=None, max=None, gt=None, lt=None):
    """``'a number > 0'``, ``'an integer >= 1 and <= 9'``: a type and its bounds, in words."""
    parts = [f"{op} {v:g}" for op, v in ((">=", min), (">", gt), ("<=", max), ("<", lt)) if v is not None]
    return " ".join([what, " and ".join(parts)]) if parts else what


def _within(x, min, max, gt, lt):
    return ((min is None or x >= min) and (max is None or x <= max) and (gt is None or x > gt)
            and (lt is None or x < lt))


class Int(Leaf):
    """An integer (``true``/``false`` refused), optionally bounded: ``Int(32, min=1)``."""

    def __init__(self, default: Any = REQUIRED, *, min: int | None = None, max: int | None = None,
                 nullable: bool = False, doc: str = ""):
        super().__init__(default, nullable=nullable, doc=doc)
        self.min, self.max = min, max

    def describe(self) -> str:
        return _bounds("an integer", self.min, self.max) + (" or null" if self.nullable else "")

    def check(self, name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not _within(value, self.min, self.max, None, None):
            self.fail(name, value)
        return value


_EXPONENT = re.compile(r"[-+]?[0-9]+[eE][-+]?[0-9]+")
"""Exponent notation without a decimal point: a number in YAML 1.2, a string in YAML 1.1."""


class Number(Leaf):
    """A finite real number, stored as float, optionally bounded: ``Number(2.0, gt=0)``.

    ``keep_int=True`` leaves an integer an int (for a value that outputs already record as it was given).
    A string in exponent notation without a decimal point (``'1e-4'``, which YAML 1.1 reads as a string) is
    read as the number it spells.
    """

    def __init__(self, default: Any = REQUIRED, *, min: float | None = None, max: float | None = None,
                 gt: float | None = None, lt: float | None = None, nullable: bool = False, keep_int: bool = False,
                 doc: str = ""):
        super().__init__(default, nullable=nullable, doc=doc)
        self.min, self.max, self.gt, self.lt, self.keep_int = min, max, gt, lt, keep_int

    def describe(self) -> str:
        return _bounds("a number", self.min, self.max, self.gt, self.lt) + (" or null" if self.nullable else "")

    def check(self, name: str, value: Any) -> int | float:
        if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
            value = float(value)
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or not _within(value, self.min, self.max, self.gt, self.lt)):
            self.fail(name, value)
        return value if self.keep_int and isinstance(value, int) else float(value)


class _OfType(Leaf):
    """A value of one Python type (``kind``)."""

    kind: type = object

    def check(self, name: str, value: Any) -> Any:
        if not isinstance(value, self.kind):
            self.fail(name, value)
        return value


class Bool(_OfType):
    """``true`` or ``false``."""

    what, kind = "true or false", bool


class Str(_OfType):
    """A string."""

    what, kind = "a string", str


class OneOf(Leaf):
    """A value from a fixed set of choices: ``OneOf('flat', 'flat', 'curved')`` (default first)."""

    def __init__(self, default: Any, *choices: Any, doc: str = ""):
        super().__init__(default, nullable=None in choices, doc=doc)
        self.choices = choices

    def describe(self) -> str:
        return "one of " + ", ".join(map(str, self.choices))

    def plural(self) -> str:
        return "values from " + ", ".join(map(str, self.choices))

    def resolve(self, name: str, given: bool, value: Any) -> Any:
        return self.check(name, value if given else self.default)

    def check(self, name: str, value: Any) -> Any:
        # true is not 1: a choice matches only a value of its own kind (bool or not)
        if not any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in self.choices):
            raise ConfigError(f"{name}: must be one of {', '.join(map(str, self.choices))}, got {value!r}")
        return value


class ListOf(Leaf):
    """A list whose entries each satisfy ``item`` (None: anything), of ``min_len`` to ``max_len`` entries:
    ``ListOf(Number(min=0), [1.0], min_len=1)``, ``ListOf(Int(min=1), [8, 8], min_len=2, max_len=2)``."""

    def __init__(self, item: Leaf | None, default: Any = REQUIRED, *, min_len: int = 0, max_len: int | None = None,
                 nullable: bool = False, doc: str = ""):
        super().__init__(default, nullable=nullable, doc=doc)
        self.item, self.min_len, self.max_len = item, min_len, max_len

    def describe(self) -> str:
        if self.min_len == self.max_len:
            what = f"a list of {self.min_len}" + ("" if self.item is not None else " entries")
        else:
            what = "a " + ("non-empty " if self.min_len == 1 else "") + "list"
            counts = ([f"at least {self.min_len}"] if self.min_len > 1 else []) + (
                [f"at most {self.max_len}"] if self.max_len is not None else [])
            if counts:
                what += f" of {' and '.join(counts)} entries"
        if self.item is not None:
            what += f" {self.item.plural()}" if self.min_len == self.max_len else f" of {self.item.plural()}"
        return what + (" or null" if self.nullable else "")

    def check(self, name: str, value: Any) -> list:
        if (not isinstance(value, (list, tuple)) or len(value) < self.min_len
                or (self.max_len is not None and len(value) > self.max_len)):
            self.fail(name, value)
        if self.item is None:
            return list(value)
        try:
            return [self.item.check(name, v) if v is not None else self.fail(name, value) for v in value]
        except ConfigError:
            self.fail(name, value)


class Free(Leaf):
    """A free-form mapping or list, validated by its consumer."""

    def __init__(self, default: Any, doc: str = ""):
        super().__init__(default, nullable=True, doc=doc)

    def resolve(self, name: str, given: bool, value: Any) -> Any:
        return copy.deepcopy(value if given else self.default)


class Retired(Leaf):
    """A key that is no longer used: giving it is an error whose message says why (``doc``); the
    resolved config does not have it."""

    def __init__(self, why: str):
        super().__init__(None, doc=why)

    def resolve(self, name: str, given: bool, value: Any) -> NoReturn:
        raise ConfigError(f"{name}: no longer used: {self.doc}")


def leaf(spec: Any) -> Leaf:
    """The :class:`Leaf` a schema entry stands for (a plain value is a leaf of its type with that default)."""
    if isinstance(spec, Leaf):
        return spec
    if spec is REQUIRED:
        return Leaf(REQUIRED)
    if spec is None:
        return Leaf(None)
    if isinstance(spec, bool):
        return Bool(spec)
    if isinstance(spec, int):
        return Int(spec)
    if isinstance(spec, float):
        return Number(spec)
    if isinstance(spec, str):
        return Str(spec)
    if isinstance(spec, (list, tuple)):
        return ListOf(None, list(spec))
    raise TypeError(f"not a schema entry: {spec!r}")


def load_yaml(path: str | Path) -> dict:
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


def resolve(user: dict | None, schema: dict, prefix: str = "") -> dict:
    """Merge ``user`` over the defaults of ``schema`` and check every value.

    Parameters
    ----------
    user : dict or None
        Values given by the user (may be partial; None is empty).
    schema : dict
        Nested mapping whose leaves are :class:`Leaf` objects or plain defaults (see the module
        docstring).
    prefix : str
        Dotted path of ``user`` inside the whole config (for messages), e.g. ``'evaluate.'``.

    Returns
    -------
    dict
        The fully resolved config: every key of the schema, defaults filled in.
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
        if isinstance(spec, dict):
            out[key] = resolve(user.get(key) if key in user else {}, spec, prefix=f"{name}.")
        elif isinstance(spec, Retired):
            if key in user:
                spec.resolve(name, True, user[key])
        else:
            out[key] = leaf(spec).resolve(name, key in user, user.get(key))
    return out


def override(config: dict | None, assignments: Sequence[str]) -> dict:
    """A copy of ``config`` with ``KEY=VALUE`` assignments applied (the ``--set`` option).

    Parameters
    ----------
    config : dict or None
        A config as read from YAML.
    assignments : sequence of str
        ``'training.epochs=3'``: a dotted key (missing mappings on the way are made) and a value read as
        YAML (``3``, ``1.5e-9``, ``true``, ``null``, ``[EB, MV_POL]``, ``{lmin: 300}``).

    Returns
    -------
    dict
        The new config; unknown keys are found when it is resolved against its schema.
    """
    out = copy.deepcopy(config or {})
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. --set training.epochs=3")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item}: the value is not valid YAML") from None
        set_value(out, key.strip(), value, where=f"--set {item}")
    return out


def set_value(config: dict, key: str, value: Any, where: str) -> None:
    """Set the dotted ``key`` of ``config`` in place, making missing mappings on the way (``where`` names
    the source of the value in a message)."""
    *parents, last = key.split(".")
    node = config
    for i, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {'.'.join(parents[:i + 1])} is not a mapping")
    node[last] = value


def option_name(dotted: str) -> str:
    """The command-line option of a schema leaf: ``'qe.lmin'`` -> ``'--qe-lmin'``, ``'batch_size'`` ->
    ``'--batch-size'``."""
    return "--" + dotted.replace(".", "-").replace("_", "-")


def leaves(schema: dict, prefix: str = "") -> Iterator[tuple[str, Leaf]]:
    """Yield ``(dotted_name, Leaf)`` for every leaf of a schema in order (retired keys left out)."""
    for key, spec in schema.items():
        if isinstance(spec, dict):
            yield from leaves(spec, f"{prefix}{key}.")
        elif not isinstance(spec, Retired):
            yield f"{prefix}{key}", leaf(spec)


def defaults(schema: dict) -> dict:
    """The config a schema resolves an empty mapping to (raises ConfigError if a key is required)."""
    return resolve({}, schema)
