"""The admin listener on loopback: metrics of real syncing peers, the API, the token."""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, get_args

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from peer import events
from peer.admin import (
    AdminOptions,
    AdminServer,
    is_loopback,
    load_or_create_token,
    token_path,
    token_required,
)
from peer.cli_events import EventPrinter
from peer.errors import ConfigError, ErrorCode, RemoteProtocolError, StoreError
from peer.metrics import METRICS, NodeMetrics, error_code
from peer.peer import Peer
from tests.support import Node, address, refusals, wait_for

LOOPBACK = AdminOptions("127.0.0.1", 0)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def database(node: Node) -> Path:
    return Path(node.store.path)


async def scrape(url: str, **headers: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as client,
        client.get(url + "metrics", headers=headers) as response,
    ):
        return response.status, await response.text()


def parse(text: str) -> tuple[Samples, set[str]]:
    """Every sample as ``{(name, sorted labels): value}``, and the family names."""
    samples: Samples = {}
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, names


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


@pytest.fixture
async def admin_of() -> AsyncIterator[Callable[..., Any]]:
    """Build an AdminServer for a peer before it starts; stopped at the end."""
    servers: list[AdminServer] = []

    def make(peer: Peer, node: Node, options: AdminOptions = LOOPBACK) -> AdminServer:
        server = AdminServer(peer, options, database=database(node), lan=False)
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


async def test_metrics_of_two_peers_syncing_over_tcp(nodes: Any, admin_of: Any) -> None:
    a, b, stranger = nodes("a"), nodes("b"), nodes("stranger")
    a.trust.add(b.identity.peer_id, "laptop")
    b.trust.add(a.identity.peer_id)
    stranger.trust.add(a.identity.peer_id)
    id_b = b.identity.peer_id
    pa = a.peer()
    admin = admin_of(pa, a)
    async with pa:
        await admin.start([address(pa)])
        pb = b.peer([address(pa)])
        metrics_b = NodeMetrics(pb)  # the collector alone, on the other side
        async with pb:
            for n in range(50):
                await pb.execute("INSERT INTO notes VALUES (?, ?)", (n, f"note {n}"))
            await wait_for(lambda: len(a.rows()) == 50)

            async def live_and_in_sync() -> bool:
                samples, _ = parse((await scrape(admin.url))[1])
                key = ("crpeer_peer_classification", dict(peer=id_b, name="b"))
                labels = {**key[1], "classification": "in_sync"}
                return (
                    samples.get(("crpeer_sessions", (("state", "live"), ("transport", "tcp")))) == 1
                    and samples.get((key[0], tuple(sorted(labels.items())))) == 1
                )

            await wait_for(live_and_in_sync, within=10, interval=0.05)  # a sees b live, in sync
            status, text = await scrape(admin.url)
            assert status == 200
            samples, names = parse(text)
            assert names >= set(METRICS) - {"crpeer_node"}  # info families parse as crpeer_node
            assert value(samples, "crpeer_sessions", transport="tcp", state="catching_up") == 0
            received = value(samples, "crpeer_peer_rows_received_total", peer=id_b, name="b")
            assert received == 50  # one change per non-key column value
            assert value(samples, "crpeer_peer_bytes_received_total", peer=id_b, name="b") > 0
            assert value(samples, "crpeer_peer_bytes_sent_total", peer=id_b, name="b") > 0
            for direction in ("to_send", "to_receive"):
                labels = {"peer": id_b, "name": "b", "direction": direction}
                assert value(samples, "crpeer_peer_lag_versions", **labels) == 0
            assert value(samples, "crpeer_peer_backlog_changes", peer=id_b, name="b") == 0
            assert value(samples, "crpeer_held_rows") == 0
            assert value(samples, "crpeer_db_version") > 0
            assert value(samples, "crpeer_database_size_bytes") == os.stat(database(a)).st_size
            wal = os.stat(f"{database(a)}-wal").st_size
            assert value(samples, "crpeer_wal_size_bytes") == wal > 0
            info = value(
                samples,
                "crpeer_node_info",
                peer_id=a.identity.peer_id,
                site_id=pa.site_id.hex(),
                name="a",
            )
            assert info == 1

            # b is no longer trusted: a cuts its session, then refuses it.
            a.trust.remove(id_b)
            await wait_for(lambda: pa.sessions == [] and len(refusals(a)) >= 1)
            await wait_for(lambda: any(e.remote is not None for e in refusals(b)))
            samples, _ = parse((await scrape(admin.url))[1])
            failed = Counter(error_code(e.error) for e in refusals(b) if e.remote is not None)
            assert failed == {"untrusted": 1}  # a's close names the wire code
            samples_b, _ = parse(generate_latest(metrics_b.registry).decode())
            assert samples_b == {}  # nothing before the first refresh
            samples_b, _ = parse((await metrics_b.exposition()).decode())
            for code, count in failed.items():
                assert value(samples_b, "crpeer_session_failures_total", code=code) == count
            # Every dial state has its gauge (at 0 when no address is in it).
            dials = [dict(labels) for name, labels in samples_b if name == "crpeer_dials"]
            dial_states = {labels["state"] for labels in dials}
            assert dial_states == set(get_args(events.DialStateName))
            refused = sum(1 for e in refusals(a) if e.remote is None)
            assert value(samples, "crpeer_refusals_total", reason="untrusted") == refused >= 1

        # b is gone: its session counts stay, the session gauges drop.
        await wait_for(lambda: pa.sessions == [])
        samples, _ = parse((await scrape(admin.url))[1])
        assert value(samples, "crpeer_peer_rows_received_total", peer=id_b, name="b") == received
        assert value(samples, "crpeer_sessions", transport="tcp", state="live") == 0
        assert ("crpeer_peer_lag_versions", (("direction", "to_send"), ("name", "b"))) not in (
            samples
        )

        # A stranger is refused before any sync frame.
        async with stranger.peer([address(pa)]):
            await wait_for(lambda: len(refusals(a)) >= 1)
        samples, _ = parse((await scrape(admin.url))[1])
        assert value(samples, "crpeer_refusals_total", reason="untrusted") >= 1
        assert value(samples, "crpeer_pairing_attempts_total", outcome="paired") == 0


