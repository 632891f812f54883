"""The one exception tree of crpeer.

Every error crpeer raises derives from :class:`CrpeerError`. Foreign errors
(sqlite, msgpack, ssl, OS sockets) are translated where they cross into crpeer
and never reach the caller raw; the original stays chained as ``__cause__``.

::

    CrpeerError
    ├── ConfigError                  bad arguments, options or files given by the caller
    ├── CallTimeoutError             a blocking call did not finish in time (also a TimeoutError)
    ├── StoreError                   the database could not do what was asked
    │   ├── ExtensionError           crsqlite.so is missing or failed to load
    │   ├── SchemaError              a table cannot be made a CRR, or a migration failed
    │   ├── InvalidChangeError       a change batch failed validation; nothing of it was applied
    │   └── SnapshotError            a snapshot from a peer was refused or could not be installed
    ├── ProtocolError                the sync protocol was broken
    │   ├── LocalProtocolError       this side misused the protocol API (a bug in the caller)
    │   ├── RemoteProtocolError      the other peer sent something invalid; carries an ErrorCode
    │   └── ValueTooLargeError       a change holds a value larger than the remote accepts
    ├── TransportError               frames could not be moved
    │   ├── ConnectError             an address was unreachable, refused, or timed out
    │   ├── ChannelClosed            the channel is closed (cleanly or not)
    │   └── FrameTooLarge            a frame exceeded the transport's size limit
    └── SecurityError                identity, trust or encryption failed
        ├── UntrustedPeerError       the remote peer id is not in the trust store
        ├── PairingError             a join secret proof was wrong or missing
        └── IdentityError            a key or peer id is malformed or unreadable
"""

from __future__ import annotations

import enum

__all__ = [
    "CallTimeoutError",
    "ChannelClosed",
    "ConfigError",
    "ConnectError",
    "CrpeerError",
    "ErrorCode",
    "ExtensionError",
    "FrameTooLarge",
    "IdentityError",
    "InvalidChangeError",
    "LocalProtocolError",
    "PairingError",
    "ProtocolError",
    "RemoteProtocolError",
    "SchemaError",
    "SecurityError",
    "SnapshotError",
    "StoreError",
    "TransportError",
    "UntrustedPeerError",
    "ValueTooLargeError",
]


class ErrorCode(enum.IntEnum):
    """Error codes carried by the wire ``error`` message (see PROTOCOL.md)."""

    MALFORMED_FRAME = 1
    """The frame is not valid msgpack or not a known message shape."""
    UNEXPECTED_MESSAGE = 2
    """A valid message arrived in a state that does not allow it."""
    FRAME_TOO_LARGE = 3
    """A frame or batch exceeded a negotiated limit."""
    INVALID_CHANGE = 4
    """A change row failed validation (types, table, column)."""
    VERSION_MISMATCH = 5
    """The protocol versions have no overlap."""
    FLOW_CONTROL = 6
    """The sender exceeded the credit it was granted."""
    UNTRUSTED = 7
    """The peer is not allowed to sync with us."""
    INTERNAL = 8
    """This side failed; details stay local."""
    SHUTDOWN = 9
    """This side is going away."""
    SELF_CONNECTION = 10
    """The remote peer has our own site id."""
    DUPLICATE_SESSION = 11
    """Another session with this peer already exists and wins the tie-break."""
    TIMEOUT = 12
    """The peer stayed silent longer than the idle timeout."""
    SITE_ID_CLAIMED = 13
    """The HELLO's site id belongs to another authenticated peer id."""
    VALUE_TOO_LARGE = 14
    """A value is larger than the receiver's ``max_value_bytes``."""


class CrpeerError(Exception):
    """Base of every error crpeer raises."""


class ConfigError(CrpeerError):
    """The caller gave a bad argument, option or file."""


class CallTimeoutError(CrpeerError, TimeoutError):
    """A blocking call did not finish in time; the work on the loop was cancelled."""


class StoreError(CrpeerError):
    """The database could not do what was asked."""


class ExtensionError(StoreError):
    """The cr-sqlite extension is missing or failed to load."""


class SchemaError(StoreError):
    """A table cannot be made a CRR, or a migration failed."""


class InvalidChangeError(StoreError):
    """A change batch failed validation; nothing of that batch was applied."""


class SnapshotError(StoreError):
    """A snapshot received from a peer failed its checks, or could not be
    installed; the database is as it was."""


class ProtocolError(CrpeerError):
    """The sync protocol was broken."""


class LocalProtocolError(ProtocolError):
    """This side called the protocol API in a way its state does not allow."""


class RemoteProtocolError(ProtocolError):
    """The remote peer sent something invalid.

    ``code`` is what goes on the wire in the ``error`` message; the message
    text stays local (no internal details are sent to the peer).
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name.lower()}: {message}")
        self.code = code


class ValueTooLargeError(ProtocolError):
    """A change holds a value larger than the remote accepts (its
    ``max_value_bytes``, or for a remote that cannot take a value in parts,
    what fits in a frame): it cannot be sent to that remote.

    ``origin`` and ``version`` name the transaction, ``size`` is the value's
    length in bytes and ``limit`` the most the remote takes.
    """

    def __init__(self, origin: bytes, version: int, size: int, limit: int) -> None:
        super().__init__(
            f"a value of {size} bytes in transaction {version} of {origin.hex()} "
            f"exceeds the {limit} bytes the remote accepts"
        )
        self.origin = origin
        self.version = version
        self.size = size
        self.limit = limit


class TransportError(CrpeerError):
    """Frames could not be moved."""


class ConnectError(TransportError):
    """An address was unreachable, refused the connection, or timed out."""


class ChannelClosed(TransportError):
    """The channel is closed; no more frames can be sent or received."""


class FrameTooLarge(TransportError):
    """A frame exceeded the transport's size limit."""


class SecurityError(CrpeerError):
    """Identity, trust or encryption failed."""


class UntrustedPeerError(SecurityError):
    """The remote peer id is not in the trust store."""


class PairingError(SecurityError):
    """A join secret proof was wrong or missing."""


class IdentityError(SecurityError):
    """A key file or peer id is malformed or unreadable."""
