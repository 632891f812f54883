"""The authentication frames: their kinds, encoding and parsing (no state).

Before the first sync frame, both sides of a TLS channel exchange these
(PROTOCOL.md, "Authentication"; :mod:`peer.handshake` decides what to send)::

    AUTH  [20, trusts_you: bool, can_pair: bool, nonce: bin 32]    both sides
    ROLES [22, can_host: bool, can_join: bool]                      both, to pair
    PROOF [21, proof: bin 32]                                       a joiner, then its host
    ERROR [8, 0, code, reason]                                      a refusal

msgpack arrays, without the sync frames' numbering. Parsing never lets a
msgpack error out: it raises RemoteProtocolError with its ErrorCode.
"""

from __future__ import annotations

import enum
from typing import Any

import msgpack

from peer import pairing
from peer.errors import ErrorCode, PairingError, RemoteProtocolError, UntrustedPeerError
from peer.messages import Error, MessageType, encode

__all__ = [
    "FIELDS",
    "MAX_AUTH_FRAME",
    "AuthFrame",
    "Refusal",
    "frame_kind",
    "pack_frame",
    "parse_frame",
    "refusal_frame",
    "remote_refusal",
]

MAX_AUTH_FRAME = 256
"""The largest authentication frame accepted, in bytes (the default limit)."""


class AuthFrame(enum.IntEnum):
    """Kinds of authentication frame: the first element of each.

    AUTH, PROOF and ROLES exist only here; ERROR is the sync protocol's
    (:class:`~peer.messages.Error`, frame number 0), so a refusal reads the
    same before and after authentication.
    """

    AUTH = 20
    PROOF = 21
    ROLES = 22
    ERROR = MessageType.ERROR.value


class Refusal(enum.StrEnum):
    """The reasons this side sends in an ERROR frame (besides the guard's own
    and :func:`~peer.pairing_guard.PairingGuard.expiry_reason`). Short and
    fixed: no local detail reaches the remote."""

    NOT_TRUSTED = "not trusted"
    CANNOT_PAIR = "cannot pair"
    WRONG_SECRET = pairing.WRONG_SECRET
    """Our check of the joiner's proof failed: the joiner stops retrying."""
    PAIRING_FAILED = "pairing failed"
    BAD_FRAME = "bad authentication frame"
    TIMED_OUT = "authentication timed out"
    TLS_REQUIRED = "TLS required"
    UNUSABLE_CERTIFICATE = "unusable certificate"


FIELDS: dict[int, tuple[type, ...]] = {
    AuthFrame.AUTH: (bool, bool, bytes),
    AuthFrame.ROLES: (bool, bool),
    AuthFrame.PROOF: (bytes,),
}
"""The fields of each kind but ERROR, by type (a flag is a msgpack bool, never 0 or 1)."""
_REMOTE_REASON = 80
"""Characters of the remote's refusal reason kept."""


def refusal_frame(code: ErrorCode, reason: str) -> bytes:
    """The ERROR frame ``[8, 0, code, reason]`` that refuses a remote."""
    return encode(Error(code, reason), 0)


def pack_frame(kind: AuthFrame, *fields: Any) -> bytes:
    """The frame ``[kind, *fields]``."""
    packed: bytes = msgpack.packb([int(kind), *fields], use_bin_type=True)
    return packed


def parse_frame(frame: bytes, limit: int) -> list[Any]:
    """The msgpack array of an authentication frame of at most ``limit`` bytes.

    Raises RemoteProtocolError: FRAME_TOO_LARGE, or MALFORMED_FRAME for
    anything that is not an array starting with an integer kind.
    """
    if len(frame) > limit:
        raise RemoteProtocolError(ErrorCode.FRAME_TOO_LARGE, "auth frame too large")
    try:
        body = msgpack.unpackb(frame, raw=False)
    except Exception as exc:  # msgpack raises several types; none leaves this module
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "auth frame is not msgpack") from exc
    if not isinstance(body, list) or not body or not isinstance(body[0], int):
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "auth frame must be [kind, ...]")
    return body


def frame_kind(body: list[Any]) -> AuthFrame | None:
    """The frame's kind if its length fits that kind (an ERROR: an integer code), else None."""
    kind = body[0]
    if kind == AuthFrame.ERROR:
        return AuthFrame.ERROR if len(body) == 4 and isinstance(body[2], int) else None
    fields = FIELDS.get(kind)
    if fields is None or len(body) != len(fields) + 1:
        return None
    return AuthFrame(kind)


def remote_refusal(body: list[Any]) -> PairingError | UntrustedPeerError | RemoteProtocolError:
    """The error a remote's ERROR frame means; RemoteProtocolError if ``body`` is none."""
    if frame_kind(body) is not AuthFrame.ERROR:
        return RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "not an ERROR frame")
    code, reason = body[2], str(body[3])[:_REMOTE_REASON]
    if reason == pairing.WRONG_SECRET:
        return PairingError(f"the remote refused us: {reason}")
    return UntrustedPeerError(f"the remote refused us (code {code}: {reason!r})")
