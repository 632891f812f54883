"""The pure protocol: two SyncSessions wired together in memory, no I/O."""

from __future__ import annotations

import os
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from peer.messages import (
    PROTOCOL_VERSION,
    Backlog,
    Changes,
    Close,
    Credit,
    CursorMessage,
    EoseMessage,
    Error,
    Have,
    Hello,
    LimitsMessage,
    Message,
    MessageType,
    Part,
    Ping,
    Pong,
    SnapshotEnd,
    SnapshotPart,
    decode,
    encode,
)
from peer.protocol import (
    ALLOWED,
    ALLOWED_IN_PAGE,
    SINCE,
    BacklogReceived,
    ChangesReceived,
    CreditReceived,
    CursorReceived,
    EoseReceived,
    HelloReceived,
    Limits,
    LocalInfo,
    RemoteClosed,
    SnapshotAnswered,
    SnapshotEndReceived,
    SnapshotPartReceived,
    SyncSession,
    SyncState,
)
from peer.store import Change

A_SITE, B_SITE, C_SITE = (bytes([n]) * 16 for n in (1, 2, 3))
FINGERPRINT = b"f" * 16


def session(site: bytes, *, schema: int = 0, limits: Limits | None = None) -> SyncSession:
    return SyncSession(LocalInfo(site, site.hex()[:4], schema, FINGERPRINT), limits or Limits(), 7)


def change(version: int, seq: int = 0, site: bytes = A_SITE) -> Change:
    return ("items", b"\x01\x09\x01", "name", f"v{version}", 1, version, site, 1, seq)


def deliver(src: SyncSession, dst: SyncSession) -> list[Any]:
    """Move every queued frame from src to dst; return dst's events."""
    out: list[Any] = []
    for frame in src.data_to_send():
        out.extend(dst.receive(frame))
    return out


def kinds(frames: list[bytes]) -> list[MessageType]:
    return [MessageType(msgpack.unpackb(f)[0]) for f in frames]


