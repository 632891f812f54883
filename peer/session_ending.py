"""How a failure ends a session: what the driver keeps, what it tells the remote.

:func:`ending_for` maps an exception raised out of a
:class:`~peer.session.SessionDriver`'s run (its hello, its read loop, the
applies they wait on) to an :class:`Ending`. Pure but for one log line;
called on the peer's event loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from peer.errors import (
    ChannelClosed,
    CrpeerError,
    ErrorCode,
    InvalidChangeError,
    LocalProtocolError,
    RemoteProtocolError,
    StoreError,
    TransportError,
)

__all__ = ["Ending", "ending_for"]


@dataclass(frozen=True)
class Ending:
    """How one failure ends a session."""

    error: CrpeerError | None
    """The session's error from now on (None: it ended without one)."""
    code: ErrorCode | None
    """The code to send the remote in an ERROR before closing the channel
    (None: nothing to send; the channel is gone or the session closed)."""


def ending_for(exc: Exception, address: str, log: logging.Logger) -> Ending | None:
    """The ending for ``exc``, raised while the session with ``address`` ran.

    - RemoteProtocolError: kept, its own code sent;
    - InvalidChangeError: kept, INVALID_CHANGE sent;
    - StoreError: kept, INTERNAL sent (logged as an error);
    - TimeoutError (the remote was silent past the idle timeout): a
      RemoteProtocolError(TIMEOUT) kept and sent;
    - TransportError: kept, nothing sent; ChannelClosed (the remote hung
      up): not an error;
    - LocalProtocolError (a frame in flight when the session had closed):
      not an error, nothing sent.

    Returns None for any other exception: the caller lets it propagate.
    """
    if isinstance(exc, RemoteProtocolError):
        log.info("session %s failed: %s", address, exc)  # an event says it
        return Ending(exc, exc.code)
    if isinstance(exc, InvalidChangeError):
        log.info("session %s sent invalid changes: %s", address, exc)
        return Ending(exc, ErrorCode.INVALID_CHANGE)
    if isinstance(exc, StoreError):
        log.error("session %s: store failed: %s", address, exc)
        return Ending(exc, ErrorCode.INTERNAL)
    if isinstance(exc, TimeoutError):
        return Ending(
            RemoteProtocolError(ErrorCode.TIMEOUT, "remote silent too long"), ErrorCode.TIMEOUT
        )
    if isinstance(exc, TransportError):
        return Ending(None if isinstance(exc, ChannelClosed) else exc, None)
    if isinstance(exc, LocalProtocolError):
        # The session closed (an error or close was exchanged) while a frame
        # was in flight; nothing is left to do but end.
        log.debug("session %s: frame after close ignored", address)
        return Ending(None, None)
    return None
