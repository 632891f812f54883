"""Peers over real TLS on loopback: trust, pairing, removal, men in the middle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from peer import events
from peer.errors import ConfigError
from peer.identity import Identity
from peer.peer import Peer
from peer.store import Store
from peer.trust import TrustStore
from tests.support import FAST, SCHEMA, address, peek, refusals, wait_for
from transports.memory import MemoryNetwork, MemoryTransport
from transports.tcp import TcpTransport


async def test_trusted_peers_sync_over_tls_and_learn_each_others_ids(nodes: Any) -> None:
    a, b = nodes("a"), nodes("b")
    a.trust.add(b.identity.peer_id)
    b.trust.add(a.identity.peer_id)
    a.store.execute("INSERT INTO notes VALUES (1, 'secret note')")
    async with a.peer() as pa, b.peer([address(pa)]) as pb:
        await wait_for(lambda: b.rows() == [(1, "secret note")])
        (session,) = pb.sessions
        assert session.peer_id == a.identity.peer_id
        assert pa.sessions[0].peer_id == b.identity.peer_id


async def test_an_unknown_peer_is_refused_and_receives_zero_rows(nodes: Any) -> None:
    a, stranger = nodes("a"), nodes("stranger")
    a.store.execute("INSERT INTO notes VALUES (1, 'secret note')")
    stranger.trust.add(a.identity.peer_id)  # the stranger trusts a; a does not trust it
    async with a.peer() as pa, stranger.peer([address(pa)]) as ps:
        await wait_for(lambda: len(refusals(a)) >= 1 and len(refusals(stranger)) >= 1)
        assert stranger.rows() == []
        assert pa.sessions == []
        assert ps.sessions == []
    assert "not trusted" in str(refusals(a)[0].error)


async def test_a_man_in_the_middle_with_another_key_is_refused(nodes: Any, tmp_path: Path) -> None:
    a, b = nodes("a"), nodes("b")
    a.trust.add(b.identity.peer_id)
    b.trust.add(a.identity.peer_id)
    # The attacker has b's database and trust store but not b's private key.
    mallory = Identity.load_or_create(tmp_path / "mallory.key")
    b.identity = mallory
    a.store.execute("INSERT INTO notes VALUES (1, 'secret note')")
    async with a.peer() as pa, b.peer([address(pa)]):
        await wait_for(lambda: len(refusals(a)) >= 1)
        assert b.rows() == []
    assert mallory.peer_id != Identity.load_or_create(tmp_path / "b" / "b.key").peer_id


async def test_removing_a_peer_cuts_its_live_session_within_a_second(nodes: Any) -> None:
    a, b = nodes("a"), nodes("b")
    a.trust.add(b.identity.peer_id)
    b.trust.add(a.identity.peer_id)
    async with a.peer() as pa, b.peer([address(pa)]):
        await wait_for(lambda: len(pa.sessions) == 1)
        a.trust.remove(b.identity.peer_id)
        await wait_for(lambda: pa.sessions == [], within=1.0)  # the deadline under test
        await pa.execute("INSERT INTO notes VALUES (9, 'after removal')")
        # b dials again after the cut: once a has refused it since the write,
        # the row had its chance to reach b.
        refused = len(refusals(a))
        await wait_for(lambda: len(refusals(a)) > refused)
        assert b.rows() == []


async def test_a_removal_by_another_process_cuts_the_session(nodes: Any) -> None:
    a, b = nodes("a"), nodes("b")
    a.trust.add(b.identity.peer_id)
    b.trust.add(a.identity.peer_id)
    async with a.peer() as pa, b.peer([address(pa)]):
        await wait_for(lambda: len(pa.sessions) == 1)
        # Another process (say, `crpeer trust remove`) edits the same file.
        TrustStore.load(a.trust.path).remove(b.identity.peer_id)
        await wait_for(lambda: pa.sessions == [], within=1.5)  # the deadline under test
        assert not a.trust.is_trusted(b.identity.peer_id)


async def test_the_right_join_secret_pairs_and_a_wrong_one_is_refused(nodes: Any) -> None:
    host, joiner, intruder = nodes("host"), nodes("joiner"), nodes("intruder")
    secret = host.trust.rotate_join_secret()
    host.store.execute("INSERT INTO notes VALUES (1, 'for members')")
    async with host.peer() as ph:
        async with intruder.peer([address(ph)], join_secret="WRONG-SECRET-WRONG-SECRET-12"):
            await wait_for(lambda: len(refusals(host)) >= 1)
            assert intruder.rows() == []
            assert not host.trust.is_trusted(intruder.identity.peer_id)
        async with joiner.peer([address(ph)], join_secret=secret):
            await wait_for(lambda: joiner.rows() == [(1, "for members")])
        assert host.trust.is_trusted(joiner.identity.peer_id)
        assert joiner.trust.is_trusted(host.identity.peer_id)


async def test_a_rotated_secret_stops_the_old_one(nodes: Any) -> None:
    host, late = nodes("host"), nodes("late")
    old = host.trust.rotate_join_secret()
    new = host.trust.rotate_join_secret()
    assert old != new
    async with host.peer() as ph:
        async with late.peer([address(ph)], join_secret=old):
            await wait_for(lambda: len(refusals(host)) >= 1)
        assert not host.trust.is_trusted(late.identity.peer_id)
        async with late.peer([address(ph)], join_secret=new):
            await wait_for(lambda: host.trust.is_trusted(late.identity.peer_id))


async def test_a_secure_peer_refuses_plaintext(nodes: Any, tmp_path: Path) -> None:
    a = nodes("a")
    a.store.execute("INSERT INTO notes VALUES (1, 'secret note')")
    # Over TCP the TLS handshake itself fails: no channel ever exists.
    async with a.peer() as pa:
        plain_store = new_plain_store(tmp_path / "plain-tcp.db")
        plain = Peer(
            plain_store,
            [TcpTransport("127.0.0.1", 0)],
            connect=[address(pa)],
            insecure=True,
            backoff=FAST,
        )
        attempts: list[events.Event] = []
        plain.subscribe(attempts.append)
        async with plain:
            # An attempt ended (the dial backs off): it had its chance to make a session.
            await wait_for(
                lambda: any(
                    isinstance(e, events.DialState) and e.state == "backing_off" for e in attempts
                )
            )
            assert pa.sessions == []
            assert plain.sessions == []
        assert plain_store.execute("SELECT count(*) FROM notes") == [(0,)]
        plain_store.close()
    # A channel without a certificate (here: the memory transport) is refused
    # by the peer itself before any sync frame.
    network = MemoryNetwork()
    secure = Peer(a.store, [MemoryTransport(network, "secure")], identity=a.identity, trust=a.trust)
    secure.subscribe(a.seen.append)
    plain_store = new_plain_store(tmp_path / "plain-memory.db")
    async with (
        secure,
        Peer(
            plain_store,
            [MemoryTransport(network, "plain")],
            connect=["memory://secure"],
            insecure=True,
        ),
    ):
        await wait_for(lambda: len(refusals(a)) >= 1)
        assert "plaintext" in str(refusals(a)[0].error)
        assert peek(plain_store, "SELECT count(*) FROM notes") == [(0,)]
    plain_store.close()


def new_plain_store(path: Path) -> Store:
    store = Store(path)
    store.execute(SCHEMA)
    store.make_crr("notes")
    return store


def test_security_is_the_default(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="encrypts by default"):
        Peer(tmp_path / "x.db", [])


async def test_a_host_that_already_trusts_the_joiner_still_proves_second(nodes: Any) -> None:
    host, joiner = nodes("host"), nodes("joiner")
    secret = host.trust.rotate_join_secret()
    host.trust.add(joiner.identity.peer_id)  # by hand; the joiner pairs to learn the host
    host.store.execute("INSERT INTO notes VALUES (1, 'for members')")
    async with host.peer() as ph, joiner.peer([address(ph)], join_secret=secret):
        await wait_for(lambda: joiner.rows() == [(1, "for members")])
    assert joiner.trust.is_trusted(host.identity.peer_id)


async def test_two_hosts_given_each_others_secret_pair_both_ways(nodes: Any) -> None:
    a, b = nodes("a"), nodes("b")
    secret_a, secret_b = a.trust.rotate_join_secret(), b.trust.rotate_join_secret()
    a.store.execute("INSERT INTO notes VALUES (1, 'from a')")
    async with a.peer(join_secret=secret_b) as pa, b.peer([address(pa)], join_secret=secret_a):
        await wait_for(lambda: b.rows() == [(1, "from a")])
    assert a.trust.is_trusted(b.identity.peer_id)
    assert b.trust.is_trusted(a.identity.peer_id)


async def test_a_node_never_joins_with_the_secret_it_hosts_with(nodes: Any) -> None:
    # Both hold one shared secret as host and as joiner: neither may prove
    # first with a secret it hosts, so they do not pair (and say why).
    a, b = nodes("a"), nodes("b")
    shared = a.trust.rotate_join_secret()
    b.trust.set_join_secret(shared)
    async with a.peer(join_secret=shared) as pa, b.peer([address(pa)], join_secret=shared):
        await wait_for(lambda: len(refusals(a)) >= 1 and len(refusals(b)) >= 1)
    assert not a.trust.is_trusted(b.identity.peer_id)
    assert not b.trust.is_trusted(a.identity.peer_id)
    assert "not trusted" in str(refusals(a)[0].error)
