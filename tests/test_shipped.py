"""The presets and networks shipped with the package: found by name, and carried by the wheel unchanged.

The wheel test builds the distribution with this repository's setup.py (no download) and compares the
package data it carries with the top-level folders, the one source of truth. ``.ci/wheel_smoke`` installs
that wheel into a fresh venv and runs the shipped presets and network from another folder.
"""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from deepcmb import shipped
from deepcmb.errors import InputError
from deepcmb.pipeline import default_out, find_preset

REPO = Path(__file__).resolve().parents[1]


def test_networks_by_name_path_and_default():
    assert "quick" in shipped.networks()
    assert shipped.network("quick") == REPO / "data" / "pretrained" / "quick"
    assert shipped.network(None) == shipped.network(shipped.DEFAULT_NETWORK)
    assert shipped.network(str(REPO / "data" / "pretrained" / "quick")) == REPO / "data" / "pretrained" / "quick"
    with pytest.raises(InputError, match=r"--model nosuch: no such file or folder, and not a shipped network \(.*quick"):
        shipped.network("nosuch")


def test_a_checkout_reads_its_presets_in_place_and_writes_under_data_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no evaluate/ here: the shipped presets are used
    preset, root = find_preset("quick")
    assert shipped.root() == REPO and (preset, root) == (REPO / "evaluate" / "quick.yaml", REPO)
    assert not shipped.is_packaged(root)
    assert default_out(preset, root) == REPO / "data" / "out" / "run_quick"


def test_the_wheel_carries_every_preset_and_network_unchanged(tmp_path):
    pytest.importorskip("setuptools")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path), str(REPO)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("deepcmb-*.whl")
    prefix = f"deepcmb/{shipped.PACKAGED}/"
    with zipfile.ZipFile(wheel) as z:
        packaged = {n[len(prefix):]: z.read(n) for n in z.namelist() if n.startswith(prefix)}
    sources = [p for folder in ("sims", "train", "evaluate") for p in (REPO / folder).glob("*.yaml")]
    sources += [p for p in (REPO / "data" / "pretrained").glob("*/*") if p.is_file()]
    expected = {p.relative_to(REPO).as_posix(): p.read_bytes() for p in sources}
    assert "evaluate/quick.yaml" in expected and "data/pretrained/quick/model.keras" in expected
    assert packaged.keys() == expected.keys()
    assert all(packaged[k] == expected[k] for k in expected)
