"""LAN transport: TCP (``transports.tcp``) plus zero-configuration discovery (mDNS).

:class:`LanTransport` is a :class:`~transports.tcp.TcpTransport` whose listener
is advertised by :class:`~transports.mdns.MdnsDiscovery`. Frames, TLS and
errors are exactly TCP's; this module only adds who to dial and where.

Dialing is the caller's job (the Peer's): register a handler with
:meth:`LanTransport.set_discovery_handler` before ``start()``; it gets
``(address, peer_id)`` for every discovered peer that *this* side should dial
(see :func:`should_dial`), and the caller then ``dial(address)``\\ s it. Two
peers that find each other at the same moment therefore open one connection,
not two.

mDNS claims are not authenticated: whoever answers must still pass the TLS
handshake and the trust checks of the layer above.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from zeroconf import IPVersion

from peer.errors import ConfigError
from transports._addresses import format_address
from transports.base import (
    DEFAULT_MAX_FRAME,
    HANDSHAKE_TIMEOUT,
    Channel,
    ChannelHandler,
    DiscoveryHandler,
    PreAuthLimits,
    Transport,
)
from transports.mdns import (
    DEFAULT_SERVICE_TYPE,
    DiscoveredPeer,
    Interfaces,
    IpInterface,
    MdnsDiscovery,
    local_interfaces,
)
from transports.netwatch import DEFAULT_WATCH_INTERVAL
from transports.tcp import TcpTransport

__all__ = ["DiscoveryHandler", "LanTransport", "choose_address", "should_dial", "tcp_address"]

_log = logging.getLogger(__name__)
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def should_dial(local_peer_id: str, remote_peer_id: str) -> bool:
    """Whether this side dials the remote: only the side with the smaller peer id does.

    Deterministic and symmetric (exactly one of two distinct ids returns
    True), so two peers that discover each other at once keep one connection.
    False for our own id. Pure.
    """
    return local_peer_id < remote_peer_id


def _rank(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, local: Sequence[IpInterface]
) -> int | None:
    if address.is_unspecified or address.is_multicast:
        return None
    if address.is_loopback:
        return 6 if address.version == 4 else 7
    on_link = any(address in iface.network for iface in local if not iface.ip.is_loopback)
    if address.version == 4:
        if on_link:
            return 0
        return 4 if address.is_link_local else 1
    if on_link:
        return 2
    return 5 if address.is_link_local else 3


def choose_address(addresses: Sequence[str], local: Sequence[IpInterface]) -> str | None:
    """The best of a peer's advertised ``addresses`` to dial from here, or ``None``.

    Preference: IPv4 on one of our own subnets (``local``, as returned by
    :func:`~transports.mdns.local_interfaces`; loopback interfaces do not
    count), then routable IPv4, then IPv6 on one of our subnets, routable
    IPv6, IPv4 link-local elsewhere, IPv6 link-local elsewhere, and loopback
    last (it reaches only peers on this very host). Ties keep the advertised
    order. Unparsable, unspecified and multicast addresses are skipped. Pure.
    """
    ranked: list[tuple[int, int, str]] = []
    for order, text in enumerate(addresses):
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        rank = _rank(address, local)
        if rank is not None:
            ranked.append((rank, order, text))
    return min(ranked)[2] if ranked else None


def tcp_address(host: str, port: int) -> str:
    """``tcp://host:port``, with IPv6 hosts in brackets (the form TcpTransport dials)."""
    return format_address("tcp", host, port)


