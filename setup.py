"""Build script. The metadata is in setup.cfg; this adds the package data that lives outside the package.

The presets (top-level ``sims/``, ``train/``, ``evaluate/``) and the shipped networks (``data/pretrained/``)
are the user-facing copies and the one source of truth. Building a wheel copies them into the package as
``deepcmb/_shipped/`` (same layout), where :mod:`deepcmb.shipped` finds them; an editable install reads the
checkout itself. MANIFEST.in puts the same folders into an sdist, so a wheel built from it has them too.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED = {"sims": "*.yaml", "train": "*.yaml", "evaluate": "*.yaml", "data/pretrained": "*/*"}
"""Folder -> files of it copied into deepcmb/_shipped/ (deepcmb.shipped.PACKAGED)."""


class BuildWithShippedData(build_py):
    """``build_py`` that also copies :data:`SHIPPED` into the built package."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "deepcmb" / "_shipped"
        for folder, pattern in SHIPPED.items():
            for src in sorted((HERE / folder).glob(pattern)):
                if src.is_file():
                    dst = target / folder / src.relative_to(HERE / folder)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)


setup(cmdclass={"build_py": BuildWithShippedData})
