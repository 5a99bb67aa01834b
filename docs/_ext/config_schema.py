"""Sphinx directive ``.. config-schema:: module:NAME``: the table of a stage's config schema.

Every key, its default and what it may be come from the schema's leaves (:mod:`deepcmb.config`), so the
documentation cannot drift from the code: the defaults are written once, in the schema.
"""

import importlib

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList

from deepcmb.config import REQUIRED, Free, leaves


def _cell(text):
    """One table cell of plain text: whitespace folded, reStructuredText markup characters escaped."""
    text = " ".join(str(text).split()) or " "
    for ch in "\\*|`":
        text = text.replace(ch, "\\" + ch)
    return text


class ConfigSchema(Directive):
    """``.. config-schema:: deepcmb.simulate:SCHEMA`` (option ``:prefix: evaluate.``)."""

    required_arguments = 1
    option_spec = {"prefix": str}

    def run(self):
        module, name = self.arguments[0].split(":")
        schema = getattr(importlib.import_module(module), name)
        prefix = self.options.get("prefix", "")
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 28 14 58", "",
                 "   * - key", "     - default", "     - meaning"]
        for key, leaf in leaves(schema):
            what = leaf.doc or ""
            kind = "" if isinstance(leaf, Free) else leaf.describe()
            lines += [f"   * - ``{prefix}{key}``",
                      "     - (required)" if leaf.default is REQUIRED else f"     - ``{' '.join(str(leaf.default).split())}``",
                      f"     - {_cell(what)}" + (f" ({_cell(kind)})" if kind else "")]
        node = nodes.container()
        self.state.nested_parse(StringList(lines, source=self.arguments[0]), self.content_offset, node)
        return node.children


def setup(app):
    app.add_directive("config-schema", ConfigSchema)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
