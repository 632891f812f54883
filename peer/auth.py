"""Who may sync: runs the authentication handshake over a channel.

Between the TLS handshake and the first sync frame, :func:`authenticate`
checks the remote's certificate and runs a :class:`~peer.handshake.AuthHandshake`
(the pure state machine that decides; its docstring gives the rules) over
the channel: it only moves frames between the two, applies the
deadline, and does what the handshake's outcome asks of the trust store
(adds a paired peer, clears an expired join secret). It runs on the event loop
of the channel's owner.

:class:`Gate` is what this node holds: identity, trust store, the secret to
join others with, and the :class:`~peer.pairing_guard.PairingGuard` of its
hosting secret. :func:`authenticate` raises UntrustedPeerError or
PairingError on refusal, after telling the remote.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from peer import pairing
from peer.errors import ConfigError, CrpeerError, ErrorCode, IdentityError, UntrustedPeerError
from peer.handshake import AuthHandshake, HandshakeState
from peer.handshake_frames import Refusal, refusal_frame
from peer.identity import Identity, peer_id_from_certificate
from peer.pairing_guard import PairingGuard
from peer.trust import TrustStore
from transports.base import Channel

__all__ = ["AUTH_TIMEOUT", "Gate", "authenticate"]

AUTH_TIMEOUT = 10.0
_BEST_EFFORT = 1.0
"""Seconds a refusal may take to send, and to wait for the remote's own refusal."""
log = logging.getLogger("crpeer.auth")


@dataclass(frozen=True, slots=True)
class Gate:
    """This node's side of authorization.

    ``identity`` None means plaintext (insecure) channels are accepted and no
    peer id is checked. The trust store's join secret lets others join this
    node (hosting); ``join_secret`` is a secret this node presents to join
    others, never used to host. ``guard`` limits the attempts against the
    hosting secret.
    """

    identity: Identity | None
    trust: TrustStore | None
    join_secret: str | None = None
    guard: PairingGuard = field(default_factory=PairingGuard)

    def hosting_secret(self) -> str | None:
        """The secret others may join this node with, unless it expired."""
        if self.trust is None:
            return None
        return self.guard.hosting_secret(self.trust.join_secret)

    def joining_secret(self) -> str | None:
        """The secret to join others with; never the hosting secret (a joiner
        proves first, and the hosting secret is never proven first)."""
        if self.join_secret is None:
            return None
        hosting = self.trust.join_secret if self.trust is not None else None
        if hosting is not None and pairing.same_join_secret(hosting, self.join_secret):
            return None
        return self.join_secret


async def _send(channel: Channel, handshake: AuthHandshake) -> None:
    """Send what the handshake queued; refusals (once it failed) best effort."""
    frames = handshake.data_to_send()
    if not handshake.failed:
        for frame in frames:
            await channel.send(frame)
        return
    for frame in frames:
        await _send_refusal(channel, frame)


async def _send_refusal(channel: Channel, frame: bytes) -> None:
    try:
        await asyncio.wait_for(channel.send(frame), timeout=_BEST_EFFORT)
    except Exception:  # the refusal is best effort; the channel closes anyway
        log.debug("could not send the refusal to %s", channel.remote.address)


async def _their_refusal(channel: Channel) -> bytes | None:
    """The remote's next frame, which may say why it refuses us too (best effort)."""
    try:
        return await asyncio.wait_for(channel.recv(), timeout=_BEST_EFFORT)
    except (CrpeerError, TimeoutError):
        return None


async def authenticate(channel: Channel, gate: Gate, *, within: float = AUTH_TIMEOUT) -> str | None:
    """Decide whether ``channel`` may carry a sync session; return the remote peer id.

    Returns None for a plaintext channel when the gate allows it. Raises
    UntrustedPeerError (unknown peer, plaintext where TLS is required),
    PairingError (a wrong proof), IdentityError (an unusable certificate) or
    RemoteProtocolError (a malformed exchange); the remote is told before.
    A broken channel raises the transport's error (ChannelClosed, ...).
    """
    certificate = channel.remote.certificate
    if gate.identity is None:
        return None if certificate is None else peer_id_from_certificate(certificate)
    if certificate is None:
        await _send_refusal(channel, refusal_frame(ErrorCode.UNTRUSTED, Refusal.TLS_REQUIRED))
        raise UntrustedPeerError(f"{channel.remote.address}: plaintext channel refused")
    try:
        remote_id = peer_id_from_certificate(certificate)
    except IdentityError:
        frame = refusal_frame(ErrorCode.UNTRUSTED, Refusal.UNUSABLE_CERTIFICATE)
        await _send_refusal(channel, frame)
        raise
    trust = gate.trust
    handshake = AuthHandshake(
        gate.identity.peer_id,
        remote_id,
        trusted=trust is not None and trust.is_trusted(remote_id),
        hosting=gate.hosting_secret(),
        joining=gate.joining_secret() if trust is not None else None,
        nonce=pairing.new_nonce(),
        attempts=gate.guard,
        address=channel.remote.address,
    )
    try:
        async with asyncio.timeout(within):
            newly_trusted = await _exchange(channel, handshake)
    except TimeoutError as exc:
        error = handshake.time_out()
        await _send(channel, handshake)
        raise error from exc
    except CrpeerError:
        await _send(channel, handshake)  # the refusal the handshake queued, if any
        raise
    finally:
        handshake.close()
        if handshake.expired_secret is not None:
            _expire(gate, handshake.expired_secret, channel.remote.address)
    if newly_trusted:
        assert trust is not None
        trust.add(remote_id, label="paired")
        log.info("paired with %s", remote_id)
    return remote_id


async def _exchange(channel: Channel, handshake: AuthHandshake) -> bool:
    """Move frames until the handshake authenticates the remote; return
    whether the remote is newly trusted. Raises what the handshake raises."""
    handshake.start()
    await _send(channel, handshake)
    while True:
        if handshake.state is HandshakeState.REFUSED:
            frame = await _their_refusal(channel)
            if frame is None:
                handshake.remote_silent()
        else:
            frame = await channel.recv()
        events = handshake.receive(frame)
        await _send(channel, handshake)
        for event in events:
            return event.newly_trusted


def _expire(gate: Gate, secret: str, address: str) -> None:
    """The hosting secret failed too often: close joining (in the trust store too)."""
    log.warning(
        "the join secret expired after %d failed pairing attempts (the last from %s); "
        "no device can join until a new secret is set (`crpeer pair new-secret`)",
        gate.guard.failures,
        address,
    )
    trust = gate.trust
    current = trust.join_secret if trust is not None else None
    if trust is not None and current is not None and pairing.same_join_secret(current, secret):
        try:
            trust.clear_join_secret()
        except ConfigError as exc:  # the guard keeps refusing it in memory
            log.error("could not clear the expired join secret: %s", exc)
