"""README.rst is the front door: it must parse as reStructuredText without a warning (a table whose text
runs into a column margin, a short underline or a broken reference renders as an error block on PyPI), stay
short, and link to documentation pages that exist. The manual itself is the Sphinx site in docs/
(tests/test_docs.py builds it)."""

import re
from pathlib import Path

import docutils.core
import docutils.utils
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.rst"
BENCHMARK = ROOT / "docs" / "benchmark.rst"


def _titles(doc):
    return [n.astext() for n in doc.findall(lambda n: n.tagname == "title")]


def test_readme_parses_without_warnings():
    try:
        docutils.core.publish_doctree(
            README.read_text(), source_path=str(README),
            settings_overrides={"report_level": 2, "halt_level": 2, "warning_stream": False})
    except docutils.utils.SystemMessage as err:
        pytest.fail(f"README.rst: {err}")


def test_readme_is_short_and_links_to_existing_pages():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, len(lines)
    assert max(len(line) for line in lines) <= 110
    links = re.findall(r"<(docs/[^>]+\.rst)>`", README.read_text())
    assert links and all((ROOT / link).is_file() for link in links), links


def test_benchmark_page_has_its_sections():
    # Sphinx roles (:doc:, :mod:) are unknown to plain docutils: only the section titles are checked here,
    # warnings are the Sphinx build's job (tests/test_docs.py). The include pulls in docs/results/bench.rst.
    doc = docutils.core.publish_doctree(
        BENCHMARK.read_text(), source_path=str(BENCHMARK),
        settings_overrides={"report_level": 5, "halt_level": 5, "warning_stream": False})
    titles = _titles(doc)
    assert "The benchmark" in titles and "Benchmark overview" in titles
    assert "Overview" in titles  # the first title of the included results table