class ProtocolPair:
    """Two sessions past the handshake and cursor exchange."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.a = session(A_SITE, limits=limits)
        self.b = session(B_SITE, limits=limits)
        self.a.hello()
        self.b.hello()
        assert isinstance(deliver(self.a, self.b)[0], HelloReceived)
        assert isinstance(deliver(self.b, self.a)[0], HelloReceived)
        self.a.send_cursor({})
        self.b.send_cursor({C_SITE: 4})
        assert deliver(self.a, self.b) == [CursorReceived({})]
        assert deliver(self.b, self.a) == [CursorReceived({C_SITE: 4})]


def test_the_exact_message_sequence_of_a_sync() -> None:
    a, b = session(A_SITE), session(B_SITE)
    a.hello()
    b.hello()
    hello_a = a.data_to_send()
    assert kinds(hello_a) == [MessageType.HELLO]
    (event,) = b.receive(hello_a[0])
    assert isinstance(event, HelloReceived)
    assert (event.hello.site_id, event.hello.schema_version, event.remote_schema_newer) == (
        A_SITE,
        0,
        False,
    )
    deliver(b, a)
    assert a.state is SyncState.READY
    a.send_cursor({})
    b.send_cursor({C_SITE: 4})
    assert (
        kinds(a.data_to_send() + b.data_to_send()) == [MessageType.LIMITS, MessageType.CURSOR] * 2
    )
    # Rebuild a fresh pair for the body of the exchange.
    pair = ProtocolPair()
    a, b = pair.a, pair.b
    assert a.state is b.state is SyncState.SYNCING
    assert a.credit == Limits().window
    a.send_changes([change(1), change(1, 1)], final=False)
    a.send_changes([change(2)], final=True)
    a.send_eose()
    frames = a.data_to_send()
    assert kinds(frames) == [MessageType.CHANGES, MessageType.CHANGES, MessageType.EOSE]
    # Each frame is applied as it arrives; the final one commits the page.
    assert b.receive(frames[0]) == [ChangesReceived([change(1), change(1, 1)], False)]
    b.frame_applied()
    assert b.receive(frames[1]) == [ChangesReceived([change(2)], True)]
    b.frame_applied()
    assert b.receive(frames[2]) == [EoseReceived()]
    credits = b.data_to_send()
    assert kinds(credits) == [MessageType.CREDIT, MessageType.CREDIT]
    assert [a.receive(f) for f in credits] == [[CreditReceived()], [CreditReceived()]]
    assert a.credit == Limits().window
    # Live: after EOSE, more pages flow the same way.
    a.send_changes([change(3)], final=True)
    assert deliver(a, b) == [ChangesReceived([change(3)], True)]
    assert b.remote_cursor[A_SITE] == 3
    a.send_close()
    assert deliver(a, b) == [RemoteClosed(None)]
    assert {a.state, b.state} == {SyncState.CLOSED}


def test_the_remote_cursor_tracks_what_went_either_way() -> None:
    pair = ProtocolPair()
    pair.a.send_changes([change(5, site=C_SITE)], final=True)
    deliver(pair.a, pair.b)
    assert pair.a.remote_cursor == {C_SITE: 5}  # b's cursor was {C: 4}
    assert pair.b.remote_cursor[C_SITE] == 5  # a holds what it sent


def test_sending_without_credit_is_a_local_error_and_overrunning_is_a_remote_one() -> None:
    pair = ProtocolPair(Limits(window=1))
    pair.a.send_changes([change(1)], final=True)
    with pytest.raises(LocalProtocolError, match="no credit"):
        pair.a.send_changes([change(2)], final=True)
    deliver(pair.a, pair.b)
    # Forge a second frame beyond the window.
    forged = encode(Changes([change(2)], True), 4)
    with pytest.raises(RemoteProtocolError) as caught:
        pair.b.receive(forged)
    assert caught.value.code is ErrorCode.FLOW_CONTROL


def test_a_frame_with_more_rows_than_announced_fails_the_session() -> None:
    pair = ProtocolPair(Limits(max_batch_rows=2))
    forged = encode(Changes([change(1), change(1, 1), change(1, 2)], True), 3)
    with pytest.raises(RemoteProtocolError) as caught:
        pair.b.receive(forged)
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE
    assert pair.b.state is SyncState.CLOSED


def test_frames_out_of_sequence_fail_the_session() -> None:
    pair = ProtocolPair()
    pair.a.send_changes([change(1)], final=True)
    pair.a.send_changes([change(2)], final=True)
    _, second = pair.a.data_to_send()
    with pytest.raises(RemoteProtocolError, match="expected"):
        pair.b.receive(second)
    pair2 = ProtocolPair()
    pair2.a.send_changes([change(1)], final=True)
    (frame,) = pair2.a.data_to_send()
    pair2.b.receive(frame)
    with pytest.raises(RemoteProtocolError, match="expected"):
        pair2.b.receive(frame)  # a duplicate


def test_version_mismatch_and_self_connection_are_refused() -> None:
    a = session(A_SITE)
    newer = Hello(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 2, B_SITE, "b", 0, FINGERPRINT, 10, 4, 1)
    with pytest.raises(RemoteProtocolError) as caught:
        a.receive(encode(newer, 0))
    assert caught.value.code is ErrorCode.VERSION_MISMATCH
    b = session(A_SITE)
    with pytest.raises(RemoteProtocolError) as caught:
        b.receive(encode(Hello(1, 1, A_SITE, "me", 0, FINGERPRINT, 10, 4, 1), 0))
    assert caught.value.code is ErrorCode.SELF_CONNECTION


def test_have_raises_what_the_remote_is_known_to_hold() -> None:
    pair = ProtocolPair()
    a, b = pair.a, pair.b
    assert a.version == b.version == PROTOCOL_VERSION
    # b got C's versions up to 6 from a third peer: it tells a, once.
    b.send_have({C_SITE: 6, A_SITE: 3})
    b.send_have({C_SITE: 6})
    (frame,) = b.data_to_send()
    assert kinds([frame]) == [MessageType.HAVE]
    # a's own changes are left out: a knows best what it has sent.
    assert decode(frame, max_frame_bytes=1 << 20, max_batch_rows=10).message == Have({C_SITE: 6})
    assert a.receive(frame) == []
    assert a.remote_cursor == {C_SITE: 6}
    # A HAVE never lowers what is known.
    b.send_have({C_SITE: 2})
    assert b.data_to_send() == []
    a.receive(encode(Have({C_SITE: 2}), 4))
    assert a.remote_cursor == {C_SITE: 6}


def test_have_is_neither_sent_to_nor_accepted_from_a_protocol_1_peer() -> None:
    new, old = session(A_SITE), session(B_SITE)
    new.hello()
    old.hello()
    new.data_to_send()
    # What a peer that speaks only protocol 1 announces.
    new.receive(encode(Hello(1, 1, B_SITE, "old", 0, FINGERPRINT, 100, 4, 9), 0))
    assert new.version == 1
    new.receive(encode(CursorMessage({}), 1))
    new.send_cursor({})
    new.data_to_send()
    new.send_have({C_SITE: 6})
    assert new.data_to_send() == []
    with pytest.raises(RemoteProtocolError) as caught:
        new.receive(encode(Have({C_SITE: 6}), 2))
    assert caught.value.code is ErrorCode.UNEXPECTED_MESSAGE


def test_have_before_the_cursors_are_exchanged_is_refused() -> None:
    s, received = session_in(SyncState.READY)
    s.send_have({C_SITE: 1})  # nothing to announce yet
    assert kinds(s.data_to_send()) == [MessageType.HELLO]
    with pytest.raises(RemoteProtocolError) as caught:
        s.receive(encode(Have({C_SITE: 1}), received))
    assert caught.value.code is ErrorCode.UNEXPECTED_MESSAGE


def test_a_newer_remote_schema_is_reported() -> None:
    old, new = session(A_SITE, schema=1), session(B_SITE, schema=2)
    new.hello()
    (event,) = deliver(new, old)
    assert isinstance(event, HelloReceived)
    assert event.remote_schema_newer


def test_pings_are_answered_and_errors_close() -> None:
    pair = ProtocolPair()
    pair.a.send_ping(42)
    assert deliver(pair.a, pair.b) == []
    assert deliver(pair.b, pair.a)[0].nonce == 42
    pair.b.send_error(ErrorCode.INTERNAL, "boom")
    (closed,) = deliver(pair.b, pair.a)
    assert closed == RemoteClosed(Error(ErrorCode.INTERNAL, "boom"))
    with pytest.raises(LocalProtocolError):
        pair.a.receive(b"\x90")


# -- every state and every message -----------------------------------------------------


def sample_message(kind: MessageType) -> Message:
    samples: dict[MessageType, Message] = {
        MessageType.HELLO: Hello(1, 1, C_SITE, "c", 0, FINGERPRINT, 100, 4, 9),
        MessageType.CURSOR: CursorMessage({C_SITE: 1}),
        MessageType.CHANGES: Changes([change(1)], True),
        MessageType.EOSE: EoseMessage(),
        MessageType.CREDIT: Credit(1),
        MessageType.PING: Ping(1),
        MessageType.PONG: Pong(1),
        MessageType.ERROR: Error(ErrorCode.INTERNAL, "x"),
        MessageType.CLOSE: Close(),
        MessageType.BACKLOG: Backlog(10),
        MessageType.HAVE: Have({C_SITE: 5}),
        MessageType.LIMITS: LimitsMessage(1 << 20, 1 << 20),
        MessageType.PART: Part(10, False, b"0123"),
        MessageType.SNAPSHOT_PART: SnapshotPart(10, b"0123"),
        MessageType.SNAPSHOT_END: SnapshotEnd(10, bytes(32), {C_SITE: 3}),
    }
    return samples[kind]


def session_in(state: SyncState, *, in_page: bool = False) -> tuple[SyncSession, int]:
    """A session in ``state`` (with a page open, if ``in_page``) and the
    number of frames it has received."""
    if state is SyncState.HANDSHAKE:
        s = session(A_SITE)
        s.hello()
        return s, 0
    pair = ProtocolPair()
    if state is SyncState.READY:
        s = session(A_SITE)
        s.hello()
        s.receive(encode(Hello(1, 2, B_SITE, "b", 0, FINGERPRINT, 100, 4, 9), 0))
        return s, 1
    if state is SyncState.SYNCING and in_page:
        pair.b.send_changes([change(1)], final=False)
        deliver(pair.b, pair.a)
        assert pair.a.page_open
        return pair.a, 4
    if state is SyncState.SYNCING:
        return pair.a, 3
    pair.a.send_close()
    return pair.a, 3


ONLY_IN_A_SNAPSHOT = {
    (SyncState.SYNCING, MessageType.CURSOR),
    (SyncState.SYNCING, MessageType.SNAPSHOT_PART),
    (SyncState.SYNCING, MessageType.SNAPSHOT_END),
}
"""Allowed in SYNCING only around a snapshot (see test_snapshot_*); a session
that asked for none refuses them."""


SITUATIONS = [*((state, False) for state in SyncState), (SyncState.SYNCING, True)]
"""Every state, and SYNCING with a page open (see ALLOWED_IN_PAGE)."""


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(SITUATIONS), st.sampled_from(list(MessageType)))
def test_every_state_and_message_pair_is_handled(
    situation: tuple[SyncState, bool], kind: MessageType
) -> None:
    state, in_page = situation
    s, received = session_in(state, in_page=in_page)
    frame = encode(sample_message(kind), received)
    if state is SyncState.CLOSED:
        with pytest.raises(LocalProtocolError):
            s.receive(frame)
        return
    allowed = ALLOWED_IN_PAGE if in_page else ALLOWED[state]
    if kind not in allowed or s.version < SINCE.get(kind, 0) or (state, kind) in ONLY_IN_A_SNAPSHOT:
        with pytest.raises(RemoteProtocolError) as caught:
            s.receive(frame)
        assert caught.value.code is ErrorCode.UNEXPECTED_MESSAGE
        assert s.state is SyncState.CLOSED
        return
    if kind is MessageType.CREDIT:
        s.send_changes([], final=True)  # use a credit: make room within the window
    events = s.receive(frame)
    assert isinstance(events, list)
    if kind in {MessageType.ERROR, MessageType.CLOSE}:
        assert s.state is SyncState.CLOSED
        assert s.closed
    if kind is MessageType.CHANGES:
        assert not s.page_open  # the sample is a final frame: it ends the page
    elif in_page:
        assert s.page_open


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_anything_but_a_protocol_error(data: bytes) -> None:
    s, _ = session_in(SyncState.SYNCING)
    code: ErrorCode | None = None
    try:
        s.receive(data)
    except RemoteProtocolError as exc:
        code = exc.code
    assert code in {
        None,
        ErrorCode.MALFORMED_FRAME,
        ErrorCode.UNEXPECTED_MESSAGE,
        ErrorCode.FRAME_TOO_LARGE,
    }


JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=5)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None)
@given(st.integers(1, len(MessageType)), JSONISH)
def test_well_typed_frames_with_wrong_fields_are_refused(kind: int, fields: Any) -> None:
    body = [kind, 0, *(fields if isinstance(fields, list) else [fields])]
    code: ErrorCode | None = None
    try:
        decode(msgpack.packb(body), max_frame_bytes=1 << 20, max_batch_rows=100)
    except RemoteProtocolError as exc:
        code = exc.code
    assert code in {None, ErrorCode.MALFORMED_FRAME, ErrorCode.FRAME_TOO_LARGE}


def test_oversized_frames_are_refused_before_decoding() -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        decode(os.urandom(2048), max_frame_bytes=1024, max_batch_rows=10)
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["items", "tags"]),
            st.binary(min_size=1, max_size=8),
            st.sampled_from(["name", "-1"]),
            st.none()
            | st.integers(-(2**63), 2**63 - 1)
            | st.floats(allow_nan=False)
            | st.text()
            | st.binary(),
            st.integers(0, 10),
            st.integers(1, 5),
            st.sampled_from([A_SITE, B_SITE]),
            st.integers(0, 3),
            st.integers(0, 3),
        ),
        max_size=30,
    ),
    st.booleans(),
)
def test_changes_round_trip(changes: list[Change], final: bool) -> None:
    frame = decode(encode(Changes(changes, final), 3), max_frame_bytes=1 << 20, max_batch_rows=100)
    assert frame.number == 3
    assert frame.message == Changes(changes, final)


@pytest.mark.parametrize("val", [2**63, True, [1], {"a": 1}])
def test_a_change_value_sqlite_cannot_hold_is_refused(val: Any) -> None:
    body = [3, 0, True, ["items"], [[A_SITE, 1, [[0, b"\x01", "name", val, 1, 1, 0]]]]]
    with pytest.raises(RemoteProtocolError) as caught:
        decode(msgpack.packb(body), max_frame_bytes=1 << 20, max_batch_rows=10)
    assert caught.value.code is ErrorCode.MALFORMED_FRAME


def test_a_frame_says_which_schema_its_rows_need() -> None:
    pair = ProtocolPair()
    # Rows held for schema 2 and served on by a schema-0 sender: the frame says 2.
    pair.a.send_changes([change(1)], final=True, schema=2)
    (frame,) = pair.a.data_to_send()
    assert decode(frame, max_frame_bytes=1 << 20, max_batch_rows=100).message == Changes(
        [change(1)], True, 2
    )
    assert pair.b.receive(frame) == [ChangesReceived([change(1)], True, 2, hold_for=2)]
    # Nothing newer than the announced schema: the frame has no schema field.
    pair.a.send_changes([change(2)], final=True, schema=0)
    (frame,) = pair.a.data_to_send()
    assert len(msgpack.unpackb(frame)) == 5
    assert pair.b.receive(frame) == [ChangesReceived([change(2)], True, 0)]


def test_a_protocol_2_peer_gets_no_schema_field() -> None:
    a, b = session(A_SITE), session(B_SITE)
    a.hello()
    deliver(a, b)
    old = Hello(1, 2, B_SITE, "b", 0, FINGERPRINT, 10, 4, 1)
    a.receive(encode(old, 0))
    a.send_cursor({})
    a.receive(encode(CursorMessage({}), 1))
    a.send_changes([change(1)], final=True, schema=5)
    *_, frame = a.data_to_send()
    assert len(msgpack.unpackb(frame)) == 5


# -- snapshots (protocol 4) -----------------------------------------------------------


def snapshot_pair(
    *, receiver_fresh: bool = True, receiver_cursor: dict[bytes, int] | None = None
) -> tuple[SyncSession, SyncSession]:
    """a sends, b is a fresh device that asks for a snapshot of up to 100 bytes."""
    a = session(A_SITE)
    b = session(B_SITE, limits=Limits(max_snapshot_bytes=100))
    a.hello()
    b.hello()
    deliver(a, b)
    deliver(b, a)
    a.send_cursor({C_SITE: 9})
    b.send_cursor(receiver_cursor or {}, snapshot=receiver_fresh)
    deliver(a, b)
    deliver(b, a)
    return a, b


def test_snapshot_then_changes_from_its_cursor() -> None:
    a, b = snapshot_pair()
    assert a.snapshot_wanted == 100
    assert b.snapshot_wanted == 0  # a asked for none
    a.send_snapshot_part(7, b"abcd")
    a.send_snapshot_part(7, b"efg")
    a.send_snapshot_end(b"h" * 32, {A_SITE: 5})
    with pytest.raises(LocalProtocolError):
        a.send_changes([change(6)], final=True)  # not before b's answer
    events = deliver(a, b)
    assert events == [
        SnapshotPartReceived(7, b"abcd"),
        SnapshotPartReceived(7, b"efg"),
        SnapshotEndReceived(7, b"h" * 32, {A_SITE: 5}),
    ]
    b.frame_applied()
    b.frame_applied()
    b.send_snapshot_answer({A_SITE: 5})
    assert deliver(b, a) == [CreditReceived(), CreditReceived(), SnapshotAnswered({A_SITE: 5})]
    assert a.remote_cursor == {A_SITE: 5}
    a.send_changes([change(6)], final=True)
    assert [type(e) for e in deliver(a, b)] == [ChangesReceived]
    assert a.snapshot_wanted == 0
    with pytest.raises(LocalProtocolError):
        a.send_snapshot_part(7, b"again")


def test_snapshot_parts_use_credit() -> None:
    a, _ = snapshot_pair()
    for _ in range(Limits().window):
        a.send_snapshot_part(100, b"x")
    with pytest.raises(LocalProtocolError, match="credit"):
        a.send_snapshot_part(100, b"x")


@pytest.mark.parametrize(
    ("fresh", "cursor"), [(False, None), (True, {C_SITE: 1})], ids=["declined", "not fresh"]
)
def test_no_snapshot_unless_the_remote_is_fresh_and_asks(
    fresh: bool, cursor: dict[bytes, int] | None
) -> None:
    a, b = snapshot_pair(receiver_fresh=fresh, receiver_cursor=cursor)
    assert a.snapshot_wanted == 0
    with pytest.raises(LocalProtocolError):
        a.send_snapshot_part(7, b"abcd")
    # A remote that sends one anyway fails the session.
    frame = encode(SnapshotPart(7, b"abcd"), 3)
    with pytest.raises(RemoteProtocolError) as caught:
        b.receive(frame)
    assert caught.value.code is ErrorCode.UNEXPECTED_MESSAGE


def test_no_snapshot_to_a_remote_with_another_schema() -> None:
    a = session(A_SITE)
    b = session(B_SITE, schema=2)
    a.hello()
    b.hello()
    deliver(a, b)
    deliver(b, a)
    a.send_cursor({})
    b.send_cursor({}, snapshot=True)
    deliver(a, b)
    deliver(b, a)
    assert a.snapshot_wanted == 0


def test_a_protocol_3_remote_is_never_offered_a_snapshot() -> None:
    a = session(A_SITE)
    a.hello()
    a.data_to_send()
    a.receive(encode(Hello(1, 3, B_SITE, "b", 0, FINGERPRINT, 100, 4, 9), 0))
    a.receive(encode(LimitsMessage(1 << 20, 1 << 20), 1))
    a.receive(encode(CursorMessage({}), 2))
    assert a.version == 3
    assert a.snapshot_wanted == 0
    a.send_cursor({}, snapshot=True)  # a fresh device talking to a protocol 3 peer
    limits = decode(a.data_to_send()[0], max_frame_bytes=1 << 20, max_batch_rows=10)
    assert limits.message == LimitsMessage(Limits().max_frame_bytes, Limits().max_value_bytes)
    with pytest.raises(RemoteProtocolError):  # snapshot frames do not exist in 3
        a.receive(encode(SnapshotPart(7, b"abcd"), 3))


@pytest.mark.parametrize(
    "frames",
    [
        [SnapshotPart(101, b"x")],  # over the announced limit
        [SnapshotPart(7, b"abcd"), SnapshotPart(8, b"efg")],  # the total changes
        [SnapshotPart(3, b"abcd")],  # more than the total
        [SnapshotPart(7, b"abcd"), SnapshotEnd(7, bytes(32), {})],  # ends short
        [SnapshotEnd(7, bytes(32), {})],  # ends before it began
        [SnapshotPart(7, b"abcd"), Changes([change(1)], True)],  # changes inside it
    ],
)
def test_malformed_snapshots_fail_the_session(frames: list[Message]) -> None:
    _, b = snapshot_pair()
    *before, last = frames
    for number, message in enumerate(before, start=3):  # after HELLO, LIMITS, CURSOR
        b.receive(encode(message, number))
    with pytest.raises(RemoteProtocolError):
        b.receive(encode(last, 3 + len(before)))
    assert b.state is SyncState.CLOSED


def test_snapshot_frames_round_trip() -> None:
    for message in (
        SnapshotPart(10, b"0123"),
        SnapshotEnd(10, bytes(range(32)), {C_SITE: 3, A_SITE: 1}),
        LimitsMessage(1 << 20, 1 << 21, 1 << 30),
    ):
        frame = decode(encode(message, 5), max_frame_bytes=1 << 20, max_batch_rows=10)
        assert (frame.number, frame.message) == (5, message)


# -- pages, acknowledgements and the read-only state ------------------------------------


def test_a_page_is_open_from_a_non_final_frame_to_the_final_one() -> None:
    pair = ProtocolPair()
    assert (pair.b.page_open, pair.b.page_rows) == (False, 0)
    pair.a.send_changes([change(1), change(1, 1)], final=False)
    pair.a.send_changes([change(1, 2)], final=False)
    deliver(pair.a, pair.b)
    assert (pair.b.page_open, pair.b.page_rows) == (True, 3)
    pair.a.send_changes([], final=True)
    assert deliver(pair.a, pair.b) == [ChangesReceived([], True, 0)]
    assert (pair.b.page_open, pair.b.page_rows) == (False, 0)
    pair.a.send_eose()  # after the page, EOSE is welcome
    assert deliver(pair.a, pair.b) == [EoseReceived()]


@pytest.mark.parametrize(
    "message",
    [EoseMessage(), Backlog(3), SnapshotPart(7, b"abcd"), SnapshotEnd(7, bytes(32), {})],
    ids=["eose", "backlog", "snapshot part", "snapshot end"],
)
def test_eose_backlog_or_a_snapshot_inside_a_page_fails_the_session(message: Message) -> None:
    pair = ProtocolPair()
    pair.a.send_changes([change(1)], final=False)
    deliver(pair.a, pair.b)
    with pytest.raises(RemoteProtocolError, match="not allowed in a page") as caught:
        pair.b.receive(encode(message, 4))
    assert caught.value.code is ErrorCode.UNEXPECTED_MESSAGE
    assert pair.b.closed
    assert pair.b.page_rows == 1  # what the unfinished page had brought


def test_eose_backlog_and_a_snapshot_are_not_sent_inside_a_page() -> None:
    pair = ProtocolPair()
    pair.a.send_changes([change(1)], final=False)
    for send in (
        pair.a.send_eose,
        lambda: pair.a.send_backlog(3),
        lambda: pair.a.send_snapshot_part(7, b"abcd"),
        lambda: pair.a.group_sent(A_SITE, 1),
    ):
        with pytest.raises(LocalProtocolError):
            send()
    pair.a.send_changes([], final=True)
    pair.a.send_backlog(3)
    pair.a.send_eose()
    assert [type(e) for e in deliver(pair.a, pair.b)] == [
        ChangesReceived,
        ChangesReceived,
        BacklogReceived,
        EoseReceived,
    ]


def test_frame_applied_needs_a_received_frame_to_acknowledge() -> None:
    pair = ProtocolPair()
    with pytest.raises(LocalProtocolError):
        pair.b.frame_applied()  # before any frame
    pair.a.send_changes([change(1)], final=True)
    deliver(pair.a, pair.b)
    pair.b.frame_applied()
    with pytest.raises(LocalProtocolError):
        pair.b.frame_applied()  # twice for one frame
    assert deliver(pair.b, pair.a) == [CreditReceived()]


def test_a_frame_applied_after_the_close_queues_nothing() -> None:
    pair = ProtocolPair()
    pair.a.send_changes([change(1)], final=True)
    pair.a.send_close()
    assert [type(e) for e in deliver(pair.a, pair.b)] == [ChangesReceived, RemoteClosed]
    pair.b.frame_applied()  # the frame came before the close: no misuse
    assert pair.b.data_to_send() == []


def test_a_ping_is_sent_after_hello_and_before_the_close_only() -> None:
    s = session(A_SITE)
    with pytest.raises(LocalProtocolError):
        s.send_ping(1)  # before hello
    pair = ProtocolPair()
    pair.a.send_close()
    with pytest.raises(LocalProtocolError):
        pair.a.send_ping(1)


def test_group_sent_raises_the_remote_cursor_and_never_lowers_it() -> None:
    pair = ProtocolPair()
    assert pair.a.remote_cursor == {C_SITE: 4}
    pair.a.group_sent(C_SITE, 2)
    assert pair.a.remote_cursor == {C_SITE: 4}
    pair.a.group_sent(C_SITE, 9)
    pair.a.group_sent(A_SITE, 3)
    assert pair.a.remote_cursor == {C_SITE: 9, A_SITE: 3}
    early = session(A_SITE)
    early.hello()
    with pytest.raises(LocalProtocolError):
        early.group_sent(C_SITE, 1)  # before the cursors


def test_the_remote_cursor_is_a_read_only_view() -> None:
    pair = ProtocolPair()
    view = pair.a.remote_cursor
    with pytest.raises(TypeError):
        view[C_SITE] = 99  # type: ignore[index]
    with pytest.raises(TypeError):
        pair.a.announced[C_SITE] = 99  # type: ignore[index]
    pair.a.send_changes([change(5)], final=True)
    assert view == {C_SITE: 4, A_SITE: 5}  # a view: it follows the session
