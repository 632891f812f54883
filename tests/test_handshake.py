"""The pure authentication handshake: two AuthHandshakes wired in memory, no I/O.

Every test asserts the exact frames each side queues (bytes, as they go on
the wire) and what it returns or raises; the pairing guard is the real one,
with an injected clock.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest

from peer import pairing
from peer.errors import (
    ConfigError,
    ErrorCode,
    LocalProtocolError,
    PairingError,
    RemoteProtocolError,
    UntrustedPeerError,
)
from peer.handshake import TRANSITIONS, Authenticated, AuthHandshake, HandshakeState
from peer.handshake_frames import MAX_AUTH_FRAME, AuthFrame, refusal_frame
from peer.pairing_guard import PairingGuard

A_ID = pairing.peer_id_from_public_key(b"\x01" * 32)
B_ID = pairing.peer_id_from_public_key(b"\x02" * 32)
NONCES = {A_ID: b"a" * 32, B_ID: b"b" * 32}
ADDRESSES = {A_ID: "tcp://10.0.0.1:4000", B_ID: "tcp://10.0.0.2:4000"}
SECRET = "HOSTS-SECRET-ONE-AAAAA-BBBBB"
OTHER_SECRET = "HOSTS-SECRET-TWO-CCCCC-DDDDD"
WRONG = "WRONG-SECRET-WRONG-SECRET-WRONG"
ALL_STATES = list(HandshakeState)
WAITING = [
    HandshakeState.AUTH_SENT,
    HandshakeState.ROLES_SENT,
    HandshakeState.HOSTING,
    HandshakeState.JOINING,
    HandshakeState.REFUSED,
]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pack(*fields: Any) -> bytes:
    packed: bytes = msgpack.packb(list(fields), use_bin_type=True)
    return packed


def error(code: ErrorCode, reason: str) -> bytes:
    return pack(8, 0, int(code), reason)


def guard(**kwargs: Any) -> PairingGuard:
    return PairingGuard(clock=FakeClock(), **kwargs)


def side(
    me: str,
    *,
    trusted: bool = False,
    hosting: str | None = None,
    joining: str | None = None,
    attempts: PairingGuard | None = None,
    nonce: bytes | None = None,
    max_frame_bytes: int = MAX_AUTH_FRAME,
) -> AuthHandshake:
    """The handshake of ``me`` (A_ID or B_ID) with the other one."""
    them = B_ID if me == A_ID else A_ID
    return AuthHandshake(
        me,
        them,
        trusted=trusted,
        hosting=hosting,
        joining=joining,
        nonce=nonce or NONCES[me],
        attempts=attempts or guard(),
        address=ADDRESSES[them],
        max_frame_bytes=max_frame_bytes,
    )


def state_of(handshake: AuthHandshake) -> HandshakeState:
    """The handshake's state (read through a call, so mypy does not narrow it)."""
    return handshake.state


def deliver(src: AuthHandshake, dst: AuthHandshake) -> list[Any]:
    """Move every frame src queued to dst; dst's events."""
    events: list[Any] = []
    for frame in src.data_to_send():
        events.extend(dst.receive(frame))
    return events


def started(*handshakes: AuthHandshake) -> None:
    for handshake in handshakes:
        handshake.start()


def joiner_proof(secret: str, joiner: str, host: str) -> bytes:
    nonces = pairing.PairingNonces(joiner=NONCES[joiner], host=NONCES[host])
    return pairing.joiner_proof(secret, nonces, joiner, host)


def host_proof(secret: str, joiner: str, host: str) -> bytes:
    nonces = pairing.PairingNonces(joiner=NONCES[joiner], host=NONCES[host])
    return pairing.host_proof(secret, nonces, joiner, host)


# -- the wire -----------------------------------------------------------------------


def test_frame_kinds_and_the_refusal_frame_keep_their_wire_values() -> None:
    assert [int(kind) for kind in AuthFrame] == [20, 21, 22, 8]
    assert refusal_frame(ErrorCode.UNTRUSTED, "not trusted") == b"\x94\x08\x00\x07\xabnot trusted"
    assert refusal_frame(ErrorCode.TIMEOUT, "x") == error(ErrorCode.TIMEOUT, "x")


