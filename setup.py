"""Build hooks: compile the bundled cr-sqlite extension and tag the wheel as platform-specific.

Everything declarative lives in pyproject.toml. This file only makes
``pip wheel .`` / ``python -m build`` run ``scripts/build-crsqlite`` (the same
offline recipe a clone uses) before the package files are collected, and marks
the wheel ``py3-none-<platform>``: it carries a native library that any
CPython 3 loads, but only on the platform it was built for.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
EXTENSION = ROOT / "peer" / "_lib" / "crsqlite.so"
RECIPE = ROOT / "scripts" / "build-crsqlite"


class BuildPyWithExtension(build_py):
    """Build ``peer/_lib/crsqlite.so`` (a no-op when it is up to date), then copy the package."""

    def run(self) -> None:
        if not RECIPE.is_file():
            raise SystemExit(f"crpeer build: {RECIPE} is missing from this source tree")
        result = subprocess.run(["bash", str(RECIPE)], cwd=ROOT, check=False)
        if result.returncode != 0 or not EXTENSION.is_file():
            raise SystemExit(
                f"crpeer build: building the cr-sqlite extension failed (exit {result.returncode});"
                " the lines above say which prerequisite is missing"
            )
        super().run()


class DistributionWithNativeLibrary(Distribution):
    """A distribution that carries a native library, so its files install as platform files."""

    def has_ext_modules(self) -> bool:
        return True


class PlatformWheel(bdist_wheel):
    """Tag the wheel ``py3-none-<platform>``: not pure Python, but free of any CPython ABI."""

    def get_tag(self) -> tuple[str, str, str]:
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(
    distclass=DistributionWithNativeLibrary,
    cmdclass={"build_py": BuildPyWithExtension, "bdist_wheel": PlatformWheel},
)
