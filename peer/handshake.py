"""Who may sync, as a pure state machine: no asyncio, sockets or files.

One :class:`AuthHandshake` per TLS channel, after the TLS handshake (each
side learnt the other's peer id from its certificate) and before the first
sync frame. Its frames (AUTH, ROLES, PROOF and the sync protocol's ERROR) are
in PROTOCOL.md ("Authentication") and :mod:`peer.handshake_frames`. In
short: both sides send AUTH; if each trusts the other, done. Otherwise, if
both can pair, both send ROLES: a side hosts if it can host and the other can
join, joins if it can join and the other can host (it may do both); a joiner
sends its PROOF at once, a host checks it before sending its own. Otherwise
the side that does not trust the other refuses (``UNTRUSTED``).

The rules it keeps (SECURITY.md says why they suffice):

- roles come only from what each side holds (its hosting and joining
  secrets), never from the remote's claims, the order of the peer ids or who
  dialed; the caller never gives its hosting secret as the joining one;
- nothing derived from the hosting secret is queued before the joiner's
  proof of it checked out;
- every attempt against the hosting secret goes through
  :class:`PairingAttempts` (in crpeer the :class:`~peer.pairing_guard.PairingGuard`:
  rate limit, backoff, expiry);
- each side trusts the other only once it checked a proof from it (or both
  trusted each other already).

Lifecycle of the caller (``peer.auth`` runs it over a channel)::

    handshake = AuthHandshake(local_id, remote_id, trusted=..., ...)
    handshake.start()
    send(*handshake.data_to_send())
    while no Authenticated event:
        if handshake.state is HandshakeState.REFUSED:
            # our refusal is sent; one more frame (within 1 s) gives the
            # remote's reason: receive(frame), or remote_silent() without one
        events = handshake.receive(frame)    # may raise, see below
        send(*handshake.data_to_send())      # best effort once handshake.failed
    # Authenticated(newly_trusted=True): add the remote to the trust store.
    # On the caller's deadline: error = handshake.time_out(), send, raise error.
    # Whatever ends it, once the refusal is sent: handshake.close(); then
    # clear handshake.expired_secret from the trust store, if set.

:meth:`AuthHandshake.receive` raises RemoteProtocolError (a malformed,
oversized or unexpected frame), PairingError (a wrong proof, an attempt the
guard refuses, or the remote's "wrong join secret") or UntrustedPeerError
(any other refusal, ours or the remote's); before raising it queues the ERROR
frame the remote is told, which carries a code and a short fixed reason,
never the local message. Every state and the frames it accepts are in
:data:`TRANSITIONS`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from peer import pairing
from peer.errors import (
    ErrorCode,
    LocalProtocolError,
    PairingError,
    RemoteProtocolError,
    UntrustedPeerError,
)
from peer.handshake_frames import (
    FIELDS,
    MAX_AUTH_FRAME,
    AuthFrame,
    Refusal,
    frame_kind,
    pack_frame,
    parse_frame,
    refusal_frame,
    remote_refusal,
)

__all__ = [
    "TRANSITIONS",
    "AuthHandshake",
    "Authenticated",
    "Event",
    "HandshakeState",
    "PairingAttempts",
]


class HandshakeState(enum.Enum):
    IDLE = "idle"
    """Made; :meth:`AuthHandshake.start` not called yet."""
    AUTH_SENT = "auth sent"
    """Our AUTH is queued; waiting for theirs."""
    ROLES_SENT = "roles sent"
    """Our ROLES is queued; waiting for theirs."""
    HOSTING = "hosting"
    """We host (our joiner proof, if we also join, is queued); waiting for the
    joiner's PROOF. An attempt is reserved with the guard until :meth:`AuthHandshake.close`."""
    JOINING = "joining"
    """Our joiner PROOF is queued (and, if we also host, our host PROOF);
    waiting for the host's PROOF."""
    REFUSED = "refused"
    """Neither side has a role: our refusal is queued; one more frame may
    carry the remote's reason, then the handshake fails."""
    AUTHENTICATED = "authenticated"
    """Done: the sync session may start."""
    FAILED = "failed"
    """Refused or broken; nothing more is received."""


