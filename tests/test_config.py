"""Schema leaves: each constraint refuses a bad value naming the field and keeps a good one."""

import pytest
import yaml

from deepcmb.config import REQUIRED, Bool, Free, Int, ListOf, Number, OneOf, Str, defaults, leaf, leaves, resolve
from deepcmb.errors import ConfigError

SCHEMA = {
    "n": Int(4, min=1, max=8, doc="count"),
    "x": Number(2.0, gt=0, lt=10, doc="size, arcmin"),
    "y": Number(0.0, min=0, max=1),
    "w": Number(None, gt=0, keep_int=True, doc="width or null"),
    "flag": Bool(False),
    "name": Str("a"),
    "kind": OneOf("flat", "flat", "curved"),
    "shape": ListOf(Int(min=4), [8, 8], min_len=2, max_len=2),
    "levels": ListOf(Number(min=0), [1.0], min_len=1),
    "tags": ListOf(OneOf(REQUIRED, "png", "pdf"), ["png"], min_len=1),
    "few": ListOf(Int(), [1, 2], min_len=2, max_len=3),
    "free": Free({}),
    "sub": {"seed": 0, "rate": 1.5},
}


@pytest.mark.parametrize("field, value, words", [
    ("n", 0, r"n: expected an integer >= 1 and <= 8, got 0"),
    ("n", 9, r"n: expected an integer >= 1"),
    ("n", 2.0, r"n: expected an integer"),
    ("n", True, r"n: expected an integer .*, got True"),
    ("n", "3", r"n: expected an integer"),
    ("n", None, r"n: expected an integer >= 1 and <= 8, got null"),
    ("x", 0.0, r"x: expected a number > 0 and < 10, got 0\.0"),
    ("x", 10, r"x: expected a number > 0 and < 10"),
    ("x", float("nan"), r"x: expected a number"),
    ("x", float("inf"), r"x: expected a number"),
    ("x", False, r"x: expected a number"),
    ("x", "2", r"x: expected a number"),
    ("y", -0.1, r"y: expected a number >= 0 and <= 1"),
    ("y", 1.5, r"y: expected a number >= 0 and <= 1"),
    ("w", 0, r"w: expected a number > 0 or null, got 0"),
    ("flag", 1, r"flag: expected true or false, got 1"),
    ("flag", None, r"flag: expected true or false, got null"),
    ("name", 3, r"name: expected a string, got 3"),
    ("kind", "round", r"kind: must be one of flat, curved, got 'round'"),
    ("kind", None, r"kind: must be one of flat, curved, got None"),
    ("shape", [8], r"shape: expected a list of 2 integers >= 4, got \[8\]"),
    ("shape", [8, 8, 8], r"shape: expected a list of 2 integers >= 4"),
    ("shape", [8, 2], r"shape: expected a list of 2 integers >= 4"),
    ("shape", [8.0, 8], r"shape: expected a list of 2 integers >= 4"),
    ("shape", 8, r"shape: expected a list of 2 integers >= 4, got 8"),
    ("levels", [], r"levels: expected a non-empty list of numbers >= 0, got \[\]"),
    ("levels", [1.0, -1.0], r"levels: expected a non-empty list of numbers >= 0"),
    ("levels", [1.0, None], r"levels: expected a non-empty list of numbers >= 0"),
    ("levels", None, r"levels: expected a non-empty list of numbers >= 0, got null"),
    ("tags", ["png", "jpeg"], r"tags: expected a non-empty list of values from png, pdf, got \['png', 'jpeg'\]"),
    ("few", [1], r"few: expected a list of at least 2 and at most 3 entries of integers, got \[1\]"),
    ("few", [1, 2, 3, 4], r"few: expected a list of at least 2 and at most 3 entries of integers"),
])
def test_each_constraint_refuses_a_bad_value_naming_the_field(field, value, words):
    with pytest.raises(ConfigError, match=f"^{words}"):
        resolve({field: value}, SCHEMA)
    with pytest.raises(ConfigError, match=f"^cfg\\.{words}"):
        resolve({field: value}, SCHEMA, prefix="cfg.")