def test_start_queues_auth_with_what_this_side_holds() -> None:
    for trusted, hosting, joining, can_pair in [
        (False, None, None, False),
        (True, None, None, False),
        (False, SECRET, None, True),
        (True, None, OTHER_SECRET, True),
    ]:
        handshake = side(A_ID, trusted=trusted, hosting=hosting, joining=joining)
        assert state_of(handshake) is HandshakeState.IDLE
        handshake.start()
        assert handshake.data_to_send() == [pack(20, trusted, can_pair, NONCES[A_ID])]
        assert state_of(handshake) is HandshakeState.AUTH_SENT
        assert handshake.data_to_send() == []


# -- the paths through the table ---------------------------------------------------


def test_both_trusting_authenticates_after_auth_alone() -> None:
    a, b = side(A_ID, trusted=True, hosting=SECRET), side(B_ID, trusted=True)
    started(a, b)
    assert deliver(a, b) == [Authenticated(newly_trusted=False)]
    assert deliver(b, a) == [Authenticated(newly_trusted=False)]
    assert state_of(a) is state_of(b) is HandshakeState.AUTHENTICATED
    assert a.data_to_send() == b.data_to_send() == []
    a.close()
    assert state_of(a) is HandshakeState.AUTHENTICATED


@pytest.mark.parametrize("host_id", [A_ID, B_ID])
def test_a_joiner_proves_first_and_the_host_proves_only_after_checking(host_id: str) -> None:
    joiner_id = B_ID if host_id == A_ID else A_ID
    host_guard = guard()
    host = side(host_id, hosting=SECRET, attempts=host_guard)
    joiner = side(joiner_id, joining=SECRET)
    started(host, joiner)
    host_frames, joiner_frames = host.data_to_send(), joiner.data_to_send()
    assert host_frames == [pack(20, False, True, NONCES[host_id])]
    assert joiner_frames == [pack(20, False, True, NONCES[joiner_id])]
    assert host.receive(joiner_frames[0]) == []
    assert joiner.receive(host_frames[0]) == []
    assert state_of(host) is state_of(joiner) is HandshakeState.ROLES_SENT
    host_roles, joiner_roles = host.data_to_send(), joiner.data_to_send()
    assert host_roles == [pack(22, True, False)]
    assert joiner_roles == [pack(22, False, True)]
    assert host.receive(joiner_roles[0]) == []
    assert state_of(host) is HandshakeState.HOSTING
    assert host.data_to_send() == []  # nothing derived from the secret before the check
    assert host_guard.in_flight == 1
    assert joiner.receive(host_roles[0]) == []
    assert state_of(joiner) is HandshakeState.JOINING
    proof = joiner.data_to_send()
    assert proof == [pack(21, joiner_proof(SECRET, joiner_id, host_id))]
    assert host.receive(proof[0]) == [Authenticated(newly_trusted=True)]
    answer = host.data_to_send()
    assert answer == [pack(21, host_proof(SECRET, joiner_id, host_id))]
    assert joiner.receive(answer[0]) == [Authenticated(newly_trusted=True)]
    assert joiner.data_to_send() == []
    assert host_guard.in_flight == 1  # until the caller closes
    host.close()
    joiner.close()
    assert (host_guard.in_flight, host_guard.failures, host.expired_secret) == (0, 0, None)


def test_a_trusted_remote_that_does_not_trust_us_pairs_without_becoming_newly_trusted() -> None:
    host = side(A_ID, trusted=True, hosting=SECRET)
    joiner = side(B_ID, joining=SECRET)
    proof = pair_until_joining(host, joiner)
    assert host.receive(proof[0]) == [Authenticated(newly_trusted=False)]
    assert deliver(host, joiner) == [Authenticated(newly_trusted=True)]