_S, _F = HandshakeState, AuthFrame
TRANSITIONS: dict[tuple[HandshakeState, AuthFrame], frozenset[HandshakeState]] = {
    (_S.AUTH_SENT, _F.AUTH): frozenset({_S.AUTHENTICATED, _S.ROLES_SENT, _S.REFUSED}),
    (_S.ROLES_SENT, _F.ROLES): frozenset({_S.HOSTING, _S.JOINING, _S.REFUSED}),
    (_S.HOSTING, _F.PROOF): frozenset({_S.JOINING, _S.AUTHENTICATED}),
    (_S.JOINING, _F.PROOF): frozenset({_S.AUTHENTICATED}),
    (_S.AUTH_SENT, _F.ERROR): frozenset({_S.FAILED}),
    (_S.ROLES_SENT, _F.ERROR): frozenset({_S.FAILED}),
    (_S.HOSTING, _F.ERROR): frozenset({_S.FAILED}),
    (_S.JOINING, _F.ERROR): frozenset({_S.FAILED}),
    (_S.REFUSED, _F.ERROR): frozenset({_S.FAILED}),
}
"""Every (state, received frame kind) pair the handshake accepts, and the
states it may move to. Any other pair fails the handshake with
``UNEXPECTED_MESSAGE`` (in REFUSED it ends it without the remote's reason),
as does an ERROR or ROLES/AUTH/PROOF frame of the wrong length; a field of
the wrong type is ``MALFORMED_FRAME``. Besides these, :meth:`AuthHandshake.start`
moves IDLE to AUTH_SENT, and any error, a wrong proof, a refused attempt,
:meth:`AuthHandshake.time_out` or :meth:`AuthHandshake.close` moves to FAILED."""

