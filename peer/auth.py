"""Who may sync: the exchange between the TLS handshake and the first sync frame.

On a TLS channel each side learns the other's peer id from its certificate.
Before any sync frame, both sides run this exchange (frames numbered apart
from the sync session's, msgpack like them)::

    AUTH  [20, trusts_you: bool, can_pair: bool, nonce: bin 32]    both sides
    ROLES [22, can_host: bool, can_join: bool]                      both, to pair
    PROOF [21, proof: bin 32]                                       see below
    ERROR [8, 0, code, reason]                                      a refusal

- Both trust each other: done, the sync session starts.
- Otherwise, if both can pair, both send ROLES. A side *can host* if it holds
  the trust store's join secret (others join it with that), and *can join* if
  it was given a different join secret to join with (``Gate.join_secret``).
  A side *hosts* if it can host and the other can join; it *joins* if it can
  join and the other can host (so one side hosts exactly when the other
  joins, and a side may do both). A joiner sends its proof at once; a host
  first reads and checks the joiner's proof, and only then sends its own; a
  joiner then checks the host's. Each side adds the other to its trust store
  once it has checked a proof from it.
- Otherwise the side that does not trust the other refuses (``UNTRUSTED``).

Nothing a remote claims (its flags, the order of the peer ids) makes a node
send anything derived from its hosting secret before it checked a proof of
that secret: a node never joins with the secret it hosts with. Attempts
against the hosting secret go through the gate's
:class:`~peer.pairing_guard.PairingGuard` (rate limit, backoff, expiry).

See SECURITY.md for why this is safe; the proofs are ``peer.pairing``'s.
:func:`authenticate` raises UntrustedPeerError or PairingError on refusal, after
telling the remote.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import msgpack

from peer import pairing
from peer.errors import (
    ConfigError,
    CrpeerError,
    ErrorCode,
    IdentityError,
    PairingError,
    RemoteProtocolError,
    UntrustedPeerError,
)
from peer.identity import Identity, peer_id_from_certificate
from peer.pairing_guard import PairingGuard
from peer.trust import TrustStore
from transports.base import Channel

__all__ = ["AUTH_TIMEOUT", "Gate", "authenticate"]

AUTH_TIMEOUT = 10.0
_AUTH, _PROOF, _ROLES, _ERROR = 20, 21, 22, 8
_MAX_AUTH_FRAME = 256
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


def _pack(*fields: Any) -> bytes:
    packed: bytes = msgpack.packb(list(fields), use_bin_type=True)
    return packed


def _unpack(frame: bytes) -> list[Any]:
    if len(frame) > _MAX_AUTH_FRAME:
        raise RemoteProtocolError(ErrorCode.FRAME_TOO_LARGE, "auth frame too large")
    try:
        body = msgpack.unpackb(frame, raw=False)
    except Exception as exc:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "auth frame is not msgpack") from exc
    if not isinstance(body, list) or not body or not isinstance(body[0], int):
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "auth frame must be [kind, ...]")
    if body[0] == _ERROR and len(body) == 4 and isinstance(body[2], int):
        code, reason = body[2], str(body[3])[:80]
        if reason == pairing.WRONG_SECRET:
            raise PairingError(f"the remote refused us: {reason}")
        raise UntrustedPeerError(f"the remote refused us (code {code}: {reason!r})")
    return body


def _expect(frame: bytes, kind: int, types: tuple[type, ...]) -> list[Any]:
    body = _unpack(frame)
    if body[0] != kind or len(body) != len(types) + 1:
        raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"expected auth frame {kind}")
    for value, expected in zip(body[1:], types, strict=True):
        if not isinstance(value, expected):
            raise RemoteProtocolError(
                ErrorCode.MALFORMED_FRAME, "auth frame field of the wrong type"
            )
    return body


async def _refuse(channel: Channel, code: ErrorCode, reason: str) -> None:
    try:
        await asyncio.wait_for(channel.send(_pack(_ERROR, 0, int(code), reason)), timeout=1.0)
    except Exception:  # the refusal is best effort; the channel closes anyway
        log.debug("could not send the refusal to %s", channel.remote.address)


async def _their_refusal(channel: Channel) -> str:
    """The remote's reason for refusing us, when it refuses too (best effort)."""
    try:
        frame = await asyncio.wait_for(channel.recv(), timeout=1.0)
        _unpack(frame)
    except UntrustedPeerError as refusal:
        return str(refusal)
    except (CrpeerError, TimeoutError):
        pass
    return "the remote gave no reason"