def test_two_sides_that_both_host_and_join_cross_four_proofs() -> None:
    a = side(A_ID, hosting=SECRET, joining=OTHER_SECRET)
    b = side(B_ID, hosting=OTHER_SECRET, joining=SECRET)
    started(a, b)
    a_auth, b_auth = a.data_to_send(), b.data_to_send()
    assert a.receive(b_auth[0]) == []
    assert b.receive(a_auth[0]) == []
    a_roles, b_roles = a.data_to_send(), b.data_to_send()
    assert a_roles == b_roles == [pack(22, True, True)]
    assert a.receive(b_roles[0]) == []
    assert b.receive(a_roles[0]) == []
    assert state_of(a) is state_of(b) is HandshakeState.HOSTING
    a_proof, b_proof = a.data_to_send(), b.data_to_send()
    assert a_proof == [pack(21, joiner_proof(OTHER_SECRET, A_ID, B_ID))]
    assert b_proof == [pack(21, joiner_proof(SECRET, B_ID, A_ID))]
    assert a.receive(b_proof[0]) == []
    assert b.receive(a_proof[0]) == []
    assert state_of(a) is state_of(b) is HandshakeState.JOINING
    a_answer, b_answer = a.data_to_send(), b.data_to_send()
    assert a_answer == [pack(21, host_proof(SECRET, B_ID, A_ID))]
    assert b_answer == [pack(21, host_proof(OTHER_SECRET, A_ID, B_ID))]
    assert a.receive(b_answer[0]) == [Authenticated(newly_trusted=True)]
    assert b.receive(a_answer[0]) == [Authenticated(newly_trusted=True)]


def test_a_wrong_joiner_proof_is_refused_counted_and_never_answered() -> None:
    host_guard = guard()
    host = side(A_ID, hosting=SECRET, attempts=host_guard)
    joiner = side(B_ID, joining=WRONG)
    proof = pair_until_joining(host, joiner)
    assert proof == [pack(21, joiner_proof(WRONG, B_ID, A_ID))]
    with pytest.raises(PairingError, match="wrong join secret"):
        host.receive(proof[0])
    assert state_of(host) is HandshakeState.FAILED
    refusal = host.data_to_send()
    assert refusal == [error(ErrorCode.UNTRUSTED, "wrong join secret")]
    assert host_guard.in_flight == 1  # the refusal is not sent yet
    host.close()
    assert (host_guard.in_flight, host_guard.failures) == (0, 1)
    with pytest.raises(PairingError, match=r"^the remote refused us: wrong join secret$"):
        joiner.receive(refusal[0])
    assert joiner.data_to_send() == [error(ErrorCode.UNTRUSTED, "pairing failed")]
    assert state_of(joiner) is HandshakeState.FAILED


def pair_until_joining(host: AuthHandshake, joiner: AuthHandshake) -> list[bytes]:
    """Run a host and a joiner up to the joiner's proof; that proof."""
    started(host, joiner)
    deliver(host, joiner)  # AUTH; the joiner queues its ROLES
    deliver(joiner, host)  # AUTH and ROLES
    deliver(host, joiner)  # ROLES; the joiner queues its PROOF
    assert state_of(host) is HandshakeState.HOSTING
    assert state_of(joiner) is HandshakeState.JOINING
    return joiner.data_to_send()


def test_a_wrong_host_proof_is_refused_and_not_trusted() -> None:
    host, joiner = side(A_ID, hosting=SECRET), side(B_ID, joining=SECRET)
    pair_until_joining(host, joiner)
    forged = host_proof(OTHER_SECRET, B_ID, A_ID)
    with pytest.raises(PairingError, match="wrong join secret: the host does not know"):
        joiner.receive(pack(21, forged))
    assert joiner.data_to_send() == [error(ErrorCode.UNTRUSTED, "pairing failed")]
    assert state_of(joiner) is HandshakeState.FAILED


def test_a_proof_of_the_wrong_length_is_a_wrong_proof() -> None:
    host_guard = guard()
    host = side(A_ID, hosting=SECRET, attempts=host_guard)
    pair_until_joining(host, side(B_ID, joining=SECRET))
    with pytest.raises(PairingError, match="must be 32 bytes"):
        host.receive(pack(21, b"short"))
    assert host.data_to_send() == [error(ErrorCode.UNTRUSTED, "wrong join secret")]
    host.close()
    assert host_guard.failures == 1


