"""Secure peers syncing over each real transport on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from peer import events
from tests.support import Node, address, wait_for
from transports.base import Transport
from transports.http_sse import HttpSseTransport
from transports.lan import LanTransport
from transports.websocket import WebSocketTransport


def websocket(node: Node) -> Transport:
    return WebSocketTransport(
        "127.0.0.1",
        0,
        server_ssl=node.identity.server_ssl_context(),
        client_ssl=node.identity.client_ssl_context(),
    )


def http_sse(node: Node) -> Transport:
    return HttpSseTransport(
        "127.0.0.1",
        0,
        server_ssl=node.identity.server_ssl_context(),
        client_ssl=node.identity.client_ssl_context(),
    )


def tcp(node: Node) -> Transport:
    return node.tcp()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    a, b = Node(tmp_path / "a", "a"), Node(tmp_path / "b", "b")
    a.trust.add(b.identity.peer_id)
    b.trust.add(a.identity.peer_id)
    yield a, b
    a.close()
    b.close()


@pytest.mark.parametrize("make", [tcp, websocket, http_sse], ids=["tcp", "wss", "https"])
async def test_catch_up_and_live_over_each_transport(
    pair: tuple[Node, Node], make: Callable[[Node], Transport]
) -> None:
    a, b = pair
    for i in range(300):
        a.store.execute("INSERT INTO notes VALUES (?, ?)", (i, f"note {i}"))
    async with a.peer(transports=[make(a)]) as pa:  # noqa: SIM117 - b dials the address a bound
        async with b.peer([address(pa)], transports=[make(b)]) as pb:
            await wait_for(lambda: len(b.rows()) == 300)
            await pb.execute("INSERT INTO notes VALUES (1000, 'from b')")
            await pa.execute("UPDATE notes SET body = 'live' WHERE id = 7")
            await wait_for(lambda: a.rows() == b.rows() and len(a.rows()) == 301)
            assert pb.sessions[0].peer_id == a.identity.peer_id


async def test_two_transports_to_one_peer_keep_one_session(pair: tuple[Node, Node]) -> None:
    a, b = pair
    a.store.execute("INSERT INTO notes VALUES (1, 'once')")
    async with a.peer(transports=[tcp(a), websocket(a)]) as pa:
        tcp_address, ws_address = (t.listen_addresses[0] for t in pa.transports)
        async with b.peer([tcp_address, ws_address], transports=[tcp(b), websocket(b)]) as pb:
            await wait_for(lambda: b.rows() == [(1, "once")])
            await pa.execute("INSERT INTO notes VALUES (2, 'live')")
            await wait_for(lambda: len(b.rows()) == 2)
            assert len(pa.sessions) == 1
            assert len(pb.sessions) == 1
            changed = [e for e in b.seen if isinstance(e, events.Changed)]
            assert sum(e.rows for e in changed) == 2  # nothing applied twice


async def test_two_peers_on_the_lan_find_each_other_with_no_addresses(
    pair: tuple[Node, Node],
) -> None:
    a, b = pair
    a.store.execute("INSERT INTO notes VALUES (1, 'found by mDNS')")

    def lan(node: Node) -> LanTransport:
        return LanTransport(
            node.identity.peer_id,
            host="127.0.0.1",
            interfaces=["127.0.0.1"],
            server_ssl=node.identity.server_ssl_context(),
            client_ssl=node.identity.client_ssl_context(),
        )

    async with a.peer(transports=[lan(a)]), b.peer(transports=[lan(b)]) as pb:
        await wait_for(lambda: b.rows() == [(1, "found by mDNS")], within=20)
        await pb.execute("INSERT INTO notes VALUES (2, 'live back')")
        await wait_for(lambda: len(a.rows()) == 2, within=10)