_WAITING = frozenset(state for state, _ in TRANSITIONS)


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The remote may sync. ``newly_trusted``: it was not trusted and this
    side checked its proof, so the caller adds it to the trust store."""

    newly_trusted: bool


Event = Authenticated


class PairingAttempts(Protocol):
    """What the handshake asks about attempts against its hosting secret
    (:class:`~peer.pairing_guard.PairingGuard` is one)."""

    @property
    def expired(self) -> bool:
        """Whether the last hosting secret seen expired."""

    def expiry_reason(self) -> str:
        """The refusal reason for an expired secret."""

    def begin(self, address: str, secret: str) -> None:
        """Reserve an attempt from ``address``; raise PairingError (saying why,
        sent to the remote) if it may not try now."""

    def end(self, address: str, secret: str, *, succeeded: bool | None) -> bool:
        """Release the reserved attempt with its outcome (None: no proof was
        checked); True if this failure expired ``secret``."""


class AuthHandshake:
    """Authentication state of one channel, both directions.

    ``local_id``/``remote_id``: the canonical peer ids from TLS. ``trusted``:
    this side trusts the remote. ``hosting``: the secret others join this side
    with (None if none, or expired); ``joining``: the secret this side joins
    others with, never the hosting one (None without a trust store). ``nonce``
    (:data:`~peer.pairing.NONCE_SIZE` bytes, else LocalProtocolError) and
    ``attempts`` (the hosting secret's guard, counting by ``address``) are
    inputs, so tests are deterministic.
    """

    def __init__(
        self,
        local_id: str,
        remote_id: str,
        *,
        trusted: bool,
        hosting: str | None,
        joining: str | None,
        nonce: bytes,
        attempts: PairingAttempts,
        address: str,
        max_frame_bytes: int = MAX_AUTH_FRAME,
    ) -> None:
        if not isinstance(nonce, bytes) or len(nonce) != pairing.NONCE_SIZE:
            raise LocalProtocolError(f"the nonce must be {pairing.NONCE_SIZE} bytes")
        self.local_id = local_id
        self.remote_id = remote_id
        self.address = address
        self.max_frame_bytes = max_frame_bytes
        self._trusted = trusted
        self._hosting = hosting
        self._joining = joining
        self._nonce = nonce
        self._attempts = attempts
        self._state = HandshakeState.IDLE
        self._outbox: list[bytes] = []
        self._remote_nonce = b""
        self._we_join: pairing.PairingNonces | None = None
        self._we_host: pairing.PairingNonces | None = None
        self._remote_can_pair = False
        self._remote_can_host = False
        self._hosts = False
        self._joins = False
        self._attempt_open = False
        self._outcome: bool | None = None
        """Of the attempt reserved with the guard: whether the joiner's proof was right."""
        self._expired_secret: str | None = None
        self._refusal = ""
        """Our reason, in REFUSED."""

    # -- what the caller reads ----------------------------------------------------

    @property
    def state(self) -> HandshakeState:
        return self._state

    @property
    def failed(self) -> bool:
        """The handshake failed (REFUSED or FAILED): frames still queued are
        refusals, which the caller sends best effort before closing."""
        return self._state in (HandshakeState.REFUSED, HandshakeState.FAILED)

    @property
    def can_pair(self) -> bool:
        """What this side's AUTH says: it holds a secret to host or to join with."""
        return self._hosting is not None or self._joining is not None

    @property
    def expired_secret(self) -> str | None:
        """The hosting secret that this handshake's failed proof expired, once
        :meth:`close` ended the attempt (the caller closes joining with it:
        clears it from the trust store), or None."""
        return self._expired_secret

    def data_to_send(self) -> list[bytes]:
        """Every frame queued so far, in order; the caller sends them in this order."""
        out, self._outbox = self._outbox, []
        return out

    # -- what the caller tells ----------------------------------------------------

    def start(self) -> None:
        """Queue this side's AUTH. Raises LocalProtocolError unless IDLE."""
        if self._state is not HandshakeState.IDLE:
            raise LocalProtocolError(f"start in state {self._state.value}")
        self._queue(AuthFrame.AUTH, self._trusted, self.can_pair, self._nonce)
        self._state = HandshakeState.AUTH_SENT

    def receive(self, frame: bytes) -> list[Event]:
        """Process one received frame; ``[Authenticated(...)]`` once the
        remote may sync, else ``[]`` (send what is queued, receive the next).

        Raises (after queuing the refusal the remote is told, if any, and
        moving to FAILED) RemoteProtocolError for a frame that is oversized,
        not msgpack, of the wrong shape, or not allowed in this state;
        PairingError or UntrustedPeerError on a refusal, ours or the remote's;
        ConfigError for a joining secret too short to prove with.
        LocalProtocolError when not waiting for a frame.
        """
        if self._state not in _WAITING:
            raise LocalProtocolError(f"receive in state {self._state.value}")
        if self._state is HandshakeState.REFUSED:
            self._end_refused(frame)
        try:
            body = parse_frame(frame, self.max_frame_bytes)
            kind = frame_kind(body)
            if kind is AuthFrame.ERROR:
                raise remote_refusal(body)
            if kind is None or (self._state, kind) not in TRANSITIONS:
                raise RemoteProtocolError(
                    ErrorCode.UNEXPECTED_MESSAGE, f"auth frame {body[0]!r} in {self._state.value}"
                )
            for value, expected in zip(body[1:], FIELDS[kind], strict=True):
                if not isinstance(value, expected):
                    raise RemoteProtocolError(
                        ErrorCode.MALFORMED_FRAME, "auth frame field of the wrong type"
                    )
            before = self._state
            events = self._handle(kind, body)
            assert self._state in TRANSITIONS[(before, kind)], (before, kind, self._state)
            return events
        except RemoteProtocolError as exc:
            self._fail(exc.code, Refusal.BAD_FRAME)
            raise
        except PairingError:
            if self._state in (HandshakeState.HOSTING, HandshakeState.JOINING):
                self._fail(ErrorCode.UNTRUSTED, Refusal.PAIRING_FAILED)
            else:
                self._fail()
            raise
        except BaseException:
            self._fail()
            raise

    def remote_silent(self) -> NoReturn:
        """In REFUSED: the remote closed, or sent nothing within the caller's
        wait, so its reason is unknown. Raises the refusal (PairingError or
        UntrustedPeerError); LocalProtocolError in any other state."""
        if self._state is not HandshakeState.REFUSED:
            raise LocalProtocolError(f"remote_silent in state {self._state.value}")
        self._fail()
        raise self._no_role_error("the remote gave no reason")

    def time_out(self) -> UntrustedPeerError:
        """The caller's deadline passed: queue a TIMEOUT refusal (unless the
        handshake already failed) and move to FAILED. Returns the error for
        the caller to raise once it sent what is queued (then :meth:`close`)."""
        if self._state is not HandshakeState.FAILED:
            self._fail(ErrorCode.TIMEOUT, Refusal.TIMED_OUT)
        return UntrustedPeerError(f"{self.remote_id}: authentication timed out")

    def close(self) -> None:
        """The caller is done, whatever the end, and sent what was queued:
        end the attempt reserved with the guard (so it stays in flight until
        the remote was told), with its outcome: a right or wrong proof, or
        none checked. After it, :attr:`expired_secret` is final. Unless
        AUTHENTICATED, moves to FAILED. Queues nothing; idempotent."""
        if self._state is not HandshakeState.AUTHENTICATED:
            self._state = HandshakeState.FAILED
        if self._attempt_open:
            self._attempt_open = False
            assert self._hosting is not None
            if self._attempts.end(self.address, self._hosting, succeeded=self._outcome):
                self._expired_secret = self._hosting

    # -- transitions --------------------------------------------------------------

    def _handle(self, kind: AuthFrame, body: list[Any]) -> list[Event]:
        if kind is AuthFrame.AUTH:
            return self._on_auth(body[1], body[2], body[3])
        if kind is AuthFrame.ROLES:
            return self._on_roles(body[1], body[2])
        if self._state is HandshakeState.HOSTING:
            return self._on_joiner_proof(body[1])
        return self._on_host_proof(body[1])

    def _on_auth(self, trusts_us: bool, remote_can_pair: bool, nonce: bytes) -> list[Event]:
        if len(nonce) != pairing.NONCE_SIZE:
            raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "auth nonce of the wrong size")
        self._remote_nonce, self._remote_can_pair = nonce, remote_can_pair
        if self._trusted and trusts_us:
            self._state = HandshakeState.AUTHENTICATED
            return [Authenticated(newly_trusted=False)]
        if self.can_pair and remote_can_pair:
            self._queue(AuthFrame.ROLES, self._hosting is not None, self._joining is not None)
            self._state = HandshakeState.ROLES_SENT
            return []
        self._refuse_for_lack_of_roles()
        return []

    def _on_roles(self, remote_can_host: bool, remote_can_join: bool) -> list[Event]:
        self._remote_can_host = remote_can_host
        self._hosts = self._hosting is not None and remote_can_join
        self._joins = self._joining is not None and remote_can_host
        if not self._hosts and not self._joins:
            self._refuse_for_lack_of_roles()
            return []
        if self._hosting is not None and self._hosts:
            try:
                self._attempts.begin(self.address, self._hosting)
            except PairingError as exc:
                self._fail(ErrorCode.UNTRUSTED, str(exc))
                raise
            self._attempt_open = True
        try:  # equal nonces (a remote echoing ours) fail here
            self._we_join = pairing.PairingNonces(joiner=self._nonce, host=self._remote_nonce)
            self._we_host = pairing.PairingNonces(joiner=self._remote_nonce, host=self._nonce)
        except PairingError:
            self._fail(ErrorCode.UNTRUSTED, Refusal.PAIRING_FAILED)
            raise
        if self._joining is not None and self._joins:
            proof = pairing.joiner_proof(
                self._joining, self._we_join, self.local_id, self.remote_id
            )
            self._queue(AuthFrame.PROOF, proof)
        self._state = HandshakeState.HOSTING if self._hosts else HandshakeState.JOINING
        return []

    def _on_joiner_proof(self, proof: bytes) -> list[Event]:
        assert self._hosting is not None
        # Nothing derived from the hosting secret is queued before this check.
        assert self._we_host is not None
        try:
            pairing.verify_joiner_proof(
                self._hosting, self._we_host, self.remote_id, self.local_id, proof
            )
        except PairingError:
            self._outcome = False
            self._fail(ErrorCode.UNTRUSTED, Refusal.WRONG_SECRET)
            raise
        self._outcome = True
        proof = pairing.host_proof(self._hosting, self._we_host, self.remote_id, self.local_id)
        self._queue(AuthFrame.PROOF, proof)
        if self._joins:
            self._state = HandshakeState.JOINING
            return []
        return self._authenticated()

    def _on_host_proof(self, proof: bytes) -> list[Event]:
        assert self._joining is not None
        assert self._we_join is not None
        pairing.verify_host_proof(
            self._joining, self._we_join, self.local_id, self.remote_id, proof
        )
        return self._authenticated()

    def _authenticated(self) -> list[Event]:
        self._state = HandshakeState.AUTHENTICATED
        return [Authenticated(newly_trusted=not self._trusted)]

    def _refuse_for_lack_of_roles(self) -> None:
        reason: str = Refusal.NOT_TRUSTED if not self._trusted else Refusal.CANNOT_PAIR
        if not self._trusted and self._attempts.expired:
            reason = self._attempts.expiry_reason()
        self._refusal = reason
        self._queue_error(ErrorCode.UNTRUSTED, reason)
        self._state = HandshakeState.REFUSED

    def _end_refused(self, frame: bytes) -> NoReturn:
        """The frame after our refusal for lack of roles: the remote's reason, if it is one."""
        theirs = "the remote gave no reason"
        try:
            raise remote_refusal(parse_frame(frame, self.max_frame_bytes))
        except UntrustedPeerError as refusal:
            theirs = str(refusal)
        except (RemoteProtocolError, PairingError):
            pass
        self._fail()
        raise self._no_role_error(theirs)

    def _no_role_error(self, theirs: str) -> UntrustedPeerError | PairingError:
        shown = pairing.format_peer_id(self.remote_id)
        if (
            not self._trusted
            and self._joining is not None
            and not (self._remote_can_pair and self._remote_can_host)
        ):
            return PairingError(
                f"peer {shown} does not accept joins; {theirs}; it takes a device only while "
                "it has a join secret (run `crpeer pair new-secret` on it)"
            )
        if not self._trusted:
            return UntrustedPeerError(f"peer {shown} is not trusted ({self._refusal}); {theirs}")
        return UntrustedPeerError(f"peer {shown} does not trust us, and we cannot pair; {theirs}")

    # -- helpers ------------------------------------------------------------------

    def _queue(self, kind: AuthFrame, *fields: Any) -> None:
        self._outbox.append(pack_frame(kind, *fields))

    def _queue_error(self, code: ErrorCode, reason: str) -> None:
        self._outbox.append(refusal_frame(code, reason))

    def _fail(self, code: ErrorCode | None = None, reason: str = "") -> None:
        """Move to FAILED; queue a refusal if ``code``."""
        if code is not None:
            self._queue_error(code, reason)
        self._state = HandshakeState.FAILED