def test_neither_side_able_to_pair_is_refused_untrusted_with_both_reasons() -> None:
    a, b = side(A_ID), side(B_ID, trusted=True)
    started(a, b)
    a_auth, b_auth = a.data_to_send(), b.data_to_send()
    assert a.receive(b_auth[0]) == []
    assert b.receive(a_auth[0]) == []
    assert state_of(a) is state_of(b) is HandshakeState.REFUSED
    a_refusal, b_refusal = a.data_to_send(), b.data_to_send()
    assert a_refusal == [error(ErrorCode.UNTRUSTED, "not trusted")]
    assert b_refusal == [error(ErrorCode.UNTRUSTED, "cannot pair")]
    shown_a, shown_b = pairing.format_peer_id(A_ID), pairing.format_peer_id(B_ID)
    with pytest.raises(UntrustedPeerError) as raised:
        a.receive(b_refusal[0])
    assert str(raised.value) == (
        f"peer {shown_b} is not trusted (not trusted); "
        "the remote refused us (code 7: 'cannot pair')"
    )
    with pytest.raises(UntrustedPeerError) as raised:
        b.remote_silent()
    assert str(raised.value) == (
        f"peer {shown_a} does not trust us, and we cannot pair; the remote gave no reason"
    )
    assert state_of(a) is state_of(b) is HandshakeState.FAILED
    assert a.data_to_send() == b.data_to_send() == []


def test_a_joiner_meeting_a_node_that_does_not_host_is_told_to_get_a_join_secret() -> None:
    joiner, other = side(A_ID, joining=SECRET), side(B_ID, joining=OTHER_SECRET)
    started(joiner, other)
    other_auth = other.data_to_send()
    joiner.data_to_send()
    assert joiner.receive(other_auth[0]) == []
    assert joiner.data_to_send() == [pack(22, False, True)]
    assert joiner.receive(pack(22, False, True)) == []
    assert state_of(joiner) is HandshakeState.REFUSED
    assert joiner.data_to_send() == [error(ErrorCode.UNTRUSTED, "not trusted")]
    with pytest.raises(PairingError, match="does not accept joins; the remote gave no reason;"):
        joiner.receive(pack(22, True, True))  # not an ERROR: no reason


def test_in_refused_only_a_refusal_gives_a_reason() -> None:
    for frame, theirs in [
        (error(ErrorCode.UNTRUSTED, "x" * 100), f"the remote refused us (code 7: {'x' * 80!r})"),
        (error(ErrorCode.UNTRUSTED, "wrong join secret"), "the remote gave no reason"),
        (b"\xc1", "the remote gave no reason"),
        (b"x" * 300, "the remote gave no reason"),
        (pack(20, True, True, b"n" * 32), "the remote gave no reason"),
    ]:
        refused = side(A_ID)
        refused.start()
        refused.receive(pack(20, False, False, NONCES[B_ID]))
        refused.data_to_send()
        with pytest.raises(UntrustedPeerError) as raised:
            refused.receive(frame)
        assert str(raised.value).endswith(f"(not trusted); {theirs}")
        assert refused.data_to_send() == []


def test_an_expired_secret_expires_on_close_and_is_the_refusal_reason_after() -> None:
    host_guard = guard(max_failures=1)
    host = side(A_ID, hosting=SECRET, attempts=host_guard)
    proof = pair_until_joining(host, side(B_ID, joining=WRONG))
    with pytest.raises(PairingError):
        host.receive(proof[0])
    assert host.expired_secret is None
    host.close()
    assert host.expired_secret == SECRET
    assert host_guard.expired
    assert host_guard.hosting_secret(SECRET) is None
    # The next handshake has no hosting secret (the gate asks the guard), and says why.
    later = side(A_ID, hosting=host_guard.hosting_secret(SECRET), attempts=host_guard)
    later.start()
    assert later.data_to_send() == [pack(20, False, False, NONCES[A_ID])]
    later.receive(pack(20, False, True, NONCES[B_ID]))
    assert later.data_to_send() == [error(ErrorCode.UNTRUSTED, host_guard.expiry_reason())]
    with pytest.raises(UntrustedPeerError, match="the join secret expired after 1 failed"):
        later.remote_silent()


