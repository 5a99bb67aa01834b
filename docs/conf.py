"""Sphinx configuration of the deepcmb documentation.

Build with ``python3 -m sphinx -b html docs docs/_build/html`` from the repository root. The build needs
no network: no intersphinx, MathJax is only referenced by the HTML pages.
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
sys.path.insert(0, os.path.abspath("_ext"))

import deepcmb  # noqa: E402

project = "deepcmb"
author = "the deepcmb authors"
copyright = "the deepcmb authors, MIT licence"
version = release = deepcmb.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax", "config_schema", "notebook_cells"]

# Files written by the pipeline and pulled in with ``.. include::``; they are not pages of their own.
exclude_patterns = ["_build", "_ext", "results/*"]

napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_inherit_docstrings = False  # Keras's own docstrings are not this project's reStructuredText
autodoc_default_options = {"show-inheritance": True}

html_theme = "alabaster"
html_static_path = []
html_title = f"deepcmb {release}"
