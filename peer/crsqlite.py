"""Locating and loading the cr-sqlite extension shipped inside this package.

``scripts/build-crsqlite`` builds ``_lib/crsqlite.so`` beside this file (the way
sqlite-vec ships its loadable extension). Usage::

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

__all__ = ["BUILD_COMMAND", "VERSION", "load", "loadable_path"]

VERSION = "0.16.3"
"""The cr-sqlite release this package is built against."""

BUILD_COMMAND = "./scripts/build-crsqlite"
"""What to run (from the repository root) when the extension is missing."""

_ENV_OVERRIDE = "CRPEER_CRSQLITE"


def loadable_path() -> str:
    """Return the path of ``crsqlite.so`` (``$CRPEER_CRSQLITE`` overrides it).

    Raises ExtensionError, saying what to run, if the file does not exist.
    """
    override = os.environ.get(_ENV_OVERRIDE)
    path = Path(override) if override else Path(__file__).with_name("_lib") / "crsqlite.so"
    if not path.is_file():
        raise ExtensionError(
            f"cr-sqlite extension not found at {path}; build it with {BUILD_COMMAND} "
            f"(or ./scripts/bootstrap, which also sets up the virtualenv)"
        )
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
            f"failed to load cr-sqlite from {path}: {exc}; rebuild it with {BUILD_COMMAND} --force"
        ) from exc
