"""In-process transport for tests and the multi-peer harness, with fault injection.

A :class:`MemoryNetwork` is a registry of listeners by name plus the links
between them; a :class:`MemoryTransport` (scheme ``memory``, address
``memory://<name>``) listens and dials on it. Each connection is a pair of
channels joined by two bounded queues of ``queue_frames`` frames, one per
direction: ``send()`` waits while the other side's queue is full
(backpressure), ``recv()`` drains what was sent before the other side closed
and then raises :class:`~peer.errors.ChannelClosed`. Frames still in flight
(delayed, or throttled by bandwidth) occupy the receiver's queue, so
``queue_frames`` is also the link's window.

Faults (:class:`LinkFaults`) are set per directed link between transport
names and apply to each frame as it is sent: drop, duplicate, reorder, a
uniform random delay, a bandwidth limit. A reordered frame is held back and
delivered right after the next frame in the same direction of the same
channel, or when the sender closes (so a lone held frame stalls a
request/reply exchange until the protocol's idle timeout).
:meth:`MemoryNetwork.partition` and :meth:`MemoryNetwork.cut` break open
channels (both ends get ChannelClosed at once; queued frames are lost).

Drop, duplicate and reorder deliberately break the reliable, ordered stream
that real transports guarantee (``transports.base``): the sync protocol
numbers its frames and resets a session on a gap, and the harness uses these
faults to test that recovery. Delay and bandwidth keep the order.

Determinism: one ``seed`` drives every random choice. Each directed link
draws from its own ``random.Random`` derived from ``(seed, sender, receiver)``,
four draws per frame sent while the link has faults (none while it is clean),
so a link's k-th frame meets the same fate whatever the other links do and
however real-time delays interleave them; the same seed and the same sends per
link replay exactly. Delivery times use the event loop's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from peer.errors import ChannelClosed, ConfigError, ConnectError, FrameTooLarge
from transports._channel import ChannelBase
from transports._handlers import HandlerTasks
from transports._queues import Signal
from transports.base import DEFAULT_MAX_FRAME, Channel, ChannelHandler, RemoteInfo, Transport

__all__ = ["LinkFaults", "LinkStats", "MemoryChannel", "MemoryNetwork", "MemoryTransport"]

log = logging.getLogger(__name__)

_PREFIX = "memory://"


@dataclass(frozen=True, slots=True)
class LinkFaults:
    """What a directed link does to each frame sent over it.

    ``drop``, ``duplicate`` and ``reorder`` are probabilities in [0, 1];
    ``delay`` is a ``(lo, hi)`` range in seconds for a uniform random delay;
    ``bandwidth`` is in bytes per second (``None``: unlimited). Raises
    ConfigError for values out of range. ``LinkFaults()`` is a clean link.
    """

    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: tuple[float, float] = (0.0, 0.0)
    bandwidth: float | None = None

    def __post_init__(self) -> None:
        for field in ("drop", "duplicate", "reorder"):
            if not 0.0 <= getattr(self, field) <= 1.0:
                raise ConfigError(f"LinkFaults.{field} must be within [0, 1]")
        if not 0.0 <= self.delay[0] <= self.delay[1]:
            raise ConfigError("LinkFaults.delay must be (lo, hi) with 0 <= lo <= hi")
        if self.bandwidth is not None and self.bandwidth <= 0:
            raise ConfigError("LinkFaults.bandwidth must be positive or None")


@dataclass(slots=True)
class LinkStats:
    """Counters of one directed link. ``delivered`` counts frames handed to
    ``recv()`` (duplicates included); frames lost to a cut or a close are in
    ``sent`` but in neither ``delivered`` nor ``dropped``."""

    frames_sent: int = 0
    bytes_sent: int = 0
    frames_delivered: int = 0
    bytes_delivered: int = 0
    frames_dropped: int = 0
    bytes_dropped: int = 0
    frames_duplicated: int = 0
    bytes_duplicated: int = 0


_CLEAN = LinkFaults()


class _Pipe:
    """One direction of a connection: a bounded queue of ``(deliver_at, frame)``.

    ``eof``: the writer closed, the reader drains then gets ChannelClosed.
    ``dead``: cut, or the reader closed; both sides get ChannelClosed at once.
    """

    def __init__(self, network: MemoryNetwork, src: str, dst: str) -> None:
        self._network, self.src, self.dst = network, src, dst
        self._items: deque[tuple[float, bytes]] = deque()
        self._held: list[bytes] = []
        self._changed = Signal()
        self._link_free = self._last_at = 0.0
        self.eof = self.dead = False

    async def put(self, frame: bytes) -> None:
        while not (self.dead or self.eof) and len(self._items) >= self._network.queue_frames:
            await self._changed.waiter().wait()
        if self.dead or self.eof:
            raise ChannelClosed("channel is closed")
        self._transmit(frame)
        self._changed.fire()

    def _transmit(self, frame: bytes) -> None:
        net, size = self._network, len(frame)
        stats = net._stats_for(self.src, self.dst)
        stats.frames_sent += 1
        stats.bytes_sent += size
        faults = net._faults.get((self.src, self.dst), _CLEAN)
        draws = [1.0] * 4 if faults is _CLEAN else net._draws(self.src, self.dst)
        drop, duplicate, reorder, delay = draws
        if drop < faults.drop:
            stats.frames_dropped += 1
            stats.bytes_dropped += size
            return
        copies = [frame, frame] if duplicate < faults.duplicate else [frame]
        if len(copies) == 2:
            stats.frames_duplicated += 1
            stats.bytes_duplicated += size
        if reorder < faults.reorder and not self._held:
            self._held = copies
            return
        batch, self._held = copies + self._held, []
        lo, hi = faults.delay
        serialize = sum(map(len, batch)) / faults.bandwidth if faults.bandwidth else 0.0
        self._link_free = max(asyncio.get_running_loop().time(), self._link_free) + serialize
        self._last_at = max(self._link_free + lo + (hi - lo) * delay, self._last_at)
        self._items.extend((self._last_at, item) for item in batch)

    async def get(self) -> bytes:
        loop = asyncio.get_running_loop()
        while not self.dead:
            changed = self._changed.waiter()
            if not self._items:
                if self.eof:
                    break
                await changed.wait()
                continue
            wait = self._items[0][0] - loop.time()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await changed.wait()
                continue
            frame = self._items.popleft()[1]
            stats = self._network._stats_for(self.src, self.dst)
            stats.frames_delivered += 1
            stats.bytes_delivered += len(frame)
            self._changed.fire()
            return frame
        raise ChannelClosed("channel is closed")

    def close(self, *, dead: bool) -> None:
        """Writer closed (flush held frames; the reader drains) or, with
        ``dead``, the pipe is broken (everything queued is lost)."""
        if dead:
            self.dead = True
            self._items.clear()
        elif not self.eof and not self.dead:
            now = asyncio.get_running_loop().time()
            self._items.extend((max(now, self._last_at), frame) for frame in self._held)
            self.eof = True
        self._held = []
        self._changed.fire()


class MemoryChannel(ChannelBase):
    """One end of an in-memory connection; see the module docstring for how
    faults bend the ordered-stream contract of :class:`Channel`."""

    def __init__(
        self, owner: MemoryTransport, remote: RemoteInfo, outgoing: _Pipe, incoming: _Pipe
    ) -> None:
        super().__init__(remote, max_frame=owner.max_frame, on_close=owner._forget)
        self._out, self._in = outgoing, incoming

    @property
    def link(self) -> tuple[str, str]:
        """``(this side's name, the other side's name)``."""
        return self._out.src, self._out.dst

    async def send(self, frame: bytes) -> None:
        self._check_send(frame)
        await self._out.put(bytes(frame))

    async def recv(self) -> bytes:
        self._check_open()
        frame = await self._in.get()
        if len(frame) > self._max_frame:
            await self.close()
            raise FrameTooLarge(f"received {len(frame)} bytes, limit {self._max_frame}")
        return frame

    async def _release(self) -> None:
        self._out.close(dead=False)
        self._in.close(dead=True)


class MemoryNetwork:
    """Listeners by name, the faults on links between names, and counters.

    ``seed`` drives every random choice (split per link, see the module
    docstring); ``queue_frames`` (>= 1) bounds each direction of each
    connection. Fault changes apply to frames sent from then on; ``partition``
    and ``cut`` act at once and do not wait, so any code on the loop may call
    them.
    """

    def __init__(self, *, seed: int = 0, queue_frames: int = 16) -> None:
        if queue_frames < 1:
            raise ConfigError("queue_frames must be at least 1")
        self.seed, self.queue_frames = seed, queue_frames
        self._rngs: dict[tuple[str, str], random.Random] = {}
        self._listeners: dict[str, MemoryTransport] = {}
        self._channels: set[MemoryChannel] = set()
        self._faults: dict[tuple[str, str], LinkFaults] = {}
        self._blocked: set[frozenset[str]] = set()
        self._stats: dict[tuple[str, str], LinkStats] = {}

    def set_faults(self, a: str, b: str, faults: LinkFaults, *, both_ways: bool = True) -> None:
        """Apply ``faults`` to frames from ``a`` to ``b`` (and ``b`` to ``a``
        unless ``both_ways`` is false). ``LinkFaults()`` clears them."""
        for link in [(a, b), (b, a)] if both_ways else [(a, b)]:
            if faults == _CLEAN:
                self._faults.pop(link, None)
            else:
                self._faults[link] = faults

    def clear_faults(self) -> None:
        """Make every link clean again."""
        self._faults.clear()

    def partition(self, group_a: Iterable[str], group_b: Iterable[str]) -> None:
        """Cut every open channel between the two groups of names and refuse
        dials across until :meth:`heal`. Raises ConfigError if they overlap."""
        side_a, side_b = set(group_a), set(group_b)
        if side_a & side_b:
            raise ConfigError(f"partition groups overlap: {sorted(side_a & side_b)}")
        self._blocked |= {frozenset((x, y)) for x in side_a for y in side_b}
        self._cut_where(lambda pair: pair in self._blocked)

    def heal(self) -> None:
        """Lift every partition (open channels stay cut; new dials succeed)."""
        self._blocked.clear()

    def cut(self, a: str, b: str) -> None:
        """Break the channels open between ``a`` and ``b`` now; new dials are allowed."""
        self._cut_where(lambda pair: pair == frozenset((a, b)))

    def stats(self) -> dict[tuple[str, str], LinkStats]:
        """A copy of the counters, keyed by directed link ``(sender, receiver)``."""
        return {link: replace(stats) for link, stats in sorted(self._stats.items())}

    def _draws(self, src: str, dst: str) -> list[float]:
        rng = self._rngs.get((src, dst))
        if rng is None:
            rng = self._rngs[src, dst] = random.Random(f"{self.seed}/{src}/{dst}")
        return [rng.random() for _ in range(4)]

    def _stats_for(self, src: str, dst: str) -> LinkStats:
        return self._stats.setdefault((src, dst), LinkStats())

    def _cut_where(self, match: Callable[[frozenset[str]], bool]) -> None:
        doomed = [ch for ch in self._channels if match(frozenset(ch.link))]
        for channel in doomed:
            self._channels.discard(channel)
            channel._out.close(dead=True)
            channel._in.close(dead=True)

    def _connect(self, dialer: MemoryTransport, name: str) -> MemoryChannel:
        listener = self._listeners.get(name)
        if listener is None:
            raise ConnectError(f"no memory listener named {name!r}")
        if frozenset((dialer.name, name)) in self._blocked:
            raise ConnectError(f"{dialer.name!r} and {name!r} are partitioned")
        forth, back = _Pipe(self, dialer.name, name), _Pipe(self, name, dialer.name)
        outbound = dialer._adopt(
            MemoryChannel(dialer, RemoteInfo("memory", _PREFIX + name, False), forth, back)
        )
        inbound = MemoryChannel(
            listener, RemoteInfo("memory", _PREFIX + dialer.name, True), back, forth
        )
        listener._accept(listener._adopt(inbound))
        return outbound


class MemoryTransport(Transport):
    """A named endpoint on a :class:`MemoryNetwork`.

    ``start(handler)`` registers ``name`` as a listener when ``listen``
    (ConfigError if the name is taken or start is called twice); ``dial``
    raises ConfigError for a non-``memory://`` address and ConnectError when
    no such listener exists, the link is partitioned, or this transport is
    stopped. ``stop()`` unregisters, closes every channel this transport
    created, gives handlers ``close_timeout`` seconds to return and cancels
    the rest.
    """

    scheme = "memory"

    def __init__(
        self,
        network: MemoryNetwork,
        name: str,
        *,
        listen: bool = True,
        max_frame: int = DEFAULT_MAX_FRAME,
        close_timeout: float = 1.0,
    ) -> None:
        if not name or "/" in name or name != name.strip():
            raise ConfigError(f"bad memory transport name {name!r}")
        if max_frame < 1:
            raise ConfigError("max_frame must be at least 1")
        self.name, self.max_frame = name, max_frame
        self._network, self._listen = network, listen
        self._handlers = HandlerTasks("MemoryTransport", log, grace=close_timeout)
        self._stopped = False
        self._channels: set[MemoryChannel] = set()

    @property
    def listen_addresses(self) -> list[str]:
        listening = self._network._listeners.get(self.name) is self
        return [_PREFIX + self.name] if listening else []

    async def start(self, handler: ChannelHandler) -> None:
        if self._handlers.started or self._stopped:
            raise ConfigError("MemoryTransport.start() called twice")
        if self._listen:
            if self.name in self._network._listeners:
                raise ConfigError(f"memory listener name {self.name!r} is taken")
            self._network._listeners[self.name] = self
        self._handlers.set(handler)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._network._listeners.get(self.name) is self:
            del self._network._listeners[self.name]
        for channel in list(self._channels):
            await channel.close()
        await self._handlers.stop()

    async def dial(self, address: str) -> Channel:
        name = address.removeprefix(_PREFIX)
        if not address.startswith(_PREFIX) or not name or "/" in name:
            raise ConfigError(f"not a memory://NAME address: {address!r}")
        if self._stopped:
            raise ConnectError(f"cannot dial {address}: transport is stopped")
        return self._network._connect(self, name)

    def _adopt(self, channel: MemoryChannel) -> MemoryChannel:
        self._channels.add(channel)
        self._network._channels.add(channel)
        return channel

    def _forget(self, channel: MemoryChannel) -> None:
        self._channels.discard(channel)
        self._network._channels.discard(channel)

    def _accept(self, channel: MemoryChannel) -> None:
        self._handlers.spawn(channel, f"crpeer-memory-{self.name}")
