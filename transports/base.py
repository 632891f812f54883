"""The contract between a Peer and its transports.

A :class:`Transport` listens and dials; every connection, inbound or outbound,
is a :class:`Channel` that moves whole frames. A frame is an opaque ``bytes``
message (the peer puts one msgpack-encoded protocol message in each); the
transport preserves frame boundaries and order, and enforces ``max_frame``.

Before authentication a transport bounds what a connection may cost
(:class:`PreAuthLimits`, :data:`HANDSHAKE_TIMEOUT`); see SECURITY.md.

Errors: transports raise only crpeer errors (``peer.errors``):
:class:`~peer.errors.ConnectError` from ``dial`` when the address is
unreachable or refuses, :class:`~peer.errors.ChannelClosed` from ``send`` or
``recv`` once the channel is closed, :class:`~peer.errors.FrameTooLarge` when a
frame exceeds the limit (the channel is then closed). Foreign exceptions
(OSError, ssl.SSLError, library errors) are translated at this boundary.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HANDSHAKE_TIMEOUT",
    "PREAUTH_MAX_FRAME",
    "Channel",
    "ChannelHandler",
    "DiscoveryHandler",
    "PreAuthLimits",
    "RemoteInfo",
    "SupportsDiscovery",
    "Transport",
]

DEFAULT_MAX_FRAME = 8 * 1024 * 1024
"""Largest frame a transport accepts unless told otherwise (8 MiB)."""

PREAUTH_MAX_FRAME = 16 * 1024
"""Largest frame a channel accepts before its owner calls :meth:`Channel.authenticated`
(16 KiB). It must hold the sync protocol's HELLO: a remote that has finished
authenticating may send it before this side has."""

HANDSHAKE_TIMEOUT = 10.0
"""Seconds an inbound connection has to finish its opening on every transport:
the TLS handshake, and the HTTP request headers (WebSocket upgrade, HTTP/SSE
requests and their bodies). Every transport's ``handshake_timeout`` defaults to it."""


@dataclass(frozen=True, slots=True)
class PreAuthLimits:
    """What unauthenticated connections may cost a listener.

    A connection counts from the moment it is accepted until its owner calls
    :meth:`Channel.authenticated` or it closes. Past ``total`` such
    connections, or ``per_address`` from one remote IP address, a new one is
    closed at once. ``max_frame`` caps every frame received before
    :meth:`Channel.authenticated` (dialed channels included).
    """

    max_frame: int = PREAUTH_MAX_FRAME
    total: int = 256
    per_address: int = 32


@dataclass(frozen=True, slots=True)
class RemoteInfo:
    """What a transport knows about the other end of a channel.

    ``certificate`` is the remote's TLS certificate (DER) when the channel is
    encrypted with mutual authentication, else ``None``; the identity layer
    derives the remote peer id from it.
    """

    transport: str
    address: str
    inbound: bool
    certificate: bytes | None = None


class Channel(abc.ABC):
    """One bidirectional, ordered, frame-preserving connection.

    The owner calls ``recv()`` in a loop and ``send()`` as needed, calls
    ``authenticated()`` once it has authenticated the remote (until then
    received frames are capped at the pre-auth limit), then ``close()``
    exactly once (closing twice is harmless).
    """

    @property
    @abc.abstractmethod
    def remote(self) -> RemoteInfo:
        """Who is on the other end."""

    @abc.abstractmethod
    async def send(self, frame: bytes) -> None:
        """Send one frame. Waits while the transport's buffers are full
        (this is how a slow receiver slows the sender).

        Raises ChannelClosed if the channel is closed, FrameTooLarge if the
        frame exceeds the limit (the channel stays open in that case).
        """

    @abc.abstractmethod
    async def recv(self) -> bytes:
        """Wait for the next frame.

        Raises ChannelClosed when the remote closed or the connection broke,
        FrameTooLarge when the remote sent an oversized frame (the channel is
        closed).
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the channel and release its resources. Idempotent."""

    @abc.abstractmethod
    def authenticated(self) -> None:
        """The owner has authenticated the remote: frames up to the transport's
        ``max_frame`` are accepted from now on (before, up to its pre-auth cap,
        :data:`PREAUTH_MAX_FRAME` by default), and the connection no longer
        counts against the listener's :class:`PreAuthLimits`. Idempotent."""


ChannelHandler = Callable[[Channel], Awaitable[None]]
"""Called with each new channel (inbound, or dialed by a discovery transport).
The handler owns the channel until it returns, and must close it."""


class Transport(abc.ABC):
    """Listens for and dials channels of one kind.

    Lifecycle: ``await start(handler)`` once, then ``dial()`` any number of
    times, then ``await stop()`` (closes the listener and every channel it
    created; no task, socket or thread is left behind).
    """

    scheme: str
    """URL scheme of this transport's addresses, e.g. ``tcp``, ``ws``."""

    @abc.abstractmethod
    async def start(self, handler: ChannelHandler) -> None:
        """Start listening (if configured to). Each accepted channel is passed
        to ``handler`` in its own task."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop listening and close every channel; idempotent."""

    @abc.abstractmethod
    async def dial(self, address: str) -> Channel:
        """Open a channel to ``address`` (a URL of this transport's scheme).

        Raises ConnectError if it cannot be reached.
        """

    @property
    @abc.abstractmethod
    def listen_addresses(self) -> list[str]:
        """Addresses others can dial to reach this listener (after start)."""


DiscoveryHandler = Callable[[str, str], None]
"""Called with ``(address, peer_id)`` for each discovered peer this side should dial."""


@runtime_checkable
class SupportsDiscovery(Protocol):
    """A transport that finds peers by itself (LAN mDNS) and asks the Peer to dial them."""

    def set_discovery_handler(self, handler: DiscoveryHandler | None) -> None:
        """Set the handler before ``start()``; ``None`` removes it."""

    def is_discovered(self, peer_id: str) -> bool:
        """Whether ``peer_id`` is still being advertised."""