async def test_pairing_attempts_are_counted(nodes: Any, admin_of: Any) -> None:
    host, joiner, intruder = nodes("host"), nodes("joiner"), nodes("intruder")
    secret = host.trust.rotate_join_secret()
    ph = host.peer()
    admin = admin_of(ph, host)
    async with ph:
        await admin.start()
        async with intruder.peer([address(ph)], join_secret="WRONG-SECRET-WRONG-SECRET-12"):
            await wait_for(lambda: len(refusals(host)) >= 1)
        async with joiner.peer([address(ph)], join_secret=secret):
            await wait_for(lambda: len(ph.sessions) == 1)
        samples, _ = parse((await scrape(admin.url))[1])
    assert value(samples, "crpeer_pairing_attempts_total", outcome="paired") == 1
    assert value(samples, "crpeer_pairing_attempts_total", outcome="refused") >= 1
    assert value(samples, "crpeer_refusals_total", reason="pairing") >= 1


async def test_apply_and_read_times_are_histograms(nodes: Any, admin_of: Any) -> None:
    a, b = nodes("a"), nodes("b")
    a.trust.add(b.identity.peer_id)
    b.trust.add(a.identity.peer_id)
    pa = a.peer()
    rows = a.rows
    assert pa._worker.timed("apply", rows) is rows  # nothing observes: nothing is timed
    admin = admin_of(pa, a)
    async with pa:
        await admin.start()
        for n in range(20):
            await pa.execute("INSERT INTO notes VALUES (?, ?)", (n, f"from a {n}"))
        pb = b.peer([address(pa)])
        async with pb:
            for n in range(20, 50):
                await pb.execute("INSERT INTO notes VALUES (?, ?)", (n, f"from b {n}"))
            await wait_for(lambda: len(a.rows()) == 50 and len(b.rows()) == 50)
            samples, names = parse((await scrape(admin.url))[1])
    assert {"crpeer_apply_seconds", "crpeer_read_seconds"} <= names
    for name in ("crpeer_apply_seconds", "crpeer_read_seconds"):
        count = value(samples, f"{name}_count")
        assert count > 0  # a applied b's rows and read its own to send to b
        assert value(samples, f"{name}_sum") > 0
        assert value(samples, f"{name}_bucket", le="+Inf") == count
        assert value(samples, f"{name}_bucket", le="10.0") <= count
    await admin.stop()
    assert pa.timing_observers == []  # the admin server's collector let go


