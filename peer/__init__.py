"""crpeer: peer-to-peer replication of cr-sqlite databases.

The store (:mod:`peer.store`) holds a CRDT SQLite database; the peer syncs it
with others over the transports in the ``transports`` package.
"""

from importlib.metadata import PackageNotFoundError, version

from peer.errors import CrpeerError
from peer.store import ApplyResult, Change, Cursor, Store

try:
    __version__ = version("crpeer")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["ApplyResult", "Change", "CrpeerError", "Cursor", "Store", "__version__"]
