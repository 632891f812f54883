"""A site id belongs to the peer id that showed it first: real peers over TLS on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from peer.errors import ErrorCode, RemoteProtocolError
from peer.store import Store
from peer.store.snapshot import take_snapshot
from tests.support import SCHEMA, Node, address, refusals, wait_for

# Seeds whose first session nonce is the smallest / largest of many: a peer
# seeded SMALL wins every duplicate-session tie-break against one seeded LARGE.
SMALL_NONCE_SEED = 55972
LARGE_NONCE_SEED = 1167


@pytest.fixture
def nodes(tmp_path: Path) -> Any:
    made: list[Node] = []

    def make(name: str, copy_of: Node | None = None) -> Node:
        if copy_of is not None:
            # The same database file on another device: the same site id, another key.
            (tmp_path / name).mkdir()
            take_snapshot(Path(copy_of.store.path), tmp_path / name / f"{name}.db")
        node = Node(tmp_path / name, name)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()


def trust_each_other(host: Node, *others: Node) -> None:
    for other in others:
        host.trust.add(other.identity.peer_id)
        other.trust.add(host.identity.peer_id)


def recreate_database(path: Path) -> Store:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    store = Store(path)
    store.execute(SCHEMA)
    store.make_crr("notes")
    return store


def site_claims(node: Node) -> list[RemoteProtocolError]:
    return [
        event.error
        for event in refusals(node)
        if isinstance(event.error, RemoteProtocolError)
        and event.error.code == ErrorCode.SITE_ID_CLAIMED
    ]


async def test_another_peer_showing_a_bound_site_id_is_refused_and_the_owner_keeps_syncing(
    nodes: Any,
) -> None:
    host, b = nodes("host"), nodes("b")
    c = nodes("c", copy_of=b)
    assert c.store.site_id == b.store.site_id
    trust_each_other(host, b, c)
    async with host.peer() as ph, b.peer([address(ph)], seed=LARGE_NONCE_SEED) as pb:
        await wait_for(lambda: len(ph.sessions) == 1)
        (b_session,) = ph.sessions
        assert b_session.peer_id == b.identity.peer_id
        async with c.peer([address(ph)], seed=SMALL_NONCE_SEED):
            await wait_for(lambda: len(site_claims(host)) >= 1 and len(site_claims(c)) >= 1)
            await pb.execute("INSERT INTO notes VALUES (1, 'from b while c tries')")
            await wait_for(lambda: host.rows() == [(1, "from b while c tries")])
            assert ph.sessions == [b_session]
            assert not b_session.done.is_set()
            # The refusal is reported by address, not under b's site.
            assert b.store.site_id not in ph.history.last_error
            assert all(event.remote is None for event in refusals(host))
        error = str(site_claims(host)[0])
        assert c.identity.peer_id in error
        assert b.identity.peer_id in error
        assert b.store.site_id.hex() in error
        assert "belongs to another peer" in str(site_claims(c)[0])


async def test_the_binding_survives_a_restart_and_a_recreated_database_gets_a_new_site(
    nodes: Any, tmp_path: Path
) -> None:
    host, b = nodes("host"), nodes("b")
    c = nodes("c", copy_of=b)
    trust_each_other(host, b, c)
    old_site = b.store.site_id
    async with host.peer() as ph, b.peer([address(ph)]):
        await wait_for(lambda: len(ph.sessions) == 1)
    # b re-creates its database: same key, new site id. It is accepted, and
    # its old site id stays its own.
    b.store.close()
    b.store = recreate_database(tmp_path / "b" / "b.db")
    assert b.store.site_id != old_site
    b.store.execute("INSERT INTO notes VALUES (2, 'from the new database')")
    async with host.peer() as ph:  # a new Peer: the binding comes from the database
        async with b.peer([address(ph)]):
            await wait_for(lambda: host.rows() == [(2, "from the new database")])
        async with c.peer([address(ph)]):
            await wait_for(lambda: len(site_claims(host)) >= 1)
            assert ph.sessions == []
    assert host.store.site_owners() == {
        old_site: b.identity.peer_id,
        b.store.site_id: b.identity.peer_id,
    }


async def test_a_site_id_is_freed_when_its_owner_is_no_longer_trusted(nodes: Any) -> None:
    host, b = nodes("host"), nodes("b")
    c = nodes("c", copy_of=b)
    trust_each_other(host, b, c)
    async with host.peer() as ph:
        async with b.peer([address(ph)]):
            await wait_for(lambda: len(ph.sessions) == 1)
        host.trust.remove(b.identity.peer_id)
        async with c.peer([address(ph)]):
            await wait_for(lambda: len(ph.sessions) == 1)
            assert ph.sessions[0].peer_id == c.identity.peer_id  # admitted, not refused
    assert site_claims(host) == []
    assert host.store.site_owners() == {b.store.site_id: c.identity.peer_id}


def test_claim_site_binds_once_and_replaces_only_the_named_owner() -> None:
    with Store(":memory:") as store:
        site = b"\x07" * 16
        assert store.claim_site(site, "B") == "B"
        assert store.claim_site(site, "C") == "B"
        assert store.claim_site(site, "C", replacing="D") == "B"
        assert store.claim_site(site, "C", replacing="B") == "C"
        assert store.site_owners() == {site: "C"}
