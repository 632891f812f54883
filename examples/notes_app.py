"""A small notes app: a Tk window over a :class:`~peer.blocking.BlockingPeer`.

Run two of them and they share their notes::

    python examples/notes_app.py --db a.db --listen tcp://127.0.0.1:9100 --insecure
    python examples/notes_app.py --db b.db --listen tcp://127.0.0.1:0 \\
        --connect tcp://127.0.0.1:9100 --insecure

Without ``--insecure`` the app uses TLS with the identity next to the
database (``a.db.key``) and syncs only with trusted peers: trust them first
with ``crpeer trust add`` or pair with ``crpeer pair``.

Tk is not thread-safe, so the window never touches crpeer's threads: it
polls the peer's event queue every ``poll_ms`` with ``after()`` and reloads
the list when remote changes land (a ``Changed`` event).
"""

from __future__ import annotations

import argparse
import queue
import sys
import time
import tkinter as tk
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from peer import events
from peer.blocking import BlockingPeer
from peer.errors import ConfigError, CrpeerError
from peer.identity import Identity, default_key_path
from peer.store import Store
from peer.trust import TrustStore, default_trust_path
from transports.base import Transport
from transports.tcp import TcpTransport
from transports.websocket import WebSocketTransport

__all__ = ["SCHEMA", "NotesApp", "main", "prepare_database", "transport_for"]

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS notes ("
    "id TEXT PRIMARY KEY NOT NULL, body TEXT NOT NULL DEFAULT '', "
    "created REAL NOT NULL DEFAULT 0)"
)
"""Random text ids, so that two devices adding a note at once never collide."""


def prepare_database(path: str | Path) -> None:
    """Create the notes table (replicated) if it is missing. StoreError on failure."""
    with Store(path) as store:
        store.execute(SCHEMA)
        store.make_crr("notes")


class NotesApp:
    """The window: a list of notes, an entry, Add and Delete.

    Build it on the Tk thread with a started ``peer``; it polls
    ``peer.events`` every ``poll_ms`` milliseconds until :meth:`close`.
    ``clock`` dates new notes (they are listed oldest first).
    """

    def __init__(
        self,
        master: tk.Misc,
        peer: BlockingPeer,
        *,
        poll_ms: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.master = master
        self.peer = peer
        self.poll_ms = poll_ms
        self.clock = clock
        self._ids: list[str] = []
        self._connected: set[bytes] = set()
        frame = tk.Frame(master, padx=8, pady=8)
        frame.pack(fill="both", expand=True)
        self.listbox = tk.Listbox(frame, width=48, height=14)
        self.listbox.pack(fill="both", expand=True)
        row = tk.Frame(frame)
        row.pack(fill="x", pady=(6, 0))
        self.entry = tk.Entry(row)
        self.entry.pack(side="left", fill="x", expand=True)
        self.entry.bind("<Return>", lambda _event: self.add())
        self.add_button = tk.Button(row, text="Add", command=self.add)
        self.add_button.pack(side="left", padx=(6, 0))
        self.delete_button = tk.Button(row, text="Delete", command=self.delete)
        self.delete_button.pack(side="left", padx=(6, 0))
        self.status = tk.Label(frame, anchor="w", text="")
        self.status.pack(fill="x", pady=(6, 0))
        self.refresh()
        self._show_connections()
        self._after: str | None = master.after(poll_ms, self._poll)

    def notes(self) -> list[str]:
        """The note texts as the list shows them."""
        return [str(item) for item in self.listbox.get(0, "end")]

    def add(self) -> None:
        """Add the entry's text as a note (nothing if it is blank)."""
        text = self.entry.get().strip()
        if not text:
            return
        added = self._run(
            "INSERT INTO notes (id, body, created) VALUES (?, ?, ?)",
            (uuid.uuid4().hex, text, self.clock()),
        )
        if added is not None:
            self.entry.delete(0, "end")
            self.refresh()

    def delete(self) -> None:
        """Delete the selected note."""
        selected = [i for i in range(self.listbox.size()) if self.listbox.selection_includes(i)]
        if not selected:
            return
        if self._run("DELETE FROM notes WHERE id = ?", (self._ids[selected[0]],)) is not None:
            self.refresh()

    def refresh(self) -> None:
        """Reload the list from the database."""
        rows = self._run("SELECT id, body FROM notes ORDER BY created, id")
        if rows is None:
            return
        self._ids = [str(note_id) for note_id, _ in rows]
        self.listbox.delete(0, "end")
        for _, body in rows:
            self.listbox.insert("end", body)

    def close(self) -> None:
        """Stop polling (the owner stops the peer and destroys the window)."""
        if self._after is not None:
            self.master.after_cancel(self._after)
            self._after = None

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]] | None:
        try:
            return self.peer.execute(sql, params)
        except CrpeerError as exc:
            self.status.configure(text=f"error: {exc}")
            return None

    def _poll(self) -> None:
        changed = False
        while True:
            try:
                event = self.peer.events.get_nowait()
            except queue.Empty:
                break
            match event:
                case events.Changed():
                    changed = True
                case events.Connected(remote=remote):
                    self._connected.add(remote.site_id)
                case events.Disconnected(remote=remote):
                    self._connected.discard(remote.site_id)
                case _:
                    pass
        if changed:
            self.refresh()
        self._show_connections()
        self._after = self.master.after(self.poll_ms, self._poll)

    def _show_connections(self) -> None:
        count = len(self._connected)
        self.status.configure(text=f"{count} peer{'s' if count != 1 else ''} connected")


