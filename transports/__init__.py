"""Frame movers. A transport knows nothing about cursors or changes.

Every transport implements :class:`transports.base.Transport`: it listens,
dials, and hands each connection to the peer as a :class:`Channel` that moves
whole frames (``bytes``). See ``transports.base`` for the contract.

The transports themselves are imported on first use (``transports.TcpTransport``
loads ``transports.tcp`` then), so importing this package pulls in neither
aiohttp, websockets nor zeroconf.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from transports.base import (
    DEFAULT_MAX_FRAME,
    HANDSHAKE_TIMEOUT,
    PREAUTH_MAX_FRAME,
    Channel,
    ChannelHandler,
    DiscoveryHandler,
    PreAuthLimits,
    RemoteInfo,
    SupportsDiscovery,
    Transport,
)

if TYPE_CHECKING:
    from transports.http_sse import HttpSseTransport
    from transports.lan import LanTransport
    from transports.memory import LinkFaults, LinkStats, MemoryNetwork, MemoryTransport
    from transports.tcp import StreamChannel, TcpTransport
    from transports.websocket import WebSocketTransport

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HANDSHAKE_TIMEOUT",
    "PREAUTH_MAX_FRAME",
    "Channel",
    "ChannelHandler",
    "DiscoveryHandler",
    "HttpSseTransport",
    "LanTransport",
    "LinkFaults",
    "LinkStats",
    "MemoryNetwork",
    "MemoryTransport",
    "PreAuthLimits",
    "RemoteInfo",
    "StreamChannel",
    "SupportsDiscovery",
    "TcpTransport",
    "Transport",
    "WebSocketTransport",
]

_LAZY = {
    "HttpSseTransport": "transports.http_sse",
    "LanTransport": "transports.lan",
    "LinkFaults": "transports.memory",
    "LinkStats": "transports.memory",
    "MemoryNetwork": "transports.memory",
    "MemoryTransport": "transports.memory",
    "StreamChannel": "transports.tcp",
    "TcpTransport": "transports.tcp",
    "WebSocketTransport": "transports.websocket",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'transports' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