def test_error_codes_name_the_wire_code_or_the_error_class() -> None:
    assert error_code(RemoteProtocolError(ErrorCode.INVALID_CHANGE, "x")) == "invalid_change"
    assert error_code(StoreError("disk")) == "store"
    assert error_code(ConfigError("x")) == "config"


async def read_events(
    client: aiohttp.ClientSession, url: str, *, until: str, headers: dict[str, str] | None = None
) -> list[tuple[int, dict[str, Any]]]:
    """Events from ``/api/events`` as (id, event), up to the first ``until`` event."""
    seen: list[tuple[int, dict[str, Any]]] = []
    async with client.get(url + "api/events", headers=headers) as stream, asyncio.timeout(20):
        event_id = 0
        while not seen or seen[-1][1]["event"] != until:
            line = (await stream.content.readline()).decode()
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                seen.append((event_id, json.loads(line[6:])))
    return seen


async def test_api_and_events_of_a_running_peer(nodes: Any, admin_of: Any) -> None:
    a, b = nodes("a"), nodes("b")
    a.trust.add(b.identity.peer_id, "laptop")
    b.trust.add(a.identity.peer_id)
    pa = a.peer()
    admin = admin_of(pa, a)
    async with pa, aiohttp.ClientSession() as client:
        await admin.start([address(pa)])
        async with client.get(admin.url + "api/events") as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            async with b.peer([address(pa)]) as pb:
                await pb.execute("INSERT INTO notes VALUES (1, 'hello')")
                seen: list[dict[str, Any]] = []
                async with asyncio.timeout(20):
                    while not any(e["event"] == "changed" for e in seen):
                        line = (await stream.content.readline()).decode()
                        if line.startswith("data: "):
                            seen.append(json.loads(line[6:]))
                kinds = [e["event"] for e in seen]
                assert kinds[0] == "connected"
                changed = next(e for e in seen if e["event"] == "changed")
                assert changed["tables"] == ["notes"]
                assert changed["remote"]["peer_id"] == b.identity.peer_id

                async with client.get(admin.url + "api/status") as response:
                    status = await response.json()
                assert status["serve"]["state"] == "running"
                assert status["serve"]["listen"] == [address(pa)]
                assert status["integrity"] == "ok"
                assert [s["peer_id"] for s in status["sessions"]] == [b.identity.peer_id]
                async with client.get(admin.url + "api/peers") as response:
                    peers = await response.json()
                assert peers == {
                    "peers": [
                        {
                            "peer_id": b.identity.peer_id,
                            "label": "laptop",
                            "added": a.trust.list()[0].added.isoformat(),
                            "connected": True,
                        }
                    ],
                    "joining_open": False,
                }
                async with client.get(admin.url + "api/node") as response:
                    node = await response.json()
                assert node["labels"] == {b.identity.peer_id: "laptop"}
                assert list(node["connected_since"]) == [pb.site_id.hex()]
                assert node["database_bytes"] == os.stat(database(a)).st_size
        # A client that connects later gets the recent events; one that
        # reconnects with Last-Event-ID gets only those after it.
        replayed = await read_events(client, admin.url, until="disconnected")
        assert [e["event"] for _, e in replayed][:1] == ["connected"]
        first_id = replayed[0][0]
        after = await read_events(
            client, admin.url, until="disconnected", headers={"Last-Event-ID": str(first_id)}
        )
        assert after == [item for item in replayed if item[0] > first_id]
        for path, kind in (("", "text/html"), ("app.js", "text/javascript")):
            async with client.get(admin.url + path) as response:
                assert response.status == 200
                assert response.content_type == kind
                assert "default-src 'self'" in response.headers["Content-Security-Policy"]


