"""How ``crpeer serve`` shows a node's events: JSON lines or text lines.

Text lines name a remote by its peer id, after the label the trust store
gives it (``laptop (NTG4OCI-...)``); site ids appear only in ``--json``
output. Catch-up progress shows rows of the app's tables, *changes* (one per
column value written, cr-sqlite's unit: the remote's backlog, rate and time
left are known in changes) and bytes: on a terminal as one bar per remote,
elsewhere as one line every ``progress_every`` seconds.

Given a ``log`` (``--log-format json``, :mod:`peer.cli_logs`), the same lines
become log records instead of stdout lines, each with the remote's full peer
id, its label, its address and the event's name as fields.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from peer import events
from peer.cli_common import echo_json, event_to_dict
from peer.errors import IdentityError
from peer.identity import format_peer_id
from peer.pairing import parse_peer_id

__all__ = ["CatchUpBars", "EventPrinter", "count", "human_bytes", "remote_label"]


def count(number: int, noun: str, plural: str | None = None) -> str:
    """``1 row``, ``2 rows``, ``1,000 changes``."""
    return f"{number:,} {noun if number == 1 else plural or noun + 's'}"


def human_bytes(size: float) -> str:
    """``512 B``, ``1.5 kB``, ``12.0 MB``."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def remote_label(remote: events.RemotePeer, labels: Callable[[str], str] | None = None) -> str:
    """How a person sees a remote: ``label (PEER-ID)``, the peer id alone, or
    (insecure, no peer id) its name."""
    if remote.peer_id is None:
        return remote.name
    shown = format_peer_id(remote.peer_id)
    label = labels(remote.peer_id) if labels is not None else ""
    return f"{label} ({shown})" if label else shown


_PEER_ID = re.compile(r"\b[A-Z2-7](?:-?[A-Z2-7]){33}\b")
"""A peer id, canonical or formatted (groups of seven with dashes)."""


def _peer_id_in(message: str) -> str | None:
    """The peer id a refusal's message names (an untrusted peer's), if any."""
    for candidate in _PEER_ID.findall(message):
        with contextlib.suppress(IdentityError):
            return parse_peer_id(candidate)
    return None


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%H:%M:%S")


