"""Provenance: deepcmb's own commit only from its own checkout, and the versions of the software stack."""

import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import deepcmb
from deepcmb.provenance import git_revision, provenance_attrs, software_versions

PACKAGE = Path(deepcmb.__file__).resolve().parent


def test_every_output_records_the_software_versions():
    attrs = provenance_attrs({"a": 1}, "simulate")
    software = json.loads(attrs["software"])
    assert software == software_versions()
    for name in ("numpy", "scipy", "h5py", "camb", "ducc0", "lenspyx", "healpy", "keras"):
        assert software[name] == metadata.version(name), name


def test_revision_of_deepcmbs_own_checkout():
    if shutil.which("git") is None or not (PACKAGE.parent / ".git").exists():
        rev = git_revision()
        assert rev == f"installed {deepcmb.__version__}" or rev == "unknown"
        return
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE, capture_output=True, text=True).stdout.strip()
    assert git_revision().removesuffix("-dirty") == head


def test_installed_inside_another_repository_records_the_version_not_that_commit(tmp_path):
    if shutil.which("git") is None:
        return
    repo = tmp_path / "project"
    site = repo / ".venv" / "lib" / "site-packages"
    site.mkdir(parents=True)
    shutil.copytree(PACKAGE, site / "deepcmb", ignore=shutil.ignore_patterns("__pycache__"))
    for args in (["init", "-q"], ["-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty",
                                  "-m", "user's project"]):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-c", "import deepcmb.provenance as p; print(p.git_revision())"],
                         cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == f"installed {deepcmb.__version__}"
