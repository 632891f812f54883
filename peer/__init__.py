"""crpeer: peer-to-peer replication of cr-sqlite databases.

The store (:mod:`peer.store`) holds a CRDT SQLite database; the peer syncs it
with others over the transports in the ``transports`` package.
"""

from peer.errors import CrpeerError
from peer.store import ApplyResult, Change, Cursor, Store

__all__ = ["ApplyResult", "Change", "CrpeerError", "Cursor", "Store"]
