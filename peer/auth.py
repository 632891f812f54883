"""Who may sync: the exchange between the TLS handshake and the first sync frame.

On a TLS channel each side learns the other's peer id from its certificate.
Before any sync frame, both sides run this exchange (frames numbered apart
from the sync session's, msgpack like them)::

    AUTH  [20, trusts_you: bool, can_pair: bool, nonce: bin 32]    both sides
    PROOF [21, proof: bin 32]                                       joiner, then host
    ERROR [8, 0, code, reason]                                      a refusal

- Both trust each other: done, the sync session starts.
- Otherwise, if both can pair (each knows a join secret), the side that does
  not yet trust the other is the *host* and verifies the *joiner's* proof
  first (if neither trusts the other, the smaller peer id joins); the host
  answers with its own proof, and each adds the other to its trust store.
- Otherwise the side that does not trust the other refuses (``UNTRUSTED``).

See SECURITY.md for why this is safe; the proofs are ``peer.pairing``'s.
:func:`authenticate` raises UntrustedPeerError or PairingError on refusal, after
telling the remote.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import msgpack

from peer import pairing
from peer.errors import (
    ErrorCode,
    IdentityError,
    PairingError,
    RemoteProtocolError,
    SecurityError,
    UntrustedPeerError,
)
from peer.identity import Identity, peer_id_from_certificate
from peer.trust import TrustStore
from transports.base import Channel

__all__ = ["AUTH_TIMEOUT", "Gate", "authenticate"]

AUTH_TIMEOUT = 10.0
_AUTH, _PROOF, _ERROR = 20, 21, 8
_MAX_AUTH_FRAME = 256
log = logging.getLogger("crpeer.auth")


@dataclass(frozen=True, slots=True)
class Gate:
    """This node's side of authorization.

    ``identity`` None means plaintext (insecure) channels are accepted and no
    peer id is checked. ``join_secret`` is a secret this node presents to
    join others; the trust store's own join secret lets others join this node.
    """

    identity: Identity | None
    trust: TrustStore | None
    join_secret: str | None = None

    def secret_for_pairing(self) -> str | None:
        if self.trust is not None and self.trust.join_secret:
            return self.trust.join_secret
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
    secret = gate.secret_for_pairing()
    nonce = pairing.new_nonce()
    await channel.send(_pack(_AUTH, trusted, secret is not None, nonce))
    _, trusts_us, remote_can_pair, remote_nonce = _expect(
        await channel.recv(), _AUTH, (bool, bool, bytes)
    )
    if len(remote_nonce) != pairing.NONCE_SIZE:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "auth nonce of the wrong size")
    if trusted and trusts_us:
        return
    if secret is None or not remote_can_pair or trust is None:
        if not trusted:
            await _refuse(channel, ErrorCode.UNTRUSTED, "not trusted")
            if secret is not None and not remote_can_pair:
                raise PairingError(
                    f"peer {pairing.format_peer_id(remote_id)} does not accept joins "
                    "(it has no join secret: run `crpeer pair new-secret` on it)"
                )
            raise UntrustedPeerError(f"peer {pairing.format_peer_id(remote_id)} is not trusted")
        # We trust them; they refuse us (their ERROR arrives next).
        _unpack(await channel.recv())
        raise UntrustedPeerError(f"peer {pairing.format_peer_id(remote_id)} does not trust us")
    # Pairing. The side that does not trust the other hosts (verifies first).
    joiner = trusted or (not trusts_us and local_id < remote_id)
    joiner_id, host_id = (local_id, remote_id) if joiner else (remote_id, local_id)
    nonces = pairing.PairingNonces(
        joiner=nonce if joiner else remote_nonce, host=remote_nonce if joiner else nonce
    )
    if joiner:
        await channel.send(_pack(_PROOF, pairing.joiner_proof(secret, nonces, joiner_id, host_id)))
        (_, proof) = _expect(await channel.recv(), _PROOF, (bytes,))
        pairing.verify_host_proof(secret, nonces, joiner_id, host_id, proof)
    else:
        (_, proof) = _expect(await channel.recv(), _PROOF, (bytes,))
        try:
            pairing.verify_joiner_proof(secret, nonces, joiner_id, host_id, proof)
        except PairingError:
            await _refuse(channel, ErrorCode.UNTRUSTED, pairing.WRONG_SECRET)
            raise
        await channel.send(_pack(_PROOF, pairing.host_proof(secret, nonces, joiner_id, host_id)))
    if not trusted:
        trust.add(remote_id, label="paired")
        log.info("paired with %s", remote_id)


def describe(error: SecurityError) -> str:
    """A one-line reason for logs and events."""
    return f"{type(error).__name__}: {error}"
