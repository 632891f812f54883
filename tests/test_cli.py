"""The crpeer command line: every command, its errors, and real serves on loopback."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from peer import events
from peer.cli import cli, main
from peer.cli_common import parse_host_port, status_path, write_status_file
from peer.cli_serve import EventPrinter, NodeOptions, build_peer
from peer.errors import ChannelClosed, ConfigError
from peer.pairing import format_peer_id, peer_id_from_public_key
from peer.peer import Peer
from peer.retry import Backoff
from peer.store import Store
from tests.support import peek, wait_for, wait_until
from transports.http_sse import HttpSseTransport
from transports.lan import LanTransport
from transports.memory import MemoryNetwork, MemoryTransport
from transports.tcp import TcpTransport
from transports.websocket import WebSocketTransport

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "CREATE TABLE notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT, n INTEGER)"
OTHER = peer_id_from_public_key(b"\x07" * 32)


def run(*args: str | os.PathLike[str]) -> Result:
    return CliRunner().invoke(cli, [os.fspath(a) for a in args], prog_name="crpeer")


def ok(*args: str | os.PathLike[str]) -> Result:
    result = run(*args)
    assert result.exit_code == 0, (result.output, result.stderr, result.exception)
    return result


def failed(*args: str | os.PathLike[str], match: str) -> Result:
    """A runtime failure: exit 1 and one `crpeer: error:` line, the last on stderr."""
    result = run(*args)
    assert result.exit_code == 1, (result.output, result.exception)
    lines = result.stderr.splitlines()
    assert [line for line in lines if line.startswith("crpeer: error: ")] == lines[-1:], lines
    assert match in lines[-1], lines
    return result


def usage_error(*args: str | os.PathLike[str], match: str) -> None:
    result = run(*args)
    assert result.exit_code == 2, (result.output, result.exception)
    assert match in result.stderr


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """An initialized database with a replicated ``notes`` table."""
    path = tmp_path / "a.db"
    ok("init", path)
    ok("sql", path, SCHEMA)
    ok("crr", path, "notes")
    return path


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


def test_every_command_has_help() -> None:
    ok("--help")
    commands = list(all_commands(cli))
    assert {c[0] for c in commands} >= {
        "init",
        "id",
        "serve",
        "status",
        "peers",
        "trust",
        "pair",
        "sql",
        "crr",
        "snapshot",
        "restore",
    }
    for command in commands:
        assert "Usage: crpeer" in ok(*command, "--help").output


def test_main_returns_the_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert main(["no-such-command"]) == 2
    assert main(["sql", str(tmp_path / "missing.db"), "SELECT 1"]) == 1
    assert "crpeer: error: no database at" in capsys.readouterr().err


def test_init_creates_the_database_key_and_trust_store(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    first = json.loads(ok("init", path, "--json").stdout)
    assert first["database"] == str(path)
    assert len(first["peer_id"]) == 34
    for file in (Path(first["key"]), Path(first["trust"])):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
    again = ok("init", path)
    assert first["peer_id"][:7] in again.stdout
    assert json.loads(ok("id", path, "--json").stdout)["peer_id"] == first["peer_id"]
    assert ok("id", path).stdout.strip().replace("-", "") == first["peer_id"]
    usage_error("init", tmp_path, match="is a directory")
    failed("init", tmp_path / "no" / "such" / "dir.db", match="cannot open database")


def test_missing_and_corrupt_files_are_one_line_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    for args in (
        ("sql", missing, "SELECT 1"),
        ("crr", missing, "notes"),
        ("status", missing),
        ("peers", missing),
        ("trust", "list", missing),
        ("pair", "new-secret", missing),
        ("snapshot", missing, tmp_path / "s.db"),
        ("serve", missing, "--insecure", "--no-lan"),
    ):
        failed(*args, match="no database at")
    failed("id", missing, match="no identity key")
    assert not missing.exists()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    failed("sql", garbage, "SELECT 1", match="not a usable database")
    bad_key = tmp_path / "k.db"
    ok("init", bad_key)
    Path(f"{bad_key}.key").chmod(0o644)
    failed("id", bad_key, match="chmod 600")


def test_sql_rows_params_json_and_errors(db: Path) -> None:
    ok("sql", db, "INSERT INTO notes VALUES (?, ?, ?)", "-p", "1", "-p", "hello", "-p", "7")
    ok("sql", db, "INSERT INTO notes VALUES (2, NULL, 8)")
    text = ok("sql", db, "SELECT id, body, n, x'00ff' AS b FROM notes ORDER BY id").stdout
    assert text.splitlines() == ["id\tbody\tn\tb", "1\thello\t7\tx'00ff'", "2\tNULL\t8\tx'00ff'"]
    bare = ok("sql", db, "SELECT id FROM notes ORDER BY id", "--no-header").stdout
    assert bare.splitlines() == ["1", "2"]
    rows = json.loads(ok("sql", db, "SELECT id, body, x'00ff' AS b FROM notes", "--json").stdout)
    assert rows == [
        {"id": 1, "body": "hello", "b": {"hex": "00ff"}},
        {"id": 2, "body": None, "b": {"hex": "00ff"}},
    ]
    update = ok("sql", db, "UPDATE notes SET n = 0")
    assert (update.stdout, update.stderr) == ("", "2 rows changed\n")
    assert json.loads(ok("sql", db, "DELETE FROM notes WHERE id = 2", "--json").stdout) == {
        "changed": 1
    }
    failed("sql", db, "SELEC 1", match="syntax error")
    failed("sql", db, "SELECT ?", match="bindings")
    usage_error("sql", db, "/* only a comment */ ;", match="no SQL statement given")


def test_crr_errors(db: Path) -> None:
    failed("crr", db, "no_such_table", match="cannot make 'no_such_table' a CRR")
    usage_error("crr", db, match="Missing argument")


def test_trust_add_list_remove(db: Path) -> None:
    assert ok("trust", "list", db, "--json").stdout.strip() == "[]"
    assert "no trusted peers" in ok("peers", db).stdout
    added = ok("trust", "add", db, OTHER.lower(), "--label", "laptop")
    assert OTHER[:7] in added.stdout
    listed = json.loads(ok("trust", "list", db, "--json").stdout)
    assert [(e["peer_id"], e["label"]) for e in listed] == [(OTHER, "laptop")]
    peers = json.loads(ok("peers", db, "--json").stdout)
    assert peers["peers"][0]["connected"] is None  # no serve running: unknown
    assert peers["joining_open"] is False
    assert "laptop" in ok("trust", "list", db).stdout
    typo = OTHER[:5] + ("A" if OTHER[5] != "A" else "B") + OTHER[6:]
    failed("trust", "add", db, typo, match="peer id")
    failed("trust", "add", db, "short", match="peer id")
    ok("trust", "remove", db, OTHER)
    failed("trust", "remove", db, OTHER, match="was not trusted")
    usage_error("trust", "add", db, match="Missing argument")


def test_join_secret_commands(db: Path, tmp_path: Path) -> None:
    assert "closed" in ok("pair", "show", db).stdout
    secret = json.loads(ok("pair", "new-secret", db, "--json").stdout)["join_secret"]
    assert len(secret.replace("-", "")) >= 20
    assert ok("pair", "show", db).stdout.strip() == secret
    assert json.loads(ok("peers", db, "--json").stdout)["joining_open"] is True
    other = ok("pair", "new-secret", db).stdout.strip()
    assert other != secret
    ok("pair", "clear", db)
    assert json.loads(ok("pair", "show", db, "--json").stdout) == {"join_secret": None}
    # `pair DATABASE ...` is `pair join DATABASE ...`
    usage_error("pair", db, "--secret", secret, "--insecure", match="pairing needs TLS")
    failed("pair", tmp_path / "none.db", "--secret", secret, match="no database at")
    trust_file = Path(f"{db}.trust.json")
    trust_file.write_text("{broken", encoding="utf-8")
    failed("pair", "show", db, match="not a valid crpeer trust store")


def test_serve_usage_errors(db: Path) -> None:
    usage_error("serve", db, "--tcp", "nonsense", match="is not HOST:PORT")
    usage_error("serve", db, "--tcp", "127.0.0.1:70000", match="out of range")
    usage_error("serve", db, "--connect", "ftp://x:1", match="is not a URL")
    usage_error("serve", db, "--connect", "tcp://", match="not a tcp://HOST:PORT")
    usage_error("serve", match="Missing argument")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        (":9000", ("0.0.0.0", 9000)),
        ("9000", ("0.0.0.0", 9000)),
        ("[::1]:7", ("::1", 7)),
        ("example.org:443", ("example.org", 443)),
    ],
)
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["", "host", "host:", "a:b", "1.2.3.4:99999", "[::1]"])
def test_parse_host_port_refuses(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_host_port(text)


def test_status_without_serve_stale_and_damaged(db: Path) -> None:
    stopped = json.loads(ok("status", db, "--json").stdout)
    assert stopped["serve"] == {"state": "stopped"}
    assert stopped["sessions"] == []
    assert stopped["db_version"] == 0
    assert "not running" in ok("status", db).stdout
    write_status_file(
        status_path(db),
        {"pid": os.getpid(), "updated": time.time() - 60, "listen": [], "status": {}},
    )
    crashed = json.loads(ok("status", db, "--json").stdout)  # no process holds the lock
    assert crashed["serve"]["state"] == "crashed"
    assert crashed["serve"]["age"] >= 60
    assert "not running (pid" in ok("status", db).stdout
    status_path(db).write_text("[]", encoding="utf-8")
    failed("status", db, match="not a crpeer status file")


# -- snapshots --------------------------------------------------------------------------


def test_snapshot_and_restore_errors(db: Path, tmp_path: Path) -> None:
    snap = tmp_path / "snap.db"
    assert "snapshot written" in ok("snapshot", db, snap).stdout
    failed("snapshot", db, snap, match="exists")
    failed("restore", snap, db, match="exists")
    failed("restore", tmp_path / "none.db", tmp_path / "x.db", match="no snapshot at")
    plain = tmp_path / "plain.sqlite"
    plain.write_bytes(b"")
    failed("restore", plain, tmp_path / "y.db", match="not a crpeer database")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x00" * 4096)
    failed("restore", garbage, tmp_path / "z.db", match="not a usable database")
    for name in ("x.db", "y.db", "z.db"):
        assert not (tmp_path / name).exists()
    restored = json.loads(ok("restore", snap, tmp_path / "copy.db", "--json").stdout)
    original = json.loads(ok("status", db, "--json").stdout)["site_id"]
    assert restored["site_id"] != original
    again = json.loads(ok("restore", snap, tmp_path / "copy2.db", "--json").stdout)
    assert again["site_id"] not in (original, restored["site_id"])


def rows(store: Store) -> list[Any]:
    """The notes of ``store``'s file, a peer running on it or not (see
    :func:`tests.support.peek`)."""
    return peek(store, "SELECT * FROM notes ORDER BY id")


async def test_a_restored_snapshot_syncs_only_the_delta(db: Path, tmp_path: Path) -> None:
    with Store(db) as store:
        store.executescript(
            "BEGIN;"
            + "".join(f"INSERT INTO notes VALUES ({i}, 'old', {i});" for i in range(50))
            + "COMMIT;"
        )
        store.execute("UPDATE notes SET body = 'edited before' WHERE id = 3")
    ok("snapshot", db, tmp_path / "snap.db")
    ok("restore", tmp_path / "snap.db", tmp_path / "b.db")
    source, copy = Store(db), Store(tmp_path / "b.db")
    try:
        snapshot_version = copy.db_version()
        assert copy.site_id != source.site_id
        assert copy.cursor() == {source.site_id: snapshot_version}
        assert copy.own_version() == 0
        assert rows(copy) == rows(source)
        # Both go on independently, then meet.
        for i in range(50, 55):
            source.execute("INSERT INTO notes VALUES (?, 'source', ?)", (i, i))
        source.execute("UPDATE notes SET body = 'edited after' WHERE id = 4")
        for i in range(100, 103):
            copy.execute("INSERT INTO notes VALUES (?, 'copy', ?)", (i, i))
        delta_from_source = source.execute(
            "SELECT count(*) FROM crsql_changes WHERE site_id = ? AND db_version > ?",
            (source.site_id, snapshot_version),
        )[0][0]
        delta_from_copy = copy.execute(
            "SELECT count(*) FROM crsql_changes WHERE site_id = ?", (copy.site_id,)
        )[0][0]
        assert (delta_from_source, delta_from_copy) == (11, 6)

        network = MemoryNetwork()
        fast = Backoff(initial=0.01, maximum=0.2)
        a = Peer(source, [MemoryTransport(network, "a")], insecure=True, backoff=fast)
        b = Peer(
            copy,
            [MemoryTransport(network, "b")],
            connect=["memory://a"],
            insecure=True,
            backoff=fast,
        )
        async with a, b:
            await wait_for(lambda: rows(source) == rows(copy) and len(rows(copy)) == 58, within=15)
            await wait_for(lambda: bool(a.sessions) and bool(b.sessions), within=15)
            # A marker each way (two changes each): a session sends in the
            # order its store holds the changes, so anything more either side
            # sent (old rows, or what it merged) went before its marker.
            await b.execute("INSERT INTO notes VALUES (60, 'marker from b', 60)")
            await wait_for(lambda: len(rows(source)) == 59, within=15)
            await a.execute("INSERT INTO notes VALUES (61, 'marker from a', 61)")
            await wait_for(
                lambda: (
                    len(rows(copy)) == 60
                    and a.sessions[0].stats.rows_sent >= delta_from_source + 2
                    and b.sessions[0].stats.rows_sent >= delta_from_copy + 2
                ),
                within=15,
            )
            assert a.sessions[0].stats.rows_sent == delta_from_source + 2
            assert b.sessions[0].stats.rows_sent == delta_from_copy + 2
        assert rows(copy)[4] == (4, "edited after", 4)
        assert rows(source)[-1] == (102, "copy", 102)
    finally:
        source.close()
        copy.close()


# -- real serves on loopback --------------------------------------------------------


class Serve:
    """``crpeer serve`` in a subprocess, its output in a file."""

    def __init__(self, tmp_path: Path, database: Path, *args: str) -> None:
        self.out = tmp_path / f"{database.name}.out"
        self.err = tmp_path / f"{database.name}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "peer.cli", "serve", str(database), "--json", *args],
                cwd=ROOT,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )

    def lines(self) -> list[dict[str, Any]]:
        text = self.out.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    def listening(self, within: float = 30.0) -> str:
        with contextlib.suppress(AssertionError):  # no line in time: said below
            wait_until(lambda: bool(self.lines()) or self.process.poll() is not None, within)
        lines = self.lines()
        if not lines:
            raise AssertionError(f"serve did not start: {self.err.read_text()}")
        assert lines[0]["event"] == "listening"
        address: str = lines[0]["addresses"][0]
        return address

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def notes(database: Path) -> list[list[Any]]:
    rows = json.loads(
        ok("sql", database, "SELECT id, body FROM notes ORDER BY id", "--json").stdout
    )
    return [[row["id"], row["body"]] for row in rows]


def two_databases(tmp_path: Path) -> tuple[Path, Path]:
    paths = tmp_path / "a.db", tmp_path / "b.db"
    for path in paths:
        ok("init", path)
        ok("sql", path, SCHEMA)
        ok("crr", path, "notes")
    return paths


@pytest.mark.timeout(180)
def test_two_insecure_serves_sync_an_insert(tmp_path: Path) -> None:
    a, b = two_databases(tmp_path)
    loopback = ("--no-lan", "--insecure", "--tcp", "127.0.0.1:0")
    serves: list[Serve] = []
    try:
        serves.append(Serve(tmp_path, a, *loopback))
        address = serves[0].listening()
        serves.append(Serve(tmp_path, b, *loopback, "--connect", address))
        serves[1].listening()
        ok("sql", a, "INSERT INTO notes VALUES (1, 'typed on a', 0)")
        wait_until(lambda: notes(b) == [[1, "typed on a"]], within=20, interval=0.1)
        ok("sql", b, "INSERT INTO notes VALUES (2, 'typed on b', 0)")
        wait_until(
            lambda: notes(a) == [[1, "typed on a"], [2, "typed on b"]], within=20, interval=0.1
        )
        wait_until(
            lambda: json.loads(ok("status", a, "--json").stdout)["serve"]["state"] == "running",
            within=20,
            interval=0.1,
        )
        codes = [serve.stop() for serve in serves]
        assert codes == [0, 0], [s.err.read_text() for s in serves]
        events = [line["event"] for line in serves[1].lines() if line["event"] != "dial_state"]
        assert events[:2] == ["listening", "connected"]
        assert "changed" in events
        assert not status_path(a).exists()
    finally:
        for serve in serves:
            if serve.process.poll() is None:
                serve.process.kill()
                serve.process.wait()


@pytest.mark.timeout(180)
def test_pairing_then_secure_serves_sync(tmp_path: Path) -> None:
    a, b = two_databases(tmp_path)
    secret = ok("pair", "new-secret", a).stdout.strip()
    loopback = ("--no-lan", "--tcp", "127.0.0.1:0")
    serves: list[Serve] = []
    try:
        serves.append(Serve(tmp_path, a, *loopback))
        address = serves[0].listening()
        joined = ok("pair", b, "--secret", secret, "--connect", address, *loopback, "--json")
        id_a = json.loads(ok("id", a, "--json").stdout)["peer_id"]
        id_b = json.loads(ok("id", b, "--json").stdout)["peer_id"]
        assert json.loads(joined.stdout) == {"paired": id_a, "new": True}
        assert [e["peer_id"] for e in json.loads(ok("trust", "list", b, "--json").stdout)] == [id_a]
        wait_until(
            lambda: id_b in ok("trust", "list", a).stdout.replace("-", ""), within=20, interval=0.1
        )
        ok("pair", "clear", a)
        again = ok("pair", b, "--secret", secret, "--connect", address, *loopback)
        assert again.stdout.startswith("already paired with")

        serves.append(Serve(tmp_path, b, *loopback, "--connect", address))
        serves[1].listening()
        ok("sql", b, "INSERT INTO notes VALUES (7, 'over TLS', 0)")
        wait_until(lambda: notes(a) == [[7, "over TLS"]], within=20, interval=0.1)

        def a_sees_b() -> bool:
            report = json.loads(ok("status", a, "--json").stdout)
            return report["serve"]["state"] == "running" and [
                (s["peer_id"], s["state"]) for s in report["sessions"]
            ] == [(id_b, "live")]

        wait_until(a_sees_b, within=20, interval=0.1)
        peers = json.loads(ok("peers", a, "--json").stdout)["peers"]
        assert [(p["peer_id"], p["connected"]) for p in peers] == [(id_b, True)]
        text = ok("status", a).stdout
        assert "running" in text
        assert "live" in text
        codes = [serve.stop() for serve in serves]
        assert codes == [0, 0], [s.err.read_text() for s in serves]
    finally:
        for serve in serves:
            if serve.process.poll() is None:
                serve.process.kill()
                serve.process.wait()


# -- event printing -----------------------------------------------------------------


REMOTE = events.RemotePeer(b"\x01" * 16, "laptop", "tcp://10.0.0.2:9000", "tcp", False, OTHER)


def progress(received: int, elapsed: float) -> events.Progress:
    return events.Progress(REMOTE, received, 1000, received * 10, elapsed)


def test_json_lines_start_with_listening(capsys: pytest.CaptureFixture[str]) -> None:
    printer = EventPrinter(as_json=True, console=Console(file=io.StringIO()))
    printer.on_event(events.Connected(REMOTE))  # held until the listening line is out
    assert capsys.readouterr().out == ""
    printer.listening({"database": "a.db", "peer_id": None, "addresses": ["tcp://x:1"]})
    printer.on_event(events.Synced(REMOTE, {b"\x02" * 16: 5}))
    printer.on_event(events.Changed(REMOTE, frozenset({"b", "a"}), 3))
    printer.on_event(progress(500, 2.0))
    printer.on_event(events.Disconnected(REMOTE, ChannelClosed("gone")))
    printer.close()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["event"] for line in lines] == [
        "listening",
        "connected",
        "catching_up",
        "changed",
        "progress",
        "disconnected",
    ]
    assert lines[1]["remote"] == {
        "site_id": "01" * 16,
        "name": "laptop",
        "address": "tcp://10.0.0.2:9000",
        "transport": "tcp",
        "inbound": False,
        "peer_id": OTHER,
    }
    assert lines[2]["cursor"] == {"02" * 16: 5}
    assert (lines[3]["tables"], lines[3]["rows"]) == (["a", "b"], 3)
    assert (lines[4]["rate"], lines[4]["remaining"]) == (250.0, 2.0)
    assert lines[5]["error"] == "gone"


def test_text_lines_and_a_progress_bar_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    terminal = io.StringIO()
    console = Console(file=terminal, force_terminal=True, width=120)
    printer = EventPrinter(as_json=False, console=console)
    printer.listening({"database": "a.db", "peer_id": OTHER, "addresses": ["tcp://x:1"]})
    printer.on_event(events.Connected(REMOTE))
    printer.on_event(progress(250, 1.0))
    printer.on_event(events.Changed(REMOTE, frozenset({"notes"}), 250))  # shown as progress
    printer.on_event(progress(1000, 2.0))
    printer.on_event(events.Eose(REMOTE))
    printer.on_event(events.Changed(REMOTE, frozenset({"notes"}), 2))
    printer.on_event(events.SessionFailed(None, "tcp://10.0.0.9:1", ChannelClosed("refused")))
    printer.close()
    out = capsys.readouterr().out + terminal.getvalue()
    shown = format_peer_id(OTHER)
    assert "listening on tcp://x:1" in out
    assert f"connected to {shown} (tcp://10.0.0.2:9000)" in out
    assert f"catching up from {shown}" in out
    assert (
        f"caught up with {shown}: 0 rows (1,000 changes, 10.0 kB) in 2.0 s (500 changes/s)" in out
    )
    assert "250 changes from" not in out
    assert f"2 changes from {shown} (notes)" in out
    assert "refused tcp://10.0.0.9:1: refused" in out


def test_serve_fails_cleanly_when_its_port_is_taken(db: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        failed("serve", db, "--no-lan", "--insecure", "--tcp", f"127.0.0.1:{port}", match="listen")
    assert not status_path(db).exists()


def test_build_peer_picks_transports_and_security(db: Path) -> None:
    secure, identity = build_peer(NodeOptions(db))
    (lan,) = secure.transports
    assert isinstance(lan, LanTransport)
    assert lan.peer_id == identity.peer_id == secure.peer_id
    plain, _ = build_peer(
        NodeOptions(
            db,
            tcp=("127.0.0.1", 0),
            lan=False,
            insecure=True,
            connect=("ws://127.0.0.1:1/crpeer", "http://127.0.0.1:2/crpeer"),
        )
    )
    assert [type(t) for t in plain.transports] == [
        TcpTransport,
        WebSocketTransport,
        HttpSseTransport,
    ]
    assert plain.peer_id is None
    assert all(t.listen_addresses == [] for t in plain.transports)  # not started
    listening, _ = build_peer(NodeOptions(db, lan=False, ws=("127.0.0.1", 0), http=("::1", 0)))
    assert [t.scheme for t in listening.transports] == ["tcp", "wss", "https"]