class CatchUpBars:
    """One progress bar per remote catching up, drawn on ``console`` while any is shown.

    :meth:`show` adds or moves a remote's bar, :meth:`remove` takes it away
    (the drawing stops with the last one), :meth:`print` writes a line above
    the bars while they are drawn. Used from the event loop's thread only.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._tasks: dict[bytes, TaskID] = {}

    def __contains__(self, site_id: bytes) -> bool:
        return site_id in self._tasks

    def show(self, event: events.Progress, who: str, rate: str, left: str) -> None:
        """Draw ``event``'s remote (shown as ``who``) at its progress now."""
        if self._progress is None:
            # The time left comes from the remote's backlog estimate (an upper bound).
            self._progress = Progress(
                TextColumn("catching up from {task.description}"),
                BarColumn(),
                TextColumn("{task.fields[table_rows]}"),
                TextColumn("{task.completed:,.0f}/{task.total:,.0f} changes"),
                TextColumn("{task.fields[size]}"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[left]}"),
                console=self.console,
                transient=True,
            )
            self._progress.start()
        fields: dict[str, Any] = {
            "table_rows": count(event.table_rows, "row"),
            "rate": rate,
            "left": left,
            "size": human_bytes(event.bytes_received),
        }
        site = event.remote.site_id
        if site not in self._tasks:
            self._tasks[site] = self._progress.add_task(who, total=event.rows_expected, **fields)
        self._progress.update(
            self._tasks[site],
            completed=event.rows_received,
            total=max(event.rows_expected, event.rows_received),
            **fields,
        )

    def remove(self, site_id: bytes) -> None:
        """Take the remote's bar away, if it has one; stop drawing after the last."""
        task = self._tasks.pop(site_id, None)
        if task is not None and self._progress is not None:
            self._progress.remove_task(task)
            if not self._tasks:
                self.close()

    def print(self, text: str) -> bool:
        """Write ``text`` above the bars; False (nothing written) when none is drawn."""
        if self._progress is None:
            return False
        self._progress.console.print(text, markup=False, highlight=False)
        return True

    def close(self) -> None:
        """Stop drawing (the bars are transient: they leave no trace)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self._tasks.clear()


class EventPrinter:
    """Prints a node's events on stdout: JSON lines, or text lines.

    Subscribe :meth:`on_event`; events are held back until :meth:`listening`
    has printed the first line. ``labels`` maps a peer id to the label the
    user gave it ("" if none). In text mode, ``Progress`` events draw one
    progress bar per remote on ``console`` (stderr) when it is a terminal,
    and otherwise print a line at most every ``progress_every`` seconds; each
    remote's EOSE ends it with a summary line. Call :meth:`close` at the end.

    With ``log``, every text line is a record on that logger instead (info;
    warning for refusals, failed dials and sessions that ended with an error;
    error for :meth:`error`), also when ``as_json`` prints the events on
    stdout, and progress is never drawn as bars.
    """

    def __init__(
        self,
        *,
        as_json: bool,
        console: Console,
        labels: Callable[[str], str] | None = None,
        progress_every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger | None = None,
    ) -> None:
        self.as_json = as_json
        self.log = log
        self.console = console
        self.labels = labels
        self.progress_every = progress_every
        self._clock = clock
        self._held: list[events.Event] | None = []  # until the listening line is out
        self._bars = CatchUpBars(console)
        self._last: dict[bytes, events.Progress] = {}
        self._printed_at: dict[bytes, float] = {}
        self._dials: dict[str, tuple[str, str]] = {}

    def listening(self, document: dict[str, Any]) -> None:
        if self.as_json:
            echo_json({"event": "listening", "time": time.time(), **document})
        if self.log is not None:
            lan = " with mDNS" if document.get("lan") else ""
            self._line(
                f"serving {document['database']} on {', '.join(document['addresses'])}{lan}",
                event="listening",
                peer_id=document["peer_id"],
                address=", ".join(document["addresses"]),
            )
        elif not self.as_json:
            peer_id = document["peer_id"]
            click.echo(f"crpeer serving {document['database']}")
            click.echo(f"  peer id  {format_peer_id(peer_id) if peer_id else '(insecure)'}")
            for address in document["addresses"]:
                click.echo(f"  listening on {address}")
            if "lan" in document:
                lan = "on (finding peers on the LAN)" if document["lan"] else "off"
                click.echo(f"  mDNS     {lan}")
            for address in document.get("connect", []):
                click.echo(f"  dialing  {address}")
            if document.get("admin"):
                click.echo(f"  admin    {document['admin']}")
                if document.get("admin_token_file"):
                    click.echo(f"           (token in {document['admin_token_file']})")
        held, self._held = self._held or [], None
        for event in held:
            self.on_event(event)

    def on_event(self, event: events.Event) -> None:
        if self._held is not None:
            self._held.append(event)
            return
        if self.as_json:
            echo_json(event_to_dict(event, time.time()))
        if self.log is not None or not self.as_json:
            self._text(event)

    def error(self, message: str) -> None:
        """Report a failure that stops the node (an ``error`` event in JSON)."""
        if self.as_json:
            echo_json({"event": "error", "time": time.time(), "error": message})
        if self.log is not None or not self.as_json:
            self._line(f"error: {message}", level=logging.ERROR, event="error")

    def close(self) -> None:
        self._bars.close()

    def _who(self, remote: events.RemotePeer) -> str:
        return remote_label(remote, self.labels)

    def _text(self, event: events.Event) -> None:
        match event:
            case events.DialState():
                self._dial(event)
            case events.Connected(remote=remote):
                way = "from" if remote.inbound else "to"
                self._line(
                    f"connected {way} {self._who(remote)} ({remote.address})",
                    remote=remote,
                    event="connected",
                )
            case events.Progress(remote=remote):
                self._last[remote.site_id] = event
                self._show_progress(event)
            case events.Eose(remote=remote):
                self._end_progress(remote)
            case events.Changed(remote=remote, tables=tables, rows=rows, table_rows=table_rows):
                if remote.site_id not in self._bars:
                    what = (
                        f"{count(table_rows, 'row')} ({count(rows, 'change')})"
                        if table_rows
                        else count(rows, "change")
                    )
                    self._line(
                        f"{what} from {self._who(remote)} ({', '.join(sorted(tables))})",
                        remote=remote,
                        event="changed",
                    )
            case events.Outdated(remote=remote) as outdated:
                self._line(
                    f"{self._who(remote)} has schema {outdated.remote_schema_version} "
                    f"(ours {outdated.local_schema_version}): "
                    f"{count(outdated.held_rows, 'change')} held until this database is migrated",
                    remote=remote,
                    level=logging.WARNING,
                    event="outdated",
                )
            case events.Disconnected(remote=remote, error=error, discarded=discarded):
                self._end_progress(remote, finished=False)
                reason = f": {error}" if error else ""
                self._line(
                    f"disconnected from {self._who(remote)}{reason}",
                    remote=remote,
                    level=logging.WARNING if error else logging.INFO,
                    event="disconnected",
                )
                if discarded:
                    self._line(
                        f"  the transaction being received ({count(discarded, 'change')} so "
                        "far) was not applied: crpeer applies whole transactions only, so it "
                        "starts over on the next connection",
                        remote=remote,
                        level=logging.WARNING,
                        event="discarded",
                    )
            case events.SessionFailed(remote=None, address=address, error=error):
                self._line(
                    f"refused {address}: {error}",
                    level=logging.WARNING,
                    event="refused",
                    address=address,
                    peer_id=_peer_id_in(str(error)),
                )
            case events.ValueTooLarge(remote=remote, error=error):
                self._line(
                    f"cannot send to {self._who(remote)}: {error}",
                    remote=remote,
                    level=logging.WARNING,
                    event="value_too_large",
                )
            case events.Bootstrapped(remote=remote, bytes=size, seconds=seconds):
                self._line(
                    f"bootstrapped from a snapshot of {self._who(remote)} "
                    f"({size / 1e6:.1f} MB in {seconds:.1f} s); changes since follow",
                    remote=remote,
                    event="bootstrapped",
                )
            case events.SnapshotRefused(remote=remote, error=error):
                self._line(
                    f"refused a snapshot from {self._who(remote)}: {error}; "
                    "catching up with changes instead",
                    remote=remote,
                    level=logging.WARNING,
                    event="snapshot_refused",
                )
            case events.JoinSecretExpired(failures=failures, last_address=address):
                self._line(
                    f"the join secret expired after {failures} failed pairing attempts "
                    f"(the last from {address}); run `crpeer pair new-secret` to let a "
                    "device join",
                    level=logging.WARNING,
                    event="join_secret_expired",
                    address=address,
                )
            case _:
                pass

    def _dial(self, state: events.DialState) -> None:
        """One line when a dial target's state or error changes (not per retry)."""
        error = "" if state.error is None else str(state.error)
        if state.state == "connecting" or self._dials.get(state.address) == (state.state, error):
            return  # each retry goes connecting -> backing_off: say it once
        self._dials[state.address] = (state.state, error)
        match state.state:
            case "backing_off":
                at = state.retry_at
                when = "" if at is None else f"; next attempt at {_clock(at)}"
                self._line(
                    f"cannot reach {state.address}: {error or 'closed'}{when}",
                    level=logging.WARNING,
                    event="dial_failed",
                    address=state.address,
                )
            case "failed":
                self._line(
                    f"not dialing {state.address}: {error}",
                    level=logging.WARNING,
                    event="dial_failed",
                    address=state.address,
                )
            case _:
                pass  # connected: the Connected line follows; following: no news

    def _line(
        self,
        text: str,
        *,
        remote: events.RemotePeer | None = None,
        level: int = logging.INFO,
        event: str = "",
        address: str | None = None,
        peer_id: str | None = None,
    ) -> None:
        """One line on stdout, or one record on :attr:`log` with its fields."""
        if self.log is not None:
            if remote is not None:
                peer_id, address = remote.peer_id, address or remote.address
            label = self.labels(peer_id) if peer_id and self.labels is not None else ""
            fields = {"event": event, "peer_id": peer_id, "label": label, "address": address}
            self.log.log(level, "%s", text.strip(), extra=fields)
            return
        if not self._bars.print(text):
            click.echo(text)

    def _show_progress(self, event: events.Progress) -> None:
        site = event.remote.site_id
        left = event.remaining
        rate = f"{event.rate:,.0f} changes/s"
        left_text = "" if left is None else f"~{left:,.0f} s left"
        if not self.console.is_terminal or self.log is not None:
            now = self._clock()
            if now - self._printed_at.get(site, now - self.progress_every) >= self.progress_every:
                self._printed_at[site] = now
                self._line(
                    f"catching up from {self._who(event.remote)}: "
                    f"{count(event.table_rows, 'row')}, {event.rows_received:,}/"
                    f"{max(event.rows_expected, event.rows_received):,} changes "
                    f"({human_bytes(event.bytes_received)}), {rate}"
                    + (f", {left_text}" if left_text else ""),
                    remote=event.remote,
                    event="progress",
                )
            return
        self._bars.show(event, self._who(event.remote), rate, left_text)

    def _end_progress(self, remote: events.RemotePeer, *, finished: bool = True) -> None:
        self._bars.remove(remote.site_id)
        self._printed_at.pop(remote.site_id, None)
        last = self._last.pop(remote.site_id, None)
        if finished and last is not None and last.rows_received:
            self._line(
                f"caught up with {self._who(remote)}: {count(last.table_rows, 'row')} "
                f"({count(last.rows_received, 'change')}, {human_bytes(last.bytes_received)}) "
                f"in {last.elapsed:.1f} s ({last.rate:,.0f} changes/s)",
                remote=remote,
                event="caught_up",
            )
        elif finished:
            self._line(f"caught up with {self._who(remote)}", remote=remote, event="caught_up")