def test_the_guard_refusing_an_attempt_sends_its_reason_and_no_proof() -> None:
    host_guard = guard()
    host_guard.begin(ADDRESSES[B_ID], SECRET)  # an attempt from that address is under way
    host = side(A_ID, hosting=SECRET, joining=OTHER_SECRET, attempts=host_guard)
    started(host)
    host.data_to_send()
    host.receive(pack(20, False, True, NONCES[B_ID]))
    assert host.data_to_send() == [pack(22, True, True)]
    with pytest.raises(PairingError, match="under way"):
        host.receive(pack(22, True, True))
    assert host.data_to_send() == [
        error(ErrorCode.UNTRUSTED, "a pairing attempt from this address is under way")
    ]
    host.close()
    assert host_guard.in_flight == 1  # only the attempt begun above
    host_guard.end(ADDRESSES[B_ID], SECRET, succeeded=False)
    backing_off = side(A_ID, hosting=SECRET, attempts=host_guard)
    backing_off.start()
    backing_off.receive(pack(20, False, True, NONCES[B_ID]))
    backing_off.data_to_send()
    with pytest.raises(PairingError, match="retry in 1 s"):
        backing_off.receive(pack(22, False, True))
    assert backing_off.data_to_send() == [
        error(ErrorCode.UNTRUSTED, "too many failed pairing attempts; retry in 1 s")
    ]


def test_a_remote_echoing_our_nonce_fails_before_any_proof() -> None:
    host_guard = guard()
    joiner = side(A_ID, joining=SECRET, hosting=OTHER_SECRET, attempts=host_guard)
    joiner.start()
    joiner.data_to_send()
    joiner.receive(pack(20, False, True, NONCES[A_ID]))
    joiner.data_to_send()
    with pytest.raises(PairingError, match="nonces are equal"):
        joiner.receive(pack(22, True, True))
    assert joiner.data_to_send() == [error(ErrorCode.UNTRUSTED, "pairing failed")]
    joiner.close()
    assert (host_guard.in_flight, host_guard.failures) == (0, 0)


# -- every state x every frame kind ------------------------------------------------


def in_state(state: HandshakeState) -> tuple[AuthHandshake, PairingGuard]:
    """A handshake of A (which hosts and joins) brought to ``state``, its queue empty."""
    attempts = guard()
    handshake = side(A_ID, hosting=SECRET, joining=OTHER_SECRET, attempts=attempts)
    steps = {
        HandshakeState.IDLE: [],
        HandshakeState.AUTH_SENT: [],
        HandshakeState.ROLES_SENT: [pack(20, False, True, NONCES[B_ID])],
        HandshakeState.HOSTING: [pack(20, False, True, NONCES[B_ID]), pack(22, False, True)],
        HandshakeState.JOINING: [pack(20, False, True, NONCES[B_ID]), pack(22, True, False)],
        HandshakeState.REFUSED: [pack(20, False, False, NONCES[B_ID])],
        HandshakeState.AUTHENTICATED: [],
        HandshakeState.FAILED: [b"\xc1"],
    }[state]
    if state is HandshakeState.AUTHENTICATED:
        handshake = side(A_ID, trusted=True)
        steps = [pack(20, True, False, NONCES[B_ID])]
    if state is not HandshakeState.IDLE:
        handshake.start()
    for frame in steps:
        with contextlib.suppress(RemoteProtocolError):
            handshake.receive(frame)
    handshake.data_to_send()
    assert state_of(handshake) is state
    return handshake, attempts


FRAMES = {
    AuthFrame.AUTH: pack(20, False, True, NONCES[B_ID]),
    AuthFrame.ROLES: pack(22, True, True),
    AuthFrame.PROOF: pack(21, b"p" * 32),
    AuthFrame.ERROR: error(ErrorCode.UNTRUSTED, "no"),
}


