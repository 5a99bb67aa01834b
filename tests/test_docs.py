"""The Sphinx site in docs/ builds with warnings as errors: a docstring that is not valid reStructuredText,
a broken cross-reference or an ``automodule`` of a module that fails to import fails the test."""

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_without_warnings(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               TF_CPP_MIN_LOG_LEVEL="3")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(ROOT / "docs"),
         str(tmp_path / "html")],
        capture_output=True, text=True, env=env, timeout=900)
    elapsed = time.perf_counter() - t0
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert proc.returncode == 0, "\n".join(warnings) or proc.stderr[-3000:]
    html = (tmp_path / "html" / "benchmark.html").read_text()
    assert "nn_below_qe_n0" in html  # docs/results/bench.rst, the results stage's table, is included
    formats = (tmp_path / "html" / "formats.html").read_text()
    assert "window_w4" in formats and "model.keras" in formats  # layouts rendered from the docstrings
    print(f"docs built in {elapsed:.1f} s")