def transport_for(url: str, identity: Identity | None) -> Transport:
    """A listening transport for ``tcp://HOST:PORT`` or ``ws://HOST:PORT``,
    with TLS from ``identity`` when given. ConfigError for anything else."""
    parts = urlsplit(url)
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ConfigError(f"bad --listen address {url!r}") from exc
    if host is None or port is None:
        raise ConfigError(f"--listen needs tcp://HOST:PORT or ws://HOST:PORT, not {url!r}")
    tls: dict[str, Any] = {}
    if identity is not None:
        tls = {
            "server_ssl": identity.server_ssl_context(),
            "client_ssl": identity.client_ssl_context(),
        }
    if parts.scheme == "tcp":
        return TcpTransport(host, port, **tls)
    if parts.scheme in ("ws", "wss"):
        return WebSocketTransport(host, port, **tls)
    raise ConfigError(f"--listen needs tcp:// or ws://, not {url!r}")


def open_peer(
    database: Path, listen: str, connect: Sequence[str], name: str | None, insecure: bool
) -> BlockingPeer:
    """A BlockingPeer (not started) for the app's options."""
    prepare_database(database)
    identity = None if insecure else Identity.load_or_create(default_key_path(database))
    security: dict[str, Any] = (
        {"insecure": True}
        if identity is None
        else {"identity": identity, "trust": TrustStore.load(default_trust_path(database))}
    )
    return BlockingPeer(
        database, [transport_for(listen, identity)], connect=list(connect), name=name, **security
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the app until its window is closed; returns the exit status."""
    parser = argparse.ArgumentParser(description="A notes app that syncs with crpeer.")
    parser.add_argument("--db", type=Path, required=True, help="the notes database")
    parser.add_argument("--listen", default="tcp://127.0.0.1:0", help="tcp:// or ws:// address")
    parser.add_argument("--connect", action="append", default=[], help="a peer to dial")
    parser.add_argument("--name", help="the name other peers see")
    parser.add_argument("--insecure", action="store_true", help="plaintext, for trying it out")
    args = parser.parse_args(argv)
    try:
        peer = open_peer(args.db, args.listen, args.connect, args.name, args.insecure)
        with peer:
            root = tk.Tk()
            addresses = ", ".join(peer.listen_addresses())
            root.title(f"Notes: {args.db} ({addresses})")
            app = NotesApp(root, peer)
            root.mainloop()
            app.close()
    except CrpeerError as exc:
        print(f"notes_app: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
