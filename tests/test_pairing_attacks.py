"""Pairing under attack, against a real host over TLS on loopback.

A hand-rolled joiner speaks the raw auth frames to try to make the host show
something derived from its join secret first; wrong guesses are slowed down
and expire the secret (the guard's clock is injected: no wall time asserted).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import msgpack
import pytest

from peer import events
from peer.auth import Gate, authenticate
from peer.errors import ChannelClosed, CrpeerError
from peer.identity import Identity
from peer.pairing import new_nonce
from peer.pairing_guard import PairingGuard
from peer.peer import Peer
from peer.trust import TrustStore
from tests.support import Node, address
from transports.base import Channel
from transports.tcp import TcpTransport

AUTH, PROOF, ROLES, ERROR = 20, 21, 22, 8


@pytest.fixture
def host(tmp_path: Path) -> Any:
    node = Node(tmp_path / "host", "host")
    node.trust.rotate_join_secret()
    yield node
    node.close()


def identity_sorting(tmp_path: Path, host: Node, above: bool) -> Identity:
    """A new identity whose peer id sorts above (or below) the host's."""
    for number in range(4096):  # 1.5 ms each; a host id near the top or bottom needs many
        identity = Identity.load_or_create(tmp_path / f"attacker-{above}-{number}.key")
        if (identity.peer_id > host.identity.peer_id) == above:
            return identity
    raise AssertionError("no identity on the wanted side in 4096 tries")


async def dial(peer: Peer, identity: Identity) -> tuple[TcpTransport, Channel]:
    transport = TcpTransport(listen=False, client_ssl=identity.client_ssl_context())
    return transport, await transport.dial(address(peer))


async def frames_until_closed(channel: Channel, quiet: float = 1.0) -> list[list[Any]]:
    """Every frame the host sends until it closes, or stays quiet for ``quiet`` s."""
    frames: list[list[Any]] = []
    while True:
        try:
            frame = await asyncio.wait_for(channel.recv(), timeout=quiet)
        except (ChannelClosed, TimeoutError):
            return frames
        frames.append(msgpack.unpackb(frame, raw=False))


@pytest.mark.parametrize("attacker_sorts_above", [True, False])
@pytest.mark.parametrize(
    ("host_trusts_attacker", "roles"),
    [
        (False, None),  # says it can pair, then waits
        (False, (True, False)),  # claims it can only host: the host should join
        (False, (True, True)),  # claims both, sends no proof
        (True, None),
        (True, (True, False)),
    ],
)
async def test_a_joiner_cannot_make_the_host_show_a_proof_first(
    host: Node,
    tmp_path: Path,
    attacker_sorts_above: bool,
    host_trusts_attacker: bool,
    roles: tuple[bool, bool] | None,
) -> None:
    attacker = identity_sorting(tmp_path, host, attacker_sorts_above)
    if host_trusts_attacker:
        host.trust.add(attacker.peer_id)
    async with host.peer() as ph:
        transport, channel = await dial(ph, attacker)
        try:
            await channel.send(msgpack.packb([AUTH, False, True, new_nonce()]))
            if roles is not None:
                await channel.send(msgpack.packb([ROLES, *roles]))
            frames = await frames_until_closed(channel)
        finally:
            await channel.close()
            await transport.stop()
    assert frames, "the host sent nothing at all"
    assert frames[0][0] == AUTH
    assert [frame[0] for frame in frames if frame[0] not in (AUTH, ROLES, ERROR)] == []
    # Past the host's own nonce, nothing it sent carries bytes at all.
    assert [f for f in frames[1:] if any(isinstance(v, bytes) for v in f)] == []


async def test_a_host_given_its_own_secret_to_join_with_still_never_proves_first(
    host: Node, tmp_path: Path
) -> None:
    attacker = identity_sorting(tmp_path, host, above=True)
    async with host.peer(join_secret=host.trust.join_secret) as ph:
        transport, channel = await dial(ph, attacker)
        try:
            await channel.send(msgpack.packb([AUTH, False, True, new_nonce()]))
            await channel.send(msgpack.packb([ROLES, True, False]))
            frames = await frames_until_closed(channel)
        finally:
            await channel.close()
            await transport.stop()
    assert [frame[0] for frame in frames] == [AUTH, ROLES, ERROR]
    assert frames[1] == [ROLES, True, False]  # it hosts with that secret, so never joins with it


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


async def try_to_join(peer: Peer, node_dir: Path, name: str, secret: str) -> CrpeerError | None:
    """One pairing attempt through the real auth code; the error it ended with."""
    identity = Identity.load_or_create(node_dir / f"{name}.key")
    gate = Gate(identity, TrustStore.load(node_dir / f"{name}.trust.json"), secret)
    transport, channel = await dial(peer, identity)
    try:
        await authenticate(channel, gate, within=5.0)
    except CrpeerError as exc:
        return exc
    finally:
        await channel.close()
        await transport.stop()
    return None


async def test_wrong_secrets_are_slowed_down_then_expire_the_secret(
    host: Node, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = host.trust.join_secret
    assert secret is not None
    wrong = "WRONG-SECRET-WRONG-SECRET-WRONG"
    clock = FakeClock()
    guard = PairingGuard(clock=clock)
    here = "tcp://127.0.0.1:1"
    caplog.set_level(logging.WARNING, logger="crpeer.auth")
    async with host.peer(pairing_guard=guard) as ph:
        for round_number in range(1, 11):
            # A burst of parallel guesses: only one is checked, the rest are
            # refused without their proof being read.
            errors = await asyncio.gather(
                *(try_to_join(ph, tmp_path, f"guess{n}", wrong) for n in range(5))
            )
            assert all(error is not None for error in errors)
            assert guard.failures == round_number
            assert guard.in_flight == 0
            slowed = [e for e in errors if "retry in" in str(e) or "under way" in str(e)]
            assert len(slowed) >= 4
            if round_number < 10:
                waited = guard.blocked_for(here)
                assert waited == min(2.0 ** (round_number - 1), 60.0)
                # Still refused a moment before the wait is over ...
                clock.now += waited - 0.01
                refused = await try_to_join(ph, tmp_path, "early", wrong)
                assert "retry in" in str(refused)
                assert guard.failures == round_number
                clock.now += 0.01
        assert guard.expired
        assert host.trust.join_secret is None
        assert TrustStore.load(host.trust.path).join_secret is None  # persisted
        expired = [e for e in host.seen if isinstance(e, events.JoinSecretExpired)]
        assert [(e.failures, e.last_address.startswith("tcp://127.0.0.1:")) for e in expired] == [
            (10, True)
        ]
        assert "join secret expired after 10 failed pairing attempts" in caplog.text
        # Even the right secret is refused now, and told why.
        clock.now += 3600.0
        refused = await try_to_join(ph, tmp_path, "member", secret)
        assert "expired" in str(refused)
        assert not host.trust.is_trusted(Identity.load_or_create(tmp_path / "member.key").peer_id)
        # A new secret opens joining again.
        fresh = host.trust.rotate_join_secret()
        assert await try_to_join(ph, tmp_path, "member", fresh) is None
        assert host.trust.is_trusted(Identity.load_or_create(tmp_path / "member.key").peer_id)
