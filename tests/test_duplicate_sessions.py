"""Two peers that dial each other keep one session, without rounds of refusals."""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

import pytest

from peer import events
from peer.peer import Peer
from tests.support import Node, address, wait_for
from tests.test_peer import Cluster
from transports.memory import MemoryTransport


def dials(seen: list[events.Event]) -> int:
    """Connections this peer dialed (each one a session attempt)."""
    return sum(isinstance(e, events.DialState) and e.state == "connected" for e in seen)


def follows_its_last_session(seen: list[events.Event], since: int = 0) -> bool:
    """This peer's dial follows the session it connected last instead of
    dialing: a DialState "following" came after its last Connected event,
    which came after ``seen[since]``. While it follows, it does not dial;
    only the session's end moves it on."""
    connected = [i for i, e in enumerate(seen) if isinstance(e, events.Connected) and i >= since]
    return bool(connected) and any(
        isinstance(e, events.DialState) and e.state == "following" for e in seen[connected[-1] :]
    )


def failures(seen: list[events.Event]) -> list[events.SessionFailed]:
    return [e for e in seen if isinstance(e, events.SessionFailed)]


def one_session_each(*peers: Peer, besides: Collection[object] = ()) -> bool:
    """Each peer has one live session (none of ``besides``)."""
    return all(
        len(p.sessions) == 1
        and not p.sessions[0].done.is_set()
        and p.sessions[0].remote is not None
        and p.sessions[0] not in besides
        for p in peers
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
async def test_peers_dialing_each_other_keep_the_lower_sites_dial_and_redial_once_per_cut(
    seed: int,
) -> None:
    cluster = Cluster(2, seed=seed)
    a, b = cluster.peer(0, [1]), cluster.peer(1, [0])
    seen: list[list[events.Event]] = [[], []]
    a.subscribe(seen[0].append)
    b.subscribe(seen[1].append)
    low, high = (0, 1) if cluster.stores[0].site_id < cluster.stores[1].site_id else (1, 0)
    peers = [a, b]
    async with cluster:
        await wait_for(lambda: one_session_each(a, b))
        # The losing dial follows the session the other side dialed: it does
        # not dial again while that session lives.
        await wait_for(lambda: follows_its_last_session(seen[high]))
        # Both dialed once; the lower site's dial is the one both ends keep.
        assert (dials(seen[0]), dials(seen[1])) == (1, 1)
        assert peers[low].sessions[0].outbound
        assert not peers[high].sessions[0].outbound
        cuts = 3
        for k in range(cuts):
            before, mark = [*a.sessions, *b.sessions], len(seen[high])
            cluster.network.cut("p0", "p1")
            await wait_for(lambda: one_session_each(a, b, besides=before))  # noqa: B023
            await a.execute("INSERT INTO notes VALUES (?, 'after a cut', ?)", (k, k))
            await wait_for(cluster.converged)
            await wait_for(lambda: follows_its_last_session(seen[high], mark))  # noqa: B023
        # After each cut only the winning side dialed again: no duplicate.
        assert dials(seen[low]) == 1 + cuts
        assert dials(seen[high]) == 1
        assert peers[low].sessions[0].outbound
        # A duplicate resolved is not a failure.
        assert failures(seen[0]) == failures(seen[1]) == []
        assert all(e.error is None for s in seen for e in s if isinstance(e, events.Disconnected))


async def test_the_losing_side_dials_again_once_the_winner_stops_dialing() -> None:
    cluster = Cluster(2)
    low, high = (0, 1) if cluster.stores[0].site_id < cluster.stores[1].site_id else (1, 0)
    first = cluster.peer(low, [high])
    waiting = cluster.peer(high, [low])
    async with cluster:
        await wait_for(lambda: one_session_each(first, waiting))
        await first.stop()
        # The winner comes back without dialing anyone: after its grace the
        # other side dials it.
        back = Peer(
            cluster.stores[low],
            [MemoryTransport(cluster.network, f"p{low}")],
            name="back",
            backoff=first.backoff,
            insecure=True,
            redial_grace=0.5,
        )
        await back.start()
        try:
            await wait_for(lambda: one_session_each(back, waiting), within=20)
            assert waiting.sessions[0].outbound
            await back.execute("INSERT INTO notes VALUES (1, 'reached', 1)")
            await wait_for(cluster.converged)
        finally:
            await back.stop()


async def test_over_tls_both_dialing_converge_with_at_most_one_refusal_and_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = Node(tmp_path / "a", "a"), Node(tmp_path / "b", "b")
    a.trust.add(b.identity.peer_id)
    b.trust.add(a.identity.peer_id)
    caplog.set_level(logging.DEBUG, logger="crpeer")
    try:
        async with a.peer() as pa, b.peer([address(pa)]) as pb:
            pa.connect(address(pb))
            await wait_for(lambda: one_session_each(pa, pb))
            await pa.execute("INSERT INTO notes VALUES (1, 'from a')")
            await wait_for(lambda: b.rows() == [(1, "from a")])
            # The losing side (the higher site id) follows the winner's dial.
            loser = a if a.store.site_id > b.store.site_id else b
            await wait_for(lambda: follows_its_last_session(loser.seen))
            # Cut the session from one end: both notice, one redials.
            (session,) = pa.sessions
            mark = len(loser.seen)
            await session.channel.close()
            await wait_for(lambda: one_session_each(pa, pb, besides=[session]))
            await pb.execute("INSERT INTO notes VALUES (2, 'from b')")
            await wait_for(lambda: a.rows() == [(1, "from a"), (2, "from b")])
            await wait_for(lambda: follows_its_last_session(loser.seen, mark))
            # Two dials at start (one lost), one after the cut.
            assert dials(a.seen) + dials(b.seen) == 3
        assert failures(a.seen) == failures(b.seen) == []
        gone = [e for e in a.seen + b.seen if isinstance(e, events.Disconnected)]
        assert [e.error for e in gone if e.error is not None] == []
        noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert not [r for r in noisy if "duplicate" in r.getMessage().lower()]
    finally:
        a.close()
        b.close()
