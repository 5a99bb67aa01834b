"""README.rst is the user's manual: it must parse as reStructuredText without a warning (a table whose text
runs into a column margin, a short underline or a broken reference renders as an error block on PyPI)."""

from pathlib import Path

import docutils.core
import docutils.utils
import pytest

README = Path(__file__).resolve().parents[1] / "README.rst"


def test_readme_parses_without_warnings():
    try:
        doc = docutils.core.publish_doctree(
            README.read_text(), source_path=str(README),
            settings_overrides={"report_level": 2, "halt_level": 2, "warning_stream": False})
    except docutils.utils.SystemMessage as err:
        pytest.fail(f"README.rst: {err}")
    titles = [n.astext() for n in doc.findall(lambda n: n.tagname == "title")]
    assert "The benchmark" in titles and "Benchmark overview" in titles