@pytest.mark.parametrize("state", ALL_STATES, ids=lambda s: s.value)
@pytest.mark.parametrize("kind", list(AuthFrame), ids=lambda k: k.name)
def test_every_state_and_frame_kind_follows_the_table(
    state: HandshakeState, kind: AuthFrame
) -> None:
    handshake, attempts = in_state(state)
    frame = FRAMES[kind]
    if state not in WAITING:
        with pytest.raises(LocalProtocolError):
            handshake.receive(frame)
        assert handshake.data_to_send() == []
        return
    allowed = TRANSITIONS.get((state, kind))
    raised: Exception | None = None
    try:
        handshake.receive(frame)
    except (RemoteProtocolError, PairingError, UntrustedPeerError) as exc:
        raised = exc
    queued = handshake.data_to_send()
    if raised is None:
        assert allowed is not None
        assert state_of(handshake) in allowed
        return
    if isinstance(raised, RemoteProtocolError):
        assert allowed is None, f"{kind.name} is in the table for {state.value}"
        assert raised.code is ErrorCode.UNEXPECTED_MESSAGE
        assert queued == [error(ErrorCode.UNEXPECTED_MESSAGE, "bad authentication frame")]
    else:  # a refusal: the remote's ERROR, a wrong proof, or the end of REFUSED
        assert allowed is not None or state is HandshakeState.REFUSED
        assert all(msgpack.unpackb(f)[0] == 8 for f in queued)
    assert state_of(handshake) is HandshakeState.FAILED
    handshake.close()
    assert attempts.in_flight == 0


@pytest.mark.parametrize("state", WAITING, ids=lambda s: s.value)
def test_an_unknown_kind_or_wrong_length_is_unexpected_in_every_waiting_state(
    state: HandshakeState,
) -> None:
    for frame in [pack(99), pack(20, False, True), pack(22, True), pack(21), pack(8, 0, 7)]:
        handshake, _ = in_state(state)
        if state is HandshakeState.REFUSED:
            with pytest.raises((UntrustedPeerError, PairingError), match="gave no reason"):
                handshake.receive(frame)
            assert handshake.data_to_send() == []
            continue
        with pytest.raises(RemoteProtocolError) as raised:
            handshake.receive(frame)
        assert raised.value.code is ErrorCode.UNEXPECTED_MESSAGE
        assert handshake.data_to_send() == [
            error(ErrorCode.UNEXPECTED_MESSAGE, "bad authentication frame")
        ]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\xc1", ErrorCode.MALFORMED_FRAME),  # not msgpack
        (pack(20, False, True, NONCES[B_ID]) + b"\x00", ErrorCode.MALFORMED_FRAME),  # trailing
        (msgpack.packb({"kind": 20}), ErrorCode.MALFORMED_FRAME),
        (pack(), ErrorCode.MALFORMED_FRAME),
        (pack("20", False), ErrorCode.MALFORMED_FRAME),
        (pack(20.0, False, True, NONCES[B_ID]), ErrorCode.MALFORMED_FRAME),
        (pack(20, 0, True, NONCES[B_ID]), ErrorCode.MALFORMED_FRAME),  # not a bool
        (pack(20, False, True, "n" * 32), ErrorCode.MALFORMED_FRAME),  # not bytes
        (pack(20, False, True, b"n" * 31), ErrorCode.MALFORMED_FRAME),  # nonce size
        (pack(20, False, True, b"n" * 33), ErrorCode.MALFORMED_FRAME),
        (pack(True, False, True, NONCES[B_ID]), ErrorCode.UNEXPECTED_MESSAGE),
        (b"\x94" + b"\xc0" * (MAX_AUTH_FRAME - 1), ErrorCode.MALFORMED_FRAME),  # at the limit
        (pack(20, False, True, b"n" * 300), ErrorCode.FRAME_TOO_LARGE),
    ],
)
def test_malformed_and_oversized_frames_fail_with_their_code(frame: bytes, code: ErrorCode) -> None:
    handshake, _ = in_state(HandshakeState.AUTH_SENT)
    with pytest.raises(RemoteProtocolError) as raised:
        handshake.receive(frame)
    assert raised.value.code is code
    assert handshake.data_to_send() == [error(code, "bad authentication frame")]
    assert state_of(handshake) is HandshakeState.FAILED


def test_the_frame_limit_is_an_input() -> None:
    auth = pack(20, False, True, NONCES[B_ID])
    fits = side(A_ID, hosting=SECRET, max_frame_bytes=len(auth))
    fits.start()
    assert fits.receive(auth) == []
    assert state_of(fits) is HandshakeState.ROLES_SENT
    small = side(A_ID, hosting=SECRET, max_frame_bytes=len(auth) - 1)
    small.start()
    small.data_to_send()
    with pytest.raises(RemoteProtocolError) as raised:
        small.receive(auth)
    assert raised.value.code is ErrorCode.FRAME_TOO_LARGE
    assert small.data_to_send() == [error(ErrorCode.FRAME_TOO_LARGE, "bad authentication frame")]


