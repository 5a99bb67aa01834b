"""The API reference lists every module of the package: a module added, moved or renamed without its
page in docs/api/ fails here (the docs build itself only fails on modules that are listed but missing)."""

import pkgutil
import re
from pathlib import Path

import deepcmb

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_module_has_an_api_entry():
    modules = {"deepcmb"} | {m.name for m in pkgutil.walk_packages(deepcmb.__path__, "deepcmb.")}
    listed = set()
    for page in (DOCS / "api").glob("*.rst"):
        listed |= set(re.findall(r"^\.\. automodule:: (\S+)", page.read_text(), flags=re.M))
    assert modules - listed == set(), f"modules missing from docs/api: {sorted(modules - listed)}"
    assert listed - modules == set(), f"docs/api lists modules that do not exist: {sorted(listed - modules)}"
