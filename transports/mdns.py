"""Zero-configuration discovery of crpeer peers on the local network (mDNS/DNS-SD).

:class:`MdnsDiscovery` advertises this peer as one DNS-SD service instance and
browses for the others. It only finds peers: it moves no frames and proves
nothing. The TXT record carries exactly ``id=<peer id>`` and
``pv=<protocol version>`` (the oldest one the peer speaks: its handshake
generation), no secrets and no database names; anyone on the LAN
can claim any id, so the caller must still authenticate whoever it dials.

Lifecycle: ``await start(on_found, on_lost)`` once, then ``await stop()``
(idempotent; to abandon a ``start()`` still probing, cancel its task). The
callbacks run on the event loop; an exception one raises is logged, and
discovery goes on.

Network changes: unless the advertised addresses are fixed (explicit
``addresses`` or an interface list), the host's addresses are polled
(:class:`~transports.netwatch.AddressWatch`); when their set changes the
registration is updated in place with the new addresses and zeroconf's
sockets are reconciled with the new interfaces, so peers see the new
addresses within seconds. On the browsing side a changed advert is resolved
once the superseded address records have been flushed from the cache
(RFC 6762 10.2 keeps them one second), so it reports only the new addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import ifaddr
from zeroconf import Error as ZeroconfError
from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from peer.errors import ConfigError, TransportError
from transports.netwatch import DEFAULT_WATCH_INTERVAL, AddressWatch

__all__ = [
    "DEFAULT_SERVICE_TYPE",
    "DiscoveredPeer",
    "Interfaces",
    "IpInterface",
    "MdnsDiscovery",
    "local_interfaces",
    "peer_from_properties",
]

DEFAULT_SERVICE_TYPE = "_crpeer._tcp.local."
"""The DNS-SD service type crpeer peers advertise and browse."""

Interfaces = Literal["all"] | InterfaceChoice | Sequence[str]
"""Where mDNS runs: ``"all"`` (every interface) or a list of local IP addresses."""

IpInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
"""One local interface address with its prefix, as :func:`local_interfaces` returns."""

_log = logging.getLogger(__name__)
_MAX_LABEL = 56  # a DNS label holds 63 bytes; leave room for zeroconf's "-N" rename
_RESOLVE_TIMEOUT_MS = 3000
_GOODBYE_TIMEOUT_S = 2.0
_FLUSH_SETTLE_S = 1.2  # a cache-flushed record lingers 1 s (RFC 6762 10.2)


@dataclass(frozen=True, slots=True)
class DiscoveredPeer:
    """A peer seen on the LAN: what it claims to be and where it listens."""

    peer_id: str
    addresses: tuple[str, ...]
    port: int
    protocol_version: int


def local_interfaces(ip_version: IPVersion = IPVersion.V4Only) -> list[IpInterface]:
    """Addresses (with their prefix) of this host's interfaces, of the given IP version.

    IPv6 link-local addresses carry their ``%scope``. Pure apart from reading
    the interface table; never raises for an odd interface (it is skipped).
    """
    found: list[IpInterface] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                if ip_version is IPVersion.V6Only:
                    continue
                text = f"{ip.ip}/{ip.network_prefix}"
            else:
                if ip_version is IPVersion.V4Only:
                    continue
                address, _flow, scope = ip.ip
                suffix = f"%{scope}" if scope and address.lower().startswith("fe80") else ""
                text = f"{address}{suffix}/{ip.network_prefix}"
            with contextlib.suppress(ValueError):
                found.append(ipaddress.ip_interface(text))
    return found


def peer_from_properties(
    properties: dict[bytes, bytes | None],
    addresses: Sequence[str],
    port: int | None,
    accepted_versions: Collection[int],
) -> DiscoveredPeer | None:
    """Build a :class:`DiscoveredPeer` from a resolved advert, or ``None`` if unusable.

    Unusable means: no ``id`` or ``pv`` in the TXT record, either not valid
    text, a protocol version outside ``accepted_versions``, no address, or no
    port. Other TXT keys are ignored (room for later versions). Pure.
    """
    raw_id, raw_pv = properties.get(b"id"), properties.get(b"pv")
    if not raw_id or not raw_pv or not addresses or not port:
        return None
    try:
        peer_id = raw_id.decode("utf-8")
        version_text = raw_pv.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not version_text.isdigit() or not peer_id.isprintable():
        return None
    version = int(version_text)
    if version not in accepted_versions:
        return None
    return DiscoveredPeer(peer_id, tuple(addresses), port, version)


def _instance_label(peer_id: str) -> str:
    label = peer_id.replace(".", "-")
    while len(label.encode("utf-8")) > _MAX_LABEL:
        label = label[:-1]
    return label


def _ip_literals(addresses: Sequence[str], what: str) -> list[str]:
    try:
        return [str(ipaddress.ip_address(address)) for address in addresses]
    except ValueError as exc:
        raise ConfigError(f"bad {what} address: {exc}") from exc


def _interface_choice(interfaces: Interfaces) -> InterfaceChoice | list[str]:
    if isinstance(interfaces, InterfaceChoice):
        return interfaces
    if isinstance(interfaces, str):
        if interfaces != "all":
            raise ConfigError(f"interfaces must be 'all' or a list of IPs, not {interfaces!r}")
        return InterfaceChoice.All
    return _ip_literals(interfaces, "interface")


class MdnsDiscovery:
    """Advertise this peer and report the other crpeer peers on the LAN.

    ``interfaces`` picks where mDNS runs (``"all"``, a zeroconf
    ``InterfaceChoice``, or a list of local IP addresses). ``addresses`` are
    the addresses advertised for ``port``; by default the given interface
    addresses, or every non-loopback address of ``ip_version`` (loopback only
    when there is nothing else). Peers whose ``pv`` is not in
    ``accepted_versions`` (default: only ``protocol_version``) are ignored.

    ``address_source``, instead, supplies the advertised addresses (a
    callable returning IP addresses). Derived addresses and
    ``address_source`` are polled every ``watch_interval`` seconds and
    re-advertised when they change (``None``: never). Explicit
    ``addresses`` and an interface list are not watched.

    Raises ConfigError at construction for an empty, unprintable or too long
    peer id, a port outside 1..65535, a bad service type, an interface or
    advertised address that is not an IP address, both ``addresses`` and
    ``address_source``, or a ``watch_interval`` that is not positive.
    """

    def __init__(
        self,
        peer_id: str,
        port: int,
        *,
        service_type: str = DEFAULT_SERVICE_TYPE,
        interfaces: Interfaces = "all",
        protocol_version: int = 1,
        accepted_versions: Collection[int] | None = None,
        ip_version: IPVersion = IPVersion.V4Only,
        addresses: Sequence[str] | None = None,
        address_source: Callable[[], Sequence[str]] | None = None,
        watch_interval: float | None = DEFAULT_WATCH_INTERVAL,
    ) -> None:
        if addresses is not None and address_source is not None:
            raise ConfigError("pass either fixed addresses or an address source, not both")
        if not peer_id or not peer_id.isprintable() or len(peer_id.encode("utf-8")) > 250:
            raise ConfigError(f"peer id {peer_id!r} cannot be advertised")
        if not 0 < port < 65536:
            raise ConfigError(f"port {port} is not a TCP port")
        if not service_type.endswith("._tcp.local.") or not service_type.startswith("_"):
            raise ConfigError(f"service type {service_type!r} is not a DNS-SD TCP type")
        self.peer_id = peer_id
        self.port = port
        self.service_type = service_type
        self.protocol_version = protocol_version
        self._accepted = frozenset(accepted_versions or (protocol_version,))
        self._ip_version = ip_version
        self._interfaces = _interface_choice(interfaces)
        self._addresses = None if addresses is None else _ip_literals(addresses, "advertised")
        self._address_source = address_source
        self._watch: AddressWatch | None = None
        derived = address_source is not None or not isinstance(self._interfaces, list)
        if watch_interval is not None and self._addresses is None and derived:
            self._watch = AddressWatch(self._watched_addresses, self._readvertise, watch_interval)
        self._properties: dict[str, str] = {}
        self._updating: asyncio.Future[Any] | None = None
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._announce: asyncio.Future[Any] | None = None
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._known: dict[str, DiscoveredPeer] = {}
        self._on_found: Callable[[DiscoveredPeer], None] = lambda _peer: None
        self._on_lost: Callable[[str], None] = lambda _peer_id: None
        self._closed = False

    @property
    def instance_name(self) -> str | None:
        """Our registered instance name (zeroconf may have renamed it on a clash)."""
        return self._info.name if self._info is not None else None

    def advertised_addresses(self) -> list[str]:
        """The addresses to advertise now: explicit, else from ``address_source``, else
        derived from the interfaces. Raises ConfigError for a non-IP address from the source."""
        if self._addresses is not None:
            return list(self._addresses)
        if self._address_source is not None:
            return _ip_literals(self._address_source(), "advertised")
        if isinstance(self._interfaces, list):
            wanted = {IPVersion.V4Only: {4}, IPVersion.V6Only: {6}}.get(self._ip_version, {4, 6})
            return [a for a in self._interfaces if ipaddress.ip_address(a).version in wanted]
        ips = [iface.ip for iface in local_interfaces(self._ip_version)]
        routable = [ip for ip in ips if not ip.is_loopback]
        return [str(ip) for ip in routable or ips]

    def _watched_addresses(self) -> list[str]:
        """What the address watch compares: loopback is never re-advertised in
        place of lost addresses (other hosts would dial themselves)."""
        if self._address_source is not None:
            return self.advertised_addresses()
        return [str(i.ip) for i in local_interfaces(self._ip_version) if not i.ip.is_loopback]

    async def start(
        self, on_found: Callable[[DiscoveredPeer], None], on_lost: Callable[[str], None]
    ) -> None:
        """Open mDNS, browse, and register our instance (returns once the name is claimed).

        ``on_found`` gets each other peer when first resolved and again whenever
        its advert changes; ``on_lost`` gets its peer id once it says goodbye or
        expires. Raises TransportError if the mDNS sockets cannot be opened or
        the registration fails, ConfigError when there is no address to
        advertise, or when called twice. Call ``stop()`` next, also after a
        failure here.
        """
        if self._aiozc is not None or self._closed:
            raise ConfigError("MdnsDiscovery.start() may be called only once")
        addresses = self.advertised_addresses()
        if not addresses:
            raise ConfigError("no local address to advertise over mDNS")
        self._on_found, self._on_lost = on_found, on_lost
        label = _instance_label(self.peer_id)
        properties = {"id": self.peer_id, "pv": str(self.protocol_version)}
        self._properties = properties
        try:
            self._aiozc = AsyncZeroconf(interfaces=self._interfaces, ip_version=self._ip_version)
            self._browser = AsyncServiceBrowser(
                self._aiozc.zeroconf, self.service_type, handlers=[self._on_state_change]
            )
            info = AsyncServiceInfo(
                self.service_type,
                f"{label}.{self.service_type}",
                port=self.port,
                properties=properties,
                parsed_addresses=addresses,
            )
            announce = await self._aiozc.async_register_service(info, allow_name_change=True)
            self._announce = asyncio.ensure_future(announce)
            self._info = info
            if self._watch is not None:
                self._watch.start(addresses)
        except (OSError, ZeroconfError, ValueError, RuntimeError) as exc:
            await self.stop()
            raise TransportError(f"mDNS could not start: {exc}") from exc
        except BaseException:  # cancelled while probing: leave nothing running
            await self.stop()
            raise

    async def stop(self) -> None:
        """Say goodbye, stop browsing, close the sockets. Idempotent; never raises."""
        self._closed = True
        if self._watch is not None:
            await self._watch.stop()
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        tasks = list(self._resolving.values())
        self._resolving.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        aiozc, self._aiozc = self._aiozc, None
        if aiozc is None:
            return
        for pending in (self._announce, self._updating):
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, ZeroconfError, OSError):
                    await pending
        if self._info is not None:
            with contextlib.suppress(ZeroconfError, OSError, TimeoutError):
                goodbye = await aiozc.async_unregister_service(self._info)
                await asyncio.wait_for(goodbye, _GOODBYE_TIMEOUT_S)
        await aiozc.async_close()

    async def _readvertise(self, addresses: list[str]) -> None:
        """Advertise ``addresses`` instead of the old ones (an AddressWatch change)."""
        aiozc, old = self._aiozc, self._info
        if aiozc is None or old is None or self._closed:
            return
        if not addresses:
            _log.info("mDNS: no address left; keeping the advert until one appears")
            return
        addresses = _ip_literals(addresses, "advertised")
        info = AsyncServiceInfo(
            self.service_type,
            old.name,
            port=self.port,
            properties=self._properties,
            server=old.server,
            parsed_addresses=addresses,
        )
        if self._updating is not None and not self._updating.done():
            self._updating.cancel()
        try:
            # The registry first, so the sockets for new interfaces announce the new records.
            self._updating = asyncio.ensure_future(await aiozc.async_update_service(info))
            self._info = info
            if not isinstance(self._interfaces, list):
                await aiozc.async_update_interfaces()
        except (OSError, ZeroconfError, RuntimeError) as exc:
            _log.warning("mDNS: could not advertise the new addresses %s: %s", addresses, exc)
            return
        _log.info("mDNS: now advertising %s", ", ".join(addresses))

    def _on_state_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if self._closed or (self._info is not None and name == self._info.name):
            return
        if not name.endswith(f".{self.service_type}"):
            _log.debug("mDNS: ignoring %r, not an instance of %s", name, self.service_type)
            return
        previous = self._resolving.pop(name, None)
        if previous is not None:
            previous.cancel()
        if state_change is ServiceStateChange.Removed:
            self._forget(name)
            return
        settle = _FLUSH_SETTLE_S if state_change is ServiceStateChange.Updated else 0.0
        task = asyncio.get_running_loop().create_task(self._resolve(zeroconf, name, settle))
        self._resolving[name] = task
        task.add_done_callback(lambda done: self._resolved(name, done))

    def _resolved(self, name: str, task: asyncio.Task[None]) -> None:
        if self._resolving.get(name) is task:
            del self._resolving[name]

    async def _resolve(self, zeroconf: Zeroconf, name: str, settle: float = 0.0) -> None:
        if settle:
            await asyncio.sleep(settle)
        try:
            info = AsyncServiceInfo(self.service_type, name)
            resolved = await info.async_request(zeroconf, _RESOLVE_TIMEOUT_MS)
        except (ZeroconfError, ValueError) as exc:
            _log.debug("mDNS: cannot resolve %r: %r", name, exc)
            return
        if not resolved:
            _log.debug("mDNS: %s did not resolve in time", name)
            return
        addresses = info.parsed_scoped_addresses(self._ip_version)
        found = peer_from_properties(info.properties, addresses, info.port, self._accepted)
        if found is None or found.peer_id == self.peer_id:
            _log.debug("mDNS: ignoring %s (malformed, unsupported version, or our id)", name)
            self._forget(name)
            return
        previous = self._known.get(name)
        if previous == found:
            return
        if previous is not None and previous.peer_id != found.peer_id:
            self._forget(name)
        self._known[name] = found
        self._call(self._on_found, found)

    def _forget(self, name: str) -> None:
        gone = self._known.pop(name, None)
        if gone is not None and all(p.peer_id != gone.peer_id for p in self._known.values()):
            self._call(self._on_lost, gone.peer_id)

    def _call(self, callback: Callable[[Any], None], argument: object) -> None:
        try:
            callback(argument)
        except Exception:
            _log.exception("mDNS discovery callback %r failed", callback)