async def authenticate(channel: Channel, gate: Gate, *, within: float = AUTH_TIMEOUT) -> str | None:
    """Decide whether ``channel`` may carry a sync session; return the remote peer id.

    Returns None for a plaintext channel when the gate allows it. Raises
    UntrustedPeerError (unknown peer, plaintext where TLS is required),
    PairingError (a wrong proof), IdentityError (an unusable certificate) or
    RemoteProtocolError (a malformed exchange); the remote is told before.
    """
    certificate = channel.remote.certificate
    if gate.identity is None:
        return None if certificate is None else peer_id_from_certificate(certificate)
    if certificate is None:
        await _refuse(channel, ErrorCode.UNTRUSTED, "TLS required")
        raise UntrustedPeerError(f"{channel.remote.address}: plaintext channel refused")
    try:
        remote_id = peer_id_from_certificate(certificate)
    except IdentityError:
        await _refuse(channel, ErrorCode.UNTRUSTED, "unusable certificate")
        raise
    try:
        async with asyncio.timeout(within):
            await _exchange(channel, gate, gate.identity.peer_id, remote_id)
    except TimeoutError as exc:
        await _refuse(channel, ErrorCode.TIMEOUT, "authentication timed out")
        raise UntrustedPeerError(f"{remote_id}: authentication timed out") from exc
    except RemoteProtocolError as exc:
        await _refuse(channel, exc.code, "bad authentication frame")
        raise
    return remote_id


async def _exchange(channel: Channel, gate: Gate, local_id: str, remote_id: str) -> None:
    trust = gate.trust
    trusted = trust is not None and trust.is_trusted(remote_id)
    hosting, joining = gate.hosting_secret(), gate.joining_secret()
    can_pair = trust is not None and (hosting is not None or joining is not None)
    nonce = pairing.new_nonce()
    await channel.send(_pack(_AUTH, trusted, can_pair, nonce))
    _, trusts_us, remote_can_pair, remote_nonce = _expect(
        await channel.recv(), _AUTH, (bool, bool, bytes)
    )
    if len(remote_nonce) != pairing.NONCE_SIZE:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "auth nonce of the wrong size")
    if trusted and trusts_us:
        return
    hosts = joins = False
    if can_pair and remote_can_pair:
        await channel.send(_pack(_ROLES, hosting is not None, joining is not None))
        _, remote_can_host, remote_can_join = _expect(await channel.recv(), _ROLES, (bool, bool))
        hosts = hosting is not None and remote_can_join
        joins = joining is not None and remote_can_host
    if not hosts and not joins:
        reason = "not trusted" if not trusted else "cannot pair"
        if not trusted and gate.guard.expired:
            reason = gate.guard.expiry_reason()
        await _refuse(channel, ErrorCode.UNTRUSTED, reason)
        theirs = f"; {await _their_refusal(channel)}"  # it has no role either: it refuses too
        shown = pairing.format_peer_id(remote_id)
        if not trusted and joining is not None and not (remote_can_pair and remote_can_host):
            raise PairingError(
                f"peer {shown} does not accept joins{theirs}; it takes a device only while "
                "it has a join secret (run `crpeer pair new-secret` on it)"
            )
        if not trusted:
            raise UntrustedPeerError(f"peer {shown} is not trusted ({reason}){theirs}")
        raise UntrustedPeerError(f"peer {shown} does not trust us, and we cannot pair{theirs}")
    assert trust is not None
    ids = (local_id, remote_id)
    nonces = (nonce, remote_nonce)
    await _pair(channel, gate, hosting if hosts else None, joining if joins else None, ids, nonces)
    if not trusted:
        trust.add(remote_id, label="paired")
        log.info("paired with %s", remote_id)


async def _pair(
    channel: Channel,
    gate: Gate,
    hosting: str | None,
    joining: str | None,
    ids: tuple[str, str],
    nonces: tuple[bytes, bytes],
) -> None:
    """Exchange the proofs: as joiner with ``joining``, as host with ``hosting``
    (one or both). ``ids`` and ``nonces`` are (ours, the remote's). Returns
    once every proof from the remote checked out.

    Attempts as host go through ``gate.guard``. Raises PairingError (the
    remote is told) for a wrong proof or an attempt the guard refuses.
    """
    (local_id, remote_id), (nonce, remote_nonce) = ids, nonces
    address = channel.remote.address
    if hosting is not None:
        try:
            gate.guard.begin(address, hosting)
        except PairingError as exc:
            await _refuse(channel, ErrorCode.UNTRUSTED, str(exc))
            raise
    outcome: bool | None = None
    try:
        we_join = pairing.PairingNonces(joiner=nonce, host=remote_nonce)
        we_host = pairing.PairingNonces(joiner=remote_nonce, host=nonce)
        if joining is not None:
            proof = pairing.joiner_proof(joining, we_join, local_id, remote_id)
            await channel.send(_pack(_PROOF, proof))
        if hosting is not None:
            # Nothing derived from the hosting secret leaves before this check.
            (_, proof) = _expect(await channel.recv(), _PROOF, (bytes,))
            outcome = False
            pairing.verify_joiner_proof(hosting, we_host, remote_id, local_id, proof)
            outcome = True
            proof = pairing.host_proof(hosting, we_host, remote_id, local_id)
            await channel.send(_pack(_PROOF, proof))
        if joining is not None:
            (_, proof) = _expect(await channel.recv(), _PROOF, (bytes,))
            pairing.verify_host_proof(joining, we_join, local_id, remote_id, proof)
    except PairingError:
        # A joiner told "wrong join secret" stops retrying: the same secret cannot work.
        refusal = pairing.WRONG_SECRET if outcome is False else "pairing failed"
        await _refuse(channel, ErrorCode.UNTRUSTED, refusal)
        raise
    finally:
        if hosting is not None and gate.guard.end(address, hosting, succeeded=outcome):
            _expire(gate, hosting, address)


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