async def test_a_loopback_listener_answers_only_to_loopback_host_names(
    nodes: Any, admin_of: Any
) -> None:
    a = nodes("a")
    pa = a.peer()
    admin = admin_of(pa, a)
    async with pa, aiohttp.ClientSession() as client:
        await admin.start()
        assert admin.token is None
        assert not token_path(database(a)).exists()
        for host, expected in (("evil.example", 403), ("localhost", 200), ("127.0.0.1", 200)):
            async with client.get(admin.url + "api/status", headers={"Host": host}) as response:
                assert response.status == expected, host


async def test_a_required_token_guards_metrics_and_the_api(nodes: Any, admin_of: Any) -> None:
    a = nodes("a")
    pa = a.peer()
    admin = admin_of(pa, a, AdminOptions("127.0.0.1", 0, "required"))
    jar = aiohttp.CookieJar(unsafe=True)  # keep cookies of an IP address, as browsers do
    async with pa, aiohttp.ClientSession(cookie_jar=jar) as client:
        await admin.start()
        path = token_path(database(a))
        assert admin.token_file == path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        token = path.read_text().strip()
        assert admin.token == token
        assert len(token) >= 32
        for route in ("metrics", "api/status", "api/peers", "api/node", "api/events"):
            async with client.get(admin.url + route) as response:
                assert response.status == 401, route
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
            wrong = {"Authorization": "Bearer " + "x" * len(token)}
            async with client.get(admin.url + route, headers=wrong) as response:
                assert response.status == 401, route
        status, text = await scrape(admin.url, Authorization=f"Bearer {token}")
        assert status == 200
        assert "crpeer_db_version" in text
        async with client.get(admin.url) as response:  # the page holds no data
            assert response.status == 200
        async with client.post(admin.url + "api/login") as response:
            assert response.status == 401
        bearer = {"Authorization": f"Bearer {token}"}
        async with client.post(admin.url + "api/login", headers=bearer) as response:
            assert response.status == 200
        async with client.get(admin.url + "api/status") as response:  # the cookie now
            assert response.status == 200
            assert (await response.json())["serve"]["state"] == "running"


def test_the_token_is_made_once_and_a_shared_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.db.admin-token"
    token = load_or_create_token(path)
    assert load_or_create_token(path) == token
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="accessible to other users"):
        load_or_create_token(path)
    path.chmod(0o600)
    path.write_text("short\n")
    with pytest.raises(ConfigError, match="does not hold an admin token"):
        load_or_create_token(path)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.org", False),
    ],
)
def test_a_token_is_required_off_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    assert token_required(AdminOptions(host, 8080)) is not loopback
    assert token_required(AdminOptions(host, 8080, "required"))


async def test_a_taken_port_is_a_config_error(nodes: Any, admin_of: Any) -> None:
    a = nodes("a")
    pa = a.peer()
    first, second = admin_of(pa, a), None
    async with pa:
        await first.start()
        port = int(first.url.rsplit(":", 1)[1].strip("/"))
        second = admin_of(pa, a, AdminOptions("127.0.0.1", port))
        with pytest.raises(ConfigError, match="admin listener cannot listen"):
            await second.start()


async def test_stopping_ends_open_event_streams(nodes: Any, admin_of: Any) -> None:
    a = nodes("a")
    pa = a.peer()
    admin = admin_of(pa, a)
    async with pa, aiohttp.ClientSession() as client:
        await admin.start()
        async with client.get(admin.url + "api/events") as stream:
            assert await stream.content.readline() == b"retry: 2000\n"
            async with asyncio.timeout(10):
                await admin.stop()
                assert await stream.content.read() == b"\n"  # the end of the stream


def test_the_text_banner_says_where_the_admin_listener_is(
    capsys: pytest.CaptureFixture[str],
) -> None:
    printer = EventPrinter(as_json=False, console=Console(file=io.StringIO()))
    banner = {"database": "a.db", "peer_id": None, "addresses": ["tcp://127.0.0.1:7700"]}
    printer.listening({**banner, "admin": "http://127.0.0.1:8484/", "admin_token_file": None})
    assert "  admin    http://127.0.0.1:8484/\n" in capsys.readouterr().out
    printer.listening(
        {**banner, "admin": "http://[::1]:8484/", "admin_token_file": "a.db.admin-token"}
    )
    out = capsys.readouterr().out
    assert "  admin    http://[::1]:8484/\n" in out
    assert "(token in a.db.admin-token)" in out