class LanTransport(Transport):
    """TCP listener advertised over mDNS; reports which discovered peers to dial.

    ``host``/``port`` are where TCP listens (``port=0``: any free port, which
    is then advertised); a specific ``host`` is also the only address
    advertised, a wildcard host advertises this machine's addresses on
    ``interfaces`` (see :class:`~transports.mdns.MdnsDiscovery`) and follows
    them: they are polled every ``watch_interval`` seconds (``None``: never)
    and re-advertised when they change. The listener stays as it is: a
    wildcard host accepts on every address, old and new. ``max_frame``,
    ``server_ssl``, ``client_ssl``, ``handshake_timeout`` and ``preauth`` go to
    :class:`~transports.tcp.TcpTransport` unchanged. Raises ConfigError when
    ``host`` is neither a wildcard nor an IP address.

    Lifecycle: ``set_discovery_handler()``, ``await start(handler)``, dial what
    the discovery handler reports, ``await stop()``.
    """

    scheme = "tcp"

    def __init__(
        self,
        peer_id: str,
        *,
        host: str = "0.0.0.0",
        port: int = 0,
        interfaces: Interfaces = "all",
        max_frame: int = DEFAULT_MAX_FRAME,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        preauth: PreAuthLimits | None = None,
        service_type: str = DEFAULT_SERVICE_TYPE,
        protocol_version: int = 1,
        ip_version: IPVersion = IPVersion.V4Only,
        watch_interval: float | None = DEFAULT_WATCH_INTERVAL,
    ) -> None:
        if host not in _WILDCARDS:
            try:
                ipaddress.ip_address(host)
            except ValueError as exc:
                raise ConfigError(f"LAN host must be an IP address, not {host!r}") from exc
        self.peer_id = peer_id
        self._host = host
        self._interfaces = interfaces
        self._service_type = service_type
        self._protocol_version = protocol_version
        self._ip_version = ip_version
        self._watch_interval = watch_interval
        self._tcp = TcpTransport(
            host,
            port,
            max_frame=max_frame,
            server_ssl=server_ssl,
            client_ssl=client_ssl,
            handshake_timeout=handshake_timeout,
            preauth=preauth,
        )
        self._discovery: MdnsDiscovery | None = None
        self._on_discovered: DiscoveryHandler | None = None
        self._peers: dict[str, DiscoveredPeer] = {}

    def set_discovery_handler(self, handler: DiscoveryHandler | None) -> None:
        """Set who hears ``(address, peer_id)`` of each peer this side should dial.

        Call it before ``start()``: peers found earlier are not replayed. The
        handler runs on the event loop and must not block (start a task that
        dials). It is called again with the new address when a peer's advert
        changes, so the caller should tolerate a second session to the same
        peer id (and keep one). ``None`` removes it.
        """
        self._on_discovered = handler

    def is_discovered(self, peer_id: str) -> bool:
        """Whether ``peer_id`` is still advertised on the LAN."""
        return peer_id in self.discovered

    @property
    def discovered(self) -> Mapping[str, DiscoveredPeer]:
        """Peers currently advertised on the LAN, by peer id (read-only view)."""
        return MappingProxyType(self._peers)

    @property
    def listen_addresses(self) -> list[str]:
        """``tcp://`` addresses as advertised (the wildcard host replaced by real ones)."""
        if self._discovery is None:
            return []
        port = self._discovery.port
        return [tcp_address(host, port) for host in self._discovery.advertised_addresses()]

    async def start(self, handler: ChannelHandler) -> None:
        """Listen on TCP, then advertise the bound port and start discovering.

        Raises TransportError if the port cannot be bound or mDNS cannot start,
        ConfigError for a bad peer id or interface list, or when called twice.
        Call ``stop()`` next, also after a failure here.
        """
        await self._tcp.start(handler)
        port = int(self._tcp.listen_addresses[0].rsplit(":", 1)[1])
        self._discovery = MdnsDiscovery(
            self.peer_id,
            port,
            service_type=self._service_type,
            interfaces=self._interfaces,
            protocol_version=self._protocol_version,
            ip_version=self._ip_version,
            addresses=None if self._host in _WILDCARDS else [self._host],
            watch_interval=self._watch_interval,
        )
        await self._discovery.start(self._found, self._lost)

    async def stop(self) -> None:
        """Stop advertising, then close the listener and every channel. Idempotent."""
        if self._discovery is not None:
            await self._discovery.stop()
        await self._tcp.stop()

    async def dial(self, address: str) -> Channel:
        """Open a channel to a ``tcp://`` address; raises ConnectError (see TcpTransport)."""
        return await self._tcp.dial(address)

    def _found(self, peer: DiscoveredPeer) -> None:
        self._peers[peer.peer_id] = peer
        if not should_dial(self.peer_id, peer.peer_id):
            _log.debug("LAN: %s will dial us (tie-break)", peer.peer_id)
            return
        host = choose_address(peer.addresses, local_interfaces(self._ip_version))
        if host is None:
            _log.debug("LAN: no usable address for %s in %s", peer.peer_id, peer.addresses)
            return
        if self._on_discovered is not None:
            self._on_discovered(tcp_address(host, peer.port), peer.peer_id)

    def _lost(self, peer_id: str) -> None:
        self._peers.pop(peer_id, None)
