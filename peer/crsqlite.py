"""Locating and loading the cr-sqlite extension shipped inside this package.

The library lives in ``_lib/crsqlite.so`` beside this file (the way sqlite-vec
ships its loadable extension): a platform wheel carries it, and in a source
checkout ``scripts/build-crsqlite`` builds it there. Usage::

    conn = pysqlite3.dbapi2.connect(path, isolation_level=None)
    peer.crsqlite.load(conn)

Any connection that loaded the extension writes changes crpeer can sync.
Close such a connection only after ``SELECT crsql_finalize()``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from peer.errors import ExtensionError

__all__ = ["BUILD_COMMAND", "VERSION", "bundled_path", "load", "loadable_path"]

VERSION = "0.16.3"
"""The cr-sqlite release this package is built against."""

BUILD_COMMAND = "./scripts/build-crsqlite"
"""What to run (from a source checkout's root) when the extension is missing."""

_ENV_OVERRIDE = "CRPEER_CRSQLITE"
_CHECKOUT_RECIPE = Path(__file__).resolve().parents[1] / "scripts" / "build-crsqlite"


def bundled_path() -> Path:
    """Return where this installation keeps its own ``crsqlite.so``."""
    return Path(__file__).resolve().with_name("_lib") / "crsqlite.so"


def _remedy(*, rebuild: bool) -> str:
    """Say how to get a working library, in terms this installation has."""
    if _CHECKOUT_RECIPE.is_file():
        command = f"{BUILD_COMMAND} --force" if rebuild else BUILD_COMMAND
        checkout = _CHECKOUT_RECIPE.parents[1]
        return f"build it with {command} (or ./scripts/bootstrap) in {checkout}"
    return (
        "this crpeer installation lacks its bundled library: reinstall crpeer from a "
        "platform wheel (crpeer-*-py3-none-<platform>.whl), not from a pure-Python build"
    )


def loadable_path() -> str:
    """Return the path of ``crsqlite.so`` (``$CRPEER_CRSQLITE`` overrides the bundled one).

    Raises ExtensionError, naming the file it looked for and what to do, if it
    does not exist.
    """
    override = os.environ.get(_ENV_OVERRIDE)
    if override:
        path = Path(override)
        if not path.is_file():
            raise ExtensionError(
                f"cr-sqlite extension not found at {path} (set by ${_ENV_OVERRIDE}); "
                f"point ${_ENV_OVERRIDE} at an existing crsqlite.so or unset it"
            )
        return str(path)
    path = bundled_path()
    if not path.is_file():
        raise ExtensionError(f"cr-sqlite extension not found at {path}; {_remedy(rebuild=False)}")
    return str(path)


def load(conn: Any) -> None:
    """Load cr-sqlite into ``conn`` (a pysqlite3 connection).

    Raises ExtensionError if the connection cannot load extensions or the
    library fails to load.
    """
    path = loadable_path()
    try:
        conn.enable_load_extension(True)
        try:
            conn.load_extension(path)
        finally:
            conn.enable_load_extension(False)
    except AttributeError as exc:
        raise ExtensionError(
            "this sqlite3 module cannot load extensions; use pysqlite3 "
            "(pip install pysqlite3-binary), as peer.store does"
        ) from exc
    except Exception as exc:
        raise ExtensionError(
            f"failed to load cr-sqlite from {path}: {exc}; {_remedy(rebuild=True)}"
        ) from exc
