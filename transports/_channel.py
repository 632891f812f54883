"""The bookkeeping every :class:`~transports.base.Channel` repeats.

:class:`ChannelBase` holds who the remote is and the frame limit, refuses use
after close, closes once and then tells its owner. A transport's channel
subclasses it and writes only ``send``, ``recv`` and ``_release`` (how to
let go of its connection).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
from typing import Self

from peer.errors import ChannelClosed, FrameTooLarge
from transports._admission import Ticket
from transports.base import DEFAULT_MAX_FRAME, PREAUTH_MAX_FRAME, Channel, RemoteInfo

__all__ = ["ChannelBase", "peer_certificate"]


class ChannelBase(Channel):
    """A channel's state apart from its connection.

    Frames received are checked against :attr:`_recv_limit`: ``preauth_max_frame``
    until :meth:`authenticated`, then ``max_frame``. ``ticket`` is the
    connection's place among its listener's unauthenticated ones, released at
    :meth:`authenticated` or :meth:`close`. ``on_close`` is called once, after
    :meth:`_release` returned; transports use it to forget the channel.
    """

    def __init__(
        self,
        remote: RemoteInfo,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        preauth_max_frame: int = PREAUTH_MAX_FRAME,
        ticket: Ticket | None = None,
        on_close: Callable[[Self], None] | None = None,
    ) -> None:
        self._remote = remote
        self._max_frame = max_frame
        self._recv_limit = min(max_frame, preauth_max_frame)
        self._ticket = ticket
        self._on_close = on_close
        self._closed = False

    @property
    def remote(self) -> RemoteInfo:
        return self._remote

    def authenticated(self) -> None:
        self._recv_limit = self._max_frame
        self._lift_limit()
        if self._ticket is not None:
            self._ticket.release()

    def _lift_limit(self) -> None:
        """Apply :attr:`_recv_limit` where the transport checks frames itself."""

    async def close(self: Self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._release()
        finally:
            if self._ticket is not None:
                self._ticket.release()
        if self._on_close is not None:
            self._on_close(self)

    @abc.abstractmethod
    async def _release(self) -> None:
        """Let go of the connection; :meth:`close` calls it once."""

    def _too_large(self, length: int) -> FrameTooLarge:
        """The error for a received frame of ``length`` bytes over :attr:`_recv_limit`."""
        when = "" if self._recv_limit == self._max_frame else " before authentication"
        return FrameTooLarge(
            f"{self._remote.address} sent a frame of {length} bytes{when}"
            f" (limit {self._recv_limit})"
        )

    def _check_open(self, *, broken: bool = False) -> None:
        """Raise ChannelClosed if the channel is closed (or ``broken``)."""
        if self._closed or broken:
            raise ChannelClosed(f"channel to {self._remote.address} is closed")

    def _check_send(self, frame: bytes, *, broken: bool = False) -> None:
        """What ``send`` checks first: open (not ``broken``), and ``frame`` within the limit."""
        self._check_open(broken=broken)
        if len(frame) > self._max_frame:
            raise FrameTooLarge(f"frame of {len(frame)} bytes exceeds {self._max_frame}")


def peer_certificate(transport: asyncio.BaseTransport | None) -> bytes | None:
    """The remote's TLS certificate (DER) on ``transport``, or ``None`` without TLS or one."""
    ssl_object = transport.get_extra_info("ssl_object") if transport else None
    return ssl_object.getpeercert(binary_form=True) if ssl_object else None
