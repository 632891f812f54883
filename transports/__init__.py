"""Frame movers. A transport knows nothing about cursors or changes.

Every transport implements :class:`transports.base.Transport`: it listens,
dials, and hands each connection to the peer as a :class:`Channel` that moves
whole frames (``bytes``). See ``transports.base`` for the contract.
"""

from transports.base import Channel, ChannelHandler, RemoteInfo, Transport

__all__ = ["Channel", "ChannelHandler", "RemoteInfo", "Transport"]
