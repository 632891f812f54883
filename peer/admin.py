"""The admin listener of ``crpeer serve --admin HOST:PORT``: metrics, JSON, a page.

:class:`AdminServer` serves, with aiohttp, on the peer's own event loop:

- ``GET /metrics``: the Prometheus text format (:class:`~peer.metrics.NodeMetrics`);
- ``GET /api/status``, ``GET /api/peers``: what ``crpeer status --json`` and
  ``crpeer peers --json`` print (:func:`~peer.cli_common.status_document`,
  :func:`~peer.cli_common.peers_document`);
- ``GET /api/node``: what the page shows beside them (listeners, mDNS on or
  off, file sizes, labels, when each peer connected);
- ``GET /api/events``: Server-Sent Events, one ``data:`` line per peer event
  in the JSON of ``crpeer serve --json`` (:func:`~peer.cli_common.event_to_dict`),
  numbered by ``id:``; a new client first gets the last 100 events, a client
  that reconnects with ``Last-Event-ID`` those after it;
- ``GET /`` (with ``/app.js`` and ``/style.css``): a status page, plain HTML,
  CSS and JavaScript shipped in ``peer/admin_page`` (no build step, no CDN).

Access. On a loopback address with no token, requests must name a loopback
host (``Host: 127.0.0.1:PORT``, ``localhost``, ``[::1]``), so that a web
page whose DNS name is rebound to 127.0.0.1 cannot read the node. Anywhere
else a token is required (:func:`token_required`): it is generated once and
kept, mode 0600, in ``DATABASE.admin-token`` (:func:`load_or_create_token`).
``/metrics`` and ``/api/*`` then need ``Authorization: Bearer TOKEN`` or the
cookie that ``POST /api/login`` (with that header) sets for the page; the
page's own files hold no data and are served to anyone.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

from peer import events
from peer.cli_common import event_to_dict, peers_document, status_document
from peer.errors import ConfigError, CrpeerError
from peer.housekeeping import wal_size
from peer.identity import read_private_file, write_private_file
from peer.metrics import NodeMetrics, database_path, file_size
from peer.trust import TrustStore, default_trust_path

if TYPE_CHECKING:
    from peer.peer import Peer

_log = logging.getLogger("crpeer.admin")

__all__ = [
    "AdminOptions",
    "AdminServer",
    "TokenMode",
    "is_loopback",
    "load_or_create_token",
    "token_path",
    "token_required",
]

TokenMode = Literal["auto", "required"]
"""``auto``: a token only off loopback; ``required``: a token on any address."""

_COOKIE = "crpeer_admin"
_PAGE_FILES = {
    "/": ("index.html", "text/html"),
    "/app.js": ("app.js", "text/javascript"),
    "/style.css": ("style.css", "text/css"),
}
_EVENT_QUEUE = 1000
"""Events buffered per /api/events client; a client that falls further behind
is disconnected (its EventSource reconnects)."""
_KEEPALIVE = 15.0
_RECENT_EVENTS = 100
"""Events kept for a client that connects later (or reconnects: ``Last-Event-ID``)."""


@dataclass(frozen=True, slots=True)
class AdminOptions:
    """Where the admin listener binds and whether it asks for a token."""

    host: str
    port: int
    token: TokenMode = "auto"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only: ``localhost`` or an address in
    127.0.0.0/8 or ::1. Other names count as not loopback (they may resolve
    anywhere); so do ``0.0.0.0`` and ``::``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_required(options: AdminOptions) -> bool:
    """A token is required off loopback, and everywhere with ``token="required"``."""
    return options.token == "required" or not is_loopback(options.host)


def token_path(database: str | os.PathLike[str]) -> Path:
    """Where the admin token of ``database`` is kept: ``DATABASE.admin-token``."""
    return Path(f"{os.fspath(database)}.admin-token")


def load_or_create_token(path: Path) -> str:
    """The token in ``path``; a new random one written there (mode 0600) if none.

    Raises ConfigError if the file is accessible to other users, unreadable,
    or does not hold a token (16 to 200 printable characters).
    """
    data = read_private_file(path, ConfigError)
    if data is None:
        try:
            write_private_file(path, (secrets.token_urlsafe(32) + "\n").encode(), replace=False)
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
        data = read_private_file(path, ConfigError)  # ours, or a racing writer's
        assert data is not None
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        token = ""
    if not 16 <= len(token) <= 200 or not token.isprintable() or " " in token:
        raise ConfigError(f"{path} does not hold an admin token: remove it to make a new one")
    return token


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


class AdminServer:
    """The admin listener for one peer. Build it before ``peer.start()`` (it
    subscribes to the peer's events then), :meth:`start` it after, and
    :meth:`stop` it before ``peer.stop()``.

    ``database`` names the files beside it (trust store, token); ``listen``
    and ``lan`` are shown on the page. Raises ConfigError (from :meth:`start`)
    for an address it cannot bind or an unusable token file.
    """

    def __init__(
        self,
        peer: Peer,
        options: AdminOptions,
        *,
        database: Path,
        lan: bool,
        wal_limit: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.peer = peer
        self.wal_limit = wal_limit
        self.options = options
        self.database = database
        self.lan = lan
        self.listen: list[str] = []
        self.metrics = NodeMetrics(peer, clock)
        self.token: str | None = None
        self._clock = clock
        self._trust: TrustStore | None = None
        self._runner: web.AppRunner | None = None
        self._streams: set[asyncio.Queue[tuple[int, dict[str, Any]] | None]] = set()
        self._sequence = 0
        self._recent: deque[tuple[int, dict[str, Any]]] = deque(maxlen=_RECENT_EVENTS)
        self._unsubscribe = peer.subscribe(self._remember)
        self.url = ""
        """``http://HOST:PORT/`` once started."""

    @property
    def token_file(self) -> Path | None:
        """The token's file when a token is required, else None."""
        return token_path(self.database) if token_required(self.options) else None

    async def start(self, listen: Sequence[str] = ()) -> None:
        """Bind and serve; ``listen`` lists the node's sync addresses for the page."""
        self.listen = list(listen)
        if self.token_file is not None:
            self.token = load_or_create_token(self.token_file)
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/api/peers", self._peers)
        app.router.add_get("/api/node", self._node)
        app.router.add_get("/api/events", self._events)
        app.router.add_post("/api/login", self._login)
        for route in _PAGE_FILES:
            app.router.add_get(route, self._page)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.options.host, self.options.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            where = _url(self.options.host, self.options.port)
            raise ConfigError(f"admin listener cannot listen on {where}: {exc.strerror}") from exc
        host, port = self._runner.addresses[0][:2]
        self.url = _url(host, port)

    async def stop(self) -> None:
        """End every event stream, close the listener, unsubscribe. Idempotent."""
        self.metrics.close()
        self._unsubscribe()
        self._unsubscribe = lambda: None
        for queue in list(self._streams):
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # -- access -------------------------------------------------------------------

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.token is None:
            if not is_loopback(request.url.host or ""):
                raise web.HTTPForbidden(text="this admin listener answers to a loopback host only")
        elif request.path not in _PAGE_FILES and not self._authorized(request):
            raise web.HTTPUnauthorized(
                text="an admin token is required (Authorization: Bearer ...)",
                headers={"WWW-Authenticate": 'Bearer realm="crpeer"'},
            )
        try:
            return await handler(request)
        except CrpeerError as exc:
            return web.json_response({"error": str(exc)}, status=503)

    def _authorized(self, request: web.Request) -> bool:
        assert self.token is not None
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer":
            given = request.cookies.get(_COOKIE, "")
        return hmac.compare_digest(given.strip().encode(), self.token.encode())

    async def _login(self, request: web.Request) -> web.Response:
        response = web.json_response({"ok": True})
        if self.token is not None:
            response.set_cookie(_COOKIE, self.token, httponly=True, samesite="Strict", path="/")
        return response

    # -- data ---------------------------------------------------------------------

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})

    async def _status(self, request: web.Request) -> web.Response:
        current = await self.peer.status()
        serve_info = {
            "state": "running",
            "pid": os.getpid(),
            "updated": self._clock(),
            "age": 0.0,
            "listen": self.listen,
        }
        wal = {"bytes": wal_size(self.database)}
        if self.wal_limit is not None:
            wal["limit"] = self.wal_limit
        return web.json_response(status_document(self.database, serve_info, current, [], wal))

    async def _peers(self, request: web.Request) -> web.Response:
        if self._trust is None:  # the node's own, else (insecure) the file beside the database
            self._trust = self.peer.gate.trust or TrustStore.load(default_trust_path(self.database))
        self._trust.reload_if_changed()
        current = await self.peer.status()
        return web.json_response(peers_document(self._trust, current.sessions))

    async def _node(self, request: web.Request) -> web.Response:
        path = database_path(self.peer)
        trust = self.peer.gate.trust
        return web.json_response(
            {
                "peer_id": self.peer.peer_id,
                "site_id": self.peer.site_id.hex(),
                "name": self.peer.name,
                "database": os.fspath(self.database),
                "database_bytes": file_size(path) if path else 0,
                "wal_bytes": wal_size(path) if path else 0,
                "listen": self.listen,
                "lan": self.lan,
                "labels": {e.peer_id: e.label for e in trust.list()} if trust else {},
                "connected_since": {
                    site.hex(): at for site, at in self.metrics.connected_since.items()
                },
                "time": self._clock(),
            }
        )

    def _remember(self, event: events.Event) -> None:
        """Number ``event``, keep it for clients that connect later, and send it
        to every open stream (a stream too far behind is ended)."""
        self._sequence += 1
        item = (self._sequence, event_to_dict(event, self._clock()))
        self._recent.append(item)
        for queue in self._streams:
            if queue.full():
                continue  # already ended below
            if queue.qsize() == queue.maxsize - 1:
                _log.warning(
                    "an /api/events client fell %d events behind: its stream is ended",
                    queue.maxsize - 1,
                )
                queue.put_nowait(None)
            else:
                queue.put_nowait(item)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        try:
            after = int(request.headers.get("Last-Event-ID", "0"))
        except ValueError:
            after = 0
        queue: asyncio.Queue[tuple[int, dict[str, Any]] | None] = asyncio.Queue(_EVENT_QUEUE)
        for recent in self._recent:  # no await since: nothing is missed or sent twice
            if recent[0] > after:
                queue.put_nowait(recent)
        self._streams.add(queue)
        try:
            await response.prepare(request)
            await response.write(b"retry: 2000\n\n")
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), _KEEPALIVE)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if item is None:
                    break
                data = json.dumps(item[1], ensure_ascii=False, allow_nan=False)
                await response.write(f"id: {item[0]}\ndata: {data}\n\n".encode())
        except ConnectionError:
            pass  # the client went away
        finally:
            self._streams.discard(queue)
        return response

    async def _page(self, request: web.Request) -> web.Response:
        name, kind = _PAGE_FILES[request.path]
        body = resources.files("peer").joinpath("admin_page", name).read_bytes()
        return web.Response(
            body=body,
            content_type=kind,
            charset="utf-8",
            headers={
                "Cache-Control": "no-cache",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
                "X-Content-Type-Options": "nosniff",
            },
        )
