"""Sphinx directive ``.. notebook-cells:: PATH.ipynb``: a notebook's cells as a page, read from the notebook.

Markdown cells become paragraphs (``#`` headings become rubrics, ```code``` literals), code cells become
Python blocks, so the page cannot drift from the notebook the test suite runs. Outputs are not shown
(the notebook is stored without them).
"""

import json
import re
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList


def _markdown_lines(source):
    """reStructuredText lines of a markdown cell written in the plain subset the notebooks use."""
    lines = []
    for line in source.splitlines():
        heading = re.match(r"#+\s+(.*)", line)
        if heading:
            lines += [f".. rubric:: {heading.group(1)}", ""]
        else:
            lines.append(re.sub(r"`([^`]+)`", r"``\1``", line))
    return lines + [""]


class NotebookCells(Directive):
    """``.. notebook-cells:: ../notebooks/quickstart.ipynb`` (path relative to the page)."""

    required_arguments = 1

    def run(self):
        env = self.state.document.settings.env
        path = (Path(env.doc2path(env.docname)).parent / self.arguments[0]).resolve()
        env.note_dependency(str(path))
        cells = json.loads(path.read_text())["cells"]
        lines = []
        for cell in cells:
            source = "".join(cell["source"])
            if cell["cell_type"] == "markdown":
                lines += _markdown_lines(source)
            elif cell["cell_type"] == "code":
                lines += [".. code-block:: python", ""] + ["   " + ln for ln in source.splitlines()] + [""]
        node = nodes.section()
        node.document = self.state.document
        self.state.nested_parse(StringList(lines, str(path)), self.content_offset, node)
        return node.children


def setup(app):
    app.add_directive("notebook-cells", NotebookCells)
    return {"parallel_read_safe": True}