@pytest.mark.parametrize("state", WAITING[:4], ids=lambda s: s.value)
def test_a_remote_refusal_raises_and_is_answered_only_while_pairing(
    state: HandshakeState,
) -> None:
    pairing_now = state in (HandshakeState.HOSTING, HandshakeState.JOINING)
    handshake, attempts = in_state(state)
    with pytest.raises(UntrustedPeerError, match=r"^the remote refused us \(code 12: 'late'\)$"):
        handshake.receive(error(ErrorCode.TIMEOUT, "late"))
    assert handshake.data_to_send() == []
    handshake, attempts = in_state(state)
    with pytest.raises(PairingError, match=r"^the remote refused us: wrong join secret$"):
        handshake.receive(error(ErrorCode.UNTRUSTED, "wrong join secret"))
    expected = [error(ErrorCode.UNTRUSTED, "pairing failed")] if pairing_now else []
    assert handshake.data_to_send() == expected
    handshake.close()
    assert (attempts.in_flight, attempts.failures) == (0, 0)


def test_a_host_answers_anything_but_a_right_proof_with_no_bytes_at_all() -> None:
    candidates = [
        pack(21, joiner_proof(WRONG, B_ID, A_ID)),
        pack(21, host_proof(SECRET, B_ID, A_ID)),  # its own proof played back
        pack(21, b""),
        pack(20, True, True, NONCES[B_ID]),
        pack(22, True, True),
        error(ErrorCode.UNTRUSTED, "wrong join secret"),
        b"\xc1",
    ]
    for frame in candidates:
        host = side(A_ID, hosting=SECRET)
        pair_until_joining(host, side(B_ID, joining=SECRET))
        with pytest.raises((PairingError, RemoteProtocolError)):
            host.receive(frame)
        for sent in host.data_to_send():
            assert not any(isinstance(value, bytes) for value in msgpack.unpackb(sent))


def test_time_out_refuses_with_timeout_and_releases_the_attempt_on_close() -> None:
    handshake, attempts = in_state(HandshakeState.HOSTING)
    assert attempts.in_flight == 1
    exc = handshake.time_out()
    assert isinstance(exc, UntrustedPeerError)
    assert str(exc) == f"{B_ID}: authentication timed out"
    assert handshake.data_to_send() == [error(ErrorCode.TIMEOUT, "authentication timed out")]
    assert handshake.failed
    handshake.close()
    assert (attempts.in_flight, attempts.failures) == (0, 0)
    handshake.time_out()
    assert handshake.data_to_send() == []  # already failed: nothing more


def test_close_while_waiting_releases_the_attempt_as_no_outcome() -> None:
    handshake, attempts = in_state(HandshakeState.HOSTING)
    handshake.close()
    handshake.close()
    assert state_of(handshake) is HandshakeState.FAILED
    assert (attempts.in_flight, attempts.failures, attempts.blocked_for(ADDRESSES[B_ID])) == (
        0,
        0,
        0.0,
    )


def test_misuse_is_a_local_protocol_error() -> None:
    with pytest.raises(LocalProtocolError):
        side(A_ID, nonce=b"short")
    idle = side(A_ID)
    with pytest.raises(LocalProtocolError):
        idle.receive(FRAMES[AuthFrame.AUTH])
    with pytest.raises(LocalProtocolError):
        idle.remote_silent()
    idle.start()
    with pytest.raises(LocalProtocolError):
        idle.start()
    with pytest.raises(LocalProtocolError):
        idle.remote_silent()


def test_a_joining_secret_too_short_to_prove_with_fails_without_a_refusal() -> None:
    joiner = side(A_ID, joining="too-short")
    joiner.start()
    joiner.receive(pack(20, False, True, NONCES[B_ID]))
    joiner.data_to_send()
    with pytest.raises(ConfigError):
        joiner.receive(pack(22, True, False))
    assert joiner.data_to_send() == []
    assert state_of(joiner) is HandshakeState.FAILED