def test_good_values_are_kept_in_canonical_form():
    cfg = resolve({"n": 8, "x": 3, "y": 1, "w": 150, "flag": True, "name": "b", "kind": "curved", "shape": (4, 6),
                   "levels": [0, 2.5], "tags": ["pdf", "png"], "free": {"any": [None]}, "sub": {"rate": 2}}, SCHEMA)
    assert cfg == {"n": 8, "x": 3.0, "y": 1.0, "w": 150, "flag": True, "name": "b", "kind": "curved",
                   "shape": [4, 6], "levels": [0.0, 2.5], "tags": ["pdf", "png"], "few": [1, 2],
                   "free": {"any": [None]}, "sub": {"seed": 0, "rate": 2.0}}
    # an int given to a Number becomes a float (also inside a list and for a plain float default) ...
    assert type(cfg["x"]) is float and type(cfg["y"]) is float and type(cfg["sub"]["rate"]) is float
    assert [type(v) for v in cfg["levels"]] == [float, float]
    # ... unless the leaf keeps ints as given; a float stays a float
    assert type(cfg["w"]) is int and type(resolve({"w": 1.5}, SCHEMA)["w"]) is float
    assert type(cfg["n"]) is int and type(cfg["shape"]) is list


def test_exponent_notation_that_yaml_reads_as_a_string_is_a_number():
    """PyYAML (YAML 1.1) reads ``1e-4`` as a string: a Number takes it as the number it spells, in a config file
    as on the command line, and still refuses other strings and bounds."""
    text = yaml.safe_load("x: 1e-4\ny: 5E-1\n")
    assert isinstance(text["x"], str)
    cfg = resolve(text, SCHEMA)
    assert cfg["x"] == 1e-4 and cfg["y"] == 0.5 and type(cfg["x"]) is float
    for bad in ("1e", "1e-4x", "one"):
        with pytest.raises(ConfigError):
            resolve({"x": bad}, SCHEMA)


def test_defaults_and_null():
    cfg = defaults(SCHEMA)
    assert cfg["n"] == 4 and cfg["w"] is None and cfg["shape"] == [8, 8] and cfg["sub"] == {"seed": 0, "rate": 1.5}
    assert resolve({"w": None, "free": None}, SCHEMA)["w"] is None
    cfg["shape"].append(1)  # a default is copied, never shared
    assert SCHEMA["shape"].default == [8, 8]
    assert resolve({"n": None}, {"n": Int(None, min=1)})["n"] is None
    assert resolve({"n": None}, {"n": Int(1, nullable=True)})["n"] is None
    with pytest.raises(ConfigError, match="^k: required$"):
        resolve({}, {"k": Int(REQUIRED)})


def test_bool_is_not_an_int_nor_a_number_nor_a_choice_of_1():
    assert resolve({"n": 1}, SCHEMA)["n"] == 1
    for field in ("n", "x"):
        with pytest.raises(ConfigError, match=f"^{field}: expected"):
            resolve({field: True}, SCHEMA)
    with pytest.raises(ConfigError, match="^k: must be one of 0, 1, got True"):
        resolve({"k": True}, {"k": OneOf(0, 0, 1)})
    with pytest.raises(ConfigError, match="^k: expected a list of integers"):
        resolve({"k": [1, False]}, {"k": ListOf(Int(), [])})


def test_unknown_key_suggests_the_near_one():
    with pytest.raises(ConfigError, match=r"^sub\.sede: unknown config key; did you mean 'sub\.seed'\?$"):
        resolve({"sub": {"sede": 1}}, SCHEMA)
    with pytest.raises(ConfigError, match=r"^cfg\.levls: unknown config key; did you mean 'cfg\.levels'\?$"):
        resolve({"levls": [1.0]}, SCHEMA, prefix="cfg.")
    with pytest.raises(ConfigError, match="^zzz: unknown config key; known keys: n, x, y"):
        resolve({"zzz": 1}, SCHEMA)
    with pytest.raises(ConfigError, match=r"^sub: expected a mapping, got \[1\]"):
        resolve({"sub": [1]}, SCHEMA)


def test_plain_values_are_leaves_of_their_type_and_every_leaf_has_its_name():
    assert [type(leaf(v)) for v in (1, 1.0, True, "a", [1])] == [Int, Number, Bool, Str, ListOf]
    assert leaf(None).resolve("k", True, {"anything": 1}) == {"anything": 1}
    names = dict(leaves(SCHEMA))
    assert list(names)[-2:] == ["sub.seed", "sub.rate"]
    assert names["x"].doc == "size, arcmin" and names["n"].describe() == "an integer >= 1 and <= 8"
