"""The msgpack encoding of the sync protocol's messages (PROTOCOL.md).

:func:`encode` turns a message into a frame; :func:`decode` turns a frame
back into a :class:`Frame`. The messages themselves are the dataclasses of
:mod:`peer.message_types`, re-exported here with its constants, so one
import (``from peer.messages import Hello, decode``) serves a caller.

Every frame is one msgpack array ``[type, frame_number, *fields]``. Decoding
validates everything (types, lengths, ranges, limits) and raises
:class:`~peer.errors.RemoteProtocolError` with the matching
:class:`~peer.errors.ErrorCode`; it never lets a msgpack error escape.

Change rows travel grouped by ``(site_id, version)`` so neither is repeated per
row, with table names interned per frame::

    [3, n, final, [table, ...], [[site_id, version, rows], ...], schema?]
    rows = [[table_index, pk, cid, val, col_version, cl, seq], ...]

``schema`` (protocol 3) is present when some rows may need a newer schema than
the sender's own: rows it holds for a newer schema and serves on.
A value too large for a frame travels ahead of its CHANGES frame in PART
frames; in that frame its ``val`` is :data:`VALUE_IN_PARTS` (protocol 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import msgpack

from peer.changes import MAX_COUNTER, SITE_ID_LENGTH, Change, Cursor
from peer.errors import ErrorCode, RemoteProtocolError
from peer.message_types import (
    FRAME_OVERHEAD,
    HAVE_SINCE,
    MIN_FRAME_BYTES,
    PARTS_SINCE,
    PROTOCOL_MIN,
    PROTOCOL_VERSION,
    SCHEMA_NEEDS_SINCE,
    SNAPSHOT_SINCE,
    V2_MAX_FRAME_BYTES,
    VALUE_IN_PARTS,
    Backlog,
    Changes,
    Close,
    Credit,
    CursorMessage,
    EoseMessage,
    Error,
    Frame,
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
)

__all__ = [
    "FRAME_OVERHEAD",
    "HAVE_SINCE",
    "MAX_CURSOR_ENTRIES",
    "MAX_NAME_LENGTH",
    "MAX_REASON_LENGTH",
    "MIN_FRAME_BYTES",
    "PARTS_SINCE",
    "PROTOCOL_MIN",
    "PROTOCOL_VERSION",
    "SCHEMA_NEEDS_SINCE",
    "SNAPSHOT_SINCE",
    "V2_MAX_FRAME_BYTES",
    "VALUE_IN_PARTS",
    "Backlog",
    "Changes",
    "Close",
    "Credit",
    "CursorMessage",
    "EoseMessage",
    "Error",
    "Frame",
    "Have",
    "Hello",
    "LimitsMessage",
    "Message",
    "MessageType",
    "Part",
    "Ping",
    "Pong",
    "SnapshotEnd",
    "SnapshotPart",
    "decode",
    "encode",
]

SHA256_LENGTH = 32
FINGERPRINT_LENGTH = 16
MAX_NAME_LENGTH = 256
MAX_REASON_LENGTH = 256
MAX_CURSOR_ENTRIES = 100_000
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


# -- encoding -------------------------------------------------------------------


def encode(message: Message, number: int) -> bytes:
    """Encode ``message`` as frame ``number`` of its sender."""
    body: list[Any]
    match message:
        case Hello():
            body = [
                MessageType.HELLO,
                number,
                message.protocol_min,
                message.protocol_max,
                message.site_id,
                message.name,
                message.schema_version,
                message.schema_fingerprint,
                message.max_batch_rows,
                message.window,
                message.nonce,
            ]
        case CursorMessage():
            body = [MessageType.CURSOR, number, _cursor_entries(message.cursor)]
        case Changes():
            changes = message.changes
            if message.parted is not None:
                changes = list(changes)
                row = changes[message.parted]
                changes[message.parted] = cast(Change, (*row[:3], VALUE_IN_PARTS, *row[4:]))
            tables, groups = _group_rows(changes)
            body = [MessageType.CHANGES, number, message.final, tables, groups]
            if message.schema is not None:
                body.append(message.schema)
        case EoseMessage():
            body = [MessageType.EOSE, number]
        case Credit():
            body = [MessageType.CREDIT, number, message.frames]
        case Ping():
            body = [MessageType.PING, number, message.nonce]
        case Pong():
            body = [MessageType.PONG, number, message.nonce]
        case Error():
            body = [
                MessageType.ERROR,
                number,
                int(message.code),
                message.reason[:MAX_REASON_LENGTH],
            ]
        case Close():
            body = [MessageType.CLOSE, number]
        case Backlog():
            body = [MessageType.BACKLOG, number, message.rows]
        case Have():
            body = [MessageType.HAVE, number, _cursor_entries(message.cursor)]
        case LimitsMessage():
            body = [MessageType.LIMITS, number, message.max_frame_bytes, message.max_value_bytes]
            if message.snapshot_bytes:
                body.append(message.snapshot_bytes)
        case Part():
            body = [MessageType.PART, number, message.total, message.text, message.chunk]
        case SnapshotPart():
            body = [MessageType.SNAPSHOT_PART, number, message.total, message.chunk]
        case SnapshotEnd():
            body = [
                MessageType.SNAPSHOT_END,
                number,
                message.size,
                message.sha256,
                _cursor_entries(message.cursor),
            ]
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def _cursor_entries(cursor: Cursor) -> list[list[Any]]:
    return [[site_id, version] for site_id, version in cursor.items()]


def _group_rows(changes: Sequence[Change]) -> tuple[list[str], list[list[Any]]]:
    table_index: dict[str, int] = {}
    groups: list[list[Any]] = []
    rows: list[list[Any]] = []
    current: tuple[bytes, int] | None = None
    for table, pk, cid, val, col_version, version, site_id, cl, seq in changes:
        if (site_id, version) != current:
            current = (site_id, version)
            rows = []
            groups.append([site_id, version, rows])
        index = table_index.setdefault(table, len(table_index))
        rows.append([index, pk, cid, val, col_version, cl, seq])
    return list(table_index), groups


# -- decoding -------------------------------------------------------------------


def _fail(code: ErrorCode, message: str) -> RemoteProtocolError:
    return RemoteProtocolError(code, message)


def _int(value: Any, what: str, low: int = _INT64_MIN, high: int = _INT64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(ErrorCode.MALFORMED_FRAME, f"{what} must be an integer in [{low}, {high}]")
    return value


def _bytes(value: Any, what: str, length: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        raise _fail(ErrorCode.MALFORMED_FRAME, f"{what} must be {length} bytes")
    return value


def _str(value: Any, what: str, max_length: int) -> str:
    if not isinstance(value, str) or len(value) > max_length:
        raise _fail(ErrorCode.MALFORMED_FRAME, f"{what} must be a string of at most {max_length}")
    return value


def _list(value: Any, what: str, max_length: int | None = None) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(ErrorCode.MALFORMED_FRAME, f"{what} must be an array")
    if max_length is not None and len(value) > max_length:
        raise _fail(
            ErrorCode.FRAME_TOO_LARGE, f"{what} has {len(value)} entries, limit {max_length}"
        )
    return value


def _arity(body: list[Any], n: int, what: str) -> None:
    if len(body) != n:
        raise _fail(ErrorCode.MALFORMED_FRAME, f"{what} must have {n} fields, got {len(body)}")


def decode(
    frame: bytes,
    *,
    max_frame_bytes: int,
    max_batch_rows: int,
    max_value_bytes: int | None = None,
) -> Frame:
    """Decode and validate one frame.

    Raises RemoteProtocolError: FRAME_TOO_LARGE past the limits,
    VALUE_TOO_LARGE for a change value longer than ``max_value_bytes``,
    MALFORMED_FRAME for anything that is not a well-formed message.
    """
    if len(frame) > max_frame_bytes:
        raise _fail(
            ErrorCode.FRAME_TOO_LARGE, f"frame of {len(frame)} bytes, limit {max_frame_bytes}"
        )
    try:
        body = msgpack.unpackb(frame, use_list=True, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise _fail(ErrorCode.MALFORMED_FRAME, f"not msgpack: {type(exc).__name__}") from exc
    if not isinstance(body, list) or len(body) < 2:
        raise _fail(ErrorCode.MALFORMED_FRAME, "a frame must be an array [type, number, ...]")
    kind = _int(body[0], "message type", 1, len(MessageType))
    number = _int(body[1], "frame number", 0)
    message = _DECODERS[MessageType(kind)](body, max_batch_rows)
    if max_value_bytes is not None and len(frame) > max_value_bytes and type(message) is Changes:
        # Only a frame longer than the limit can hold a value longer than it.
        _check_value_sizes(message.changes, max_value_bytes)
    return Frame(number, message)


def _check_value_sizes(changes: Sequence[Change], max_value_bytes: int) -> None:
    for change in changes:
        val = change[3]
        size = len(val.encode()) if type(val) is str else len(val) if type(val) is bytes else 0
        if size > max_value_bytes:
            raise _fail(
                ErrorCode.VALUE_TOO_LARGE, f"a value of {size} bytes, limit {max_value_bytes}"
            )


def _decode_hello(body: list[Any], _: int) -> Hello:
    _arity(body, 11, "hello")
    return Hello(
        protocol_min=_int(body[2], "protocol_min", 1, 0xFFFF),
        protocol_max=_int(body[3], "protocol_max", 1, 0xFFFF),
        site_id=_bytes(body[4], "site_id", SITE_ID_LENGTH),
        name=_str(body[5], "name", MAX_NAME_LENGTH),
        schema_version=_int(body[6], "schema_version", -(2**31), 2**31 - 1),
        schema_fingerprint=_bytes(body[7], "schema_fingerprint", FINGERPRINT_LENGTH),
        max_batch_rows=_int(body[8], "max_batch_rows", 1, 10_000_000),
        window=_int(body[9], "window", 1, 1024),
        nonce=_int(body[10], "nonce", 0),
    )


def _version_vector(body: list[Any], what: str) -> Cursor:
    _arity(body, 3, what)
    cursor: Cursor = {}
    for entry in _list(body[2], what, MAX_CURSOR_ENTRIES):
        pair = _list(entry, f"{what} entry")
        _arity([None, None, *pair], 4, f"{what} entry")
        cursor[_bytes(pair[0], f"{what} site_id", SITE_ID_LENGTH)] = _int(
            pair[1], f"{what} version", 0
        )
    return cursor


def _decode_cursor(body: list[Any], _: int) -> CursorMessage:
    return CursorMessage(_version_vector(body, "cursor"))


def _decode_have(body: list[Any], _: int) -> Have:
    return Have(_version_vector(body, "have"))


_VALUE_TYPE_SET = frozenset((type(None), int, float, str, bytes))


def _decode_changes(body: list[Any], max_batch_rows: int) -> Changes:
    schema = None
    if len(body) == 6:
        schema = _int(body.pop(), "changes.schema", 0, 2**31 - 1)
    _arity(body, 5, "changes")
    final = body[2]
    if not isinstance(final, bool):
        raise _fail(ErrorCode.MALFORMED_FRAME, "changes.final must be a boolean")
    tables = [_str(t, "table name", 1024) for t in _list(body[3], "tables", max_batch_rows)]
    changes: list[Change] = []
    parted: int | None = None
    for group in _list(body[4], "groups", max_batch_rows):
        group = _list(group, "group")
        _arity([None, None, *group], 5, "group")
        site_id = _bytes(group[0], "site_id", SITE_ID_LENGTH)
        version = _int(group[1], "version", 1, MAX_COUNTER)
        rows = _list(group[2], "rows", max_batch_rows - len(changes))
        if not rows:
            raise _fail(ErrorCode.MALFORMED_FRAME, "a group must have rows")
        for row in rows:
            if not isinstance(row, list) or len(row) != 7:
                raise _fail(ErrorCode.MALFORMED_FRAME, "a change row must have 7 fields")
            t, pk, cid, val, col_version, cl, seq = row
            # The same checks as peer.changes applies to a row, so the store
            # can skip them for decoded rows (Store.apply(types_checked=True)).
            if not (
                type(t) is int
                and 0 <= t < len(tables)
                and type(pk) is bytes
                and type(cid) is str
                and type(val) in _VALUE_TYPE_SET
                and (type(val) is not int or _INT64_MIN <= val <= _INT64_MAX)
                and type(col_version) is int
                and 0 <= col_version <= MAX_COUNTER
                and type(cl) is int
                and 0 <= cl <= MAX_COUNTER
                and type(seq) is int
                and 0 <= seq <= MAX_COUNTER
            ):
                if (
                    type(val) is not msgpack.ExtType
                    or val != VALUE_IN_PARTS
                    or parted is not None
                    or not _fields_ok(t, pk, cid, col_version, cl, seq, len(tables))
                ):
                    raise _fail(ErrorCode.MALFORMED_FRAME, "a change row has a bad field")
                parted = len(changes)
                changes.append((tables[t], pk, cid, None, col_version, version, site_id, cl, seq))
                continue
            changes.append((tables[t], pk, cid, val, col_version, version, site_id, cl, seq))
    return Changes(changes, final, schema, parted)


def _fields_ok(t: Any, pk: Any, cid: Any, col_version: Any, cl: Any, seq: Any, tables: int) -> bool:
    """The checks of a decoded row besides its value (for a value that came in parts)."""
    return (
        type(t) is int
        and 0 <= t < tables
        and type(pk) is bytes
        and type(cid) is str
        and all(type(n) is int and 0 <= n <= MAX_COUNTER for n in (col_version, cl, seq))
    )


def _decode_nothing(kind: type[EoseMessage] | type[Close]) -> Any:
    def decoder(body: list[Any], _: int) -> EoseMessage | Close:
        _arity(body, 2, kind.__name__.lower())
        return kind()

    return decoder


def _decode_credit(body: list[Any], _: int) -> Credit:
    _arity(body, 3, "credit")
    return Credit(_int(body[2], "credit", 1, 1024))


def _decode_backlog(body: list[Any], _: int) -> Backlog:
    _arity(body, 3, "backlog")
    return Backlog(_int(body[2], "backlog rows", 0))


def _decode_ping(body: list[Any], _: int) -> Ping:
    _arity(body, 3, "ping")
    return Ping(_int(body[2], "ping nonce", 0))


def _decode_pong(body: list[Any], _: int) -> Pong:
    _arity(body, 3, "pong")
    return Pong(_int(body[2], "pong nonce", 0))


def _decode_limits(body: list[Any], _: int) -> LimitsMessage:
    snapshot_bytes = 0
    if len(body) == 5:
        snapshot_bytes = _int(body.pop(), "snapshot_bytes", 1)
    _arity(body, 4, "limits")
    return LimitsMessage(
        max_frame_bytes=_int(body[2], "max_frame_bytes", MIN_FRAME_BYTES),
        max_value_bytes=_int(body[3], "max_value_bytes", 1),
        snapshot_bytes=snapshot_bytes,
    )


def _decode_snapshot_part(body: list[Any], _: int) -> SnapshotPart:
    _arity(body, 4, "snapshot part")
    if not isinstance(body[3], bytes) or not body[3]:
        raise _fail(ErrorCode.MALFORMED_FRAME, "snapshot part chunk must be non-empty bytes")
    return SnapshotPart(_int(body[2], "snapshot total", 1), body[3])


def _decode_snapshot_end(body: list[Any], _: int) -> SnapshotEnd:
    _arity(body, 5, "snapshot end")
    size = _int(body[2], "snapshot size", 1)
    sha256 = _bytes(body[3], "snapshot sha256", SHA256_LENGTH)
    cursor = _version_vector([None, None, body[4]], "snapshot cursor")
    return SnapshotEnd(size, sha256, cursor)


def _decode_part(body: list[Any], _: int) -> Part:
    _arity(body, 5, "part")
    if not isinstance(body[3], bool):
        raise _fail(ErrorCode.MALFORMED_FRAME, "part.text must be a boolean")
    if not isinstance(body[4], bytes) or not body[4]:
        raise _fail(ErrorCode.MALFORMED_FRAME, "part.chunk must be non-empty bytes")
    return Part(_int(body[2], "part total", 1), body[3], body[4])


def _decode_error(body: list[Any], _: int) -> Error:
    _arity(body, 4, "error")
    raw_code = _int(body[2], "error code", 0, 0xFFFF)
    try:
        code = ErrorCode(raw_code)
    except ValueError:
        code = ErrorCode.INTERNAL
    return Error(code, _str(body[3], "error reason", MAX_REASON_LENGTH))


_DECODERS: dict[MessageType, Any] = {
    MessageType.HELLO: _decode_hello,
    MessageType.CURSOR: _decode_cursor,
    MessageType.CHANGES: _decode_changes,
    MessageType.EOSE: _decode_nothing(EoseMessage),
    MessageType.CREDIT: _decode_credit,
    MessageType.PING: _decode_ping,
    MessageType.PONG: _decode_pong,
    MessageType.ERROR: _decode_error,
    MessageType.CLOSE: _decode_nothing(Close),
    MessageType.BACKLOG: _decode_backlog,
    MessageType.HAVE: _decode_have,
    MessageType.LIMITS: _decode_limits,
    MessageType.PART: _decode_part,
    MessageType.SNAPSHOT_PART: _decode_snapshot_part,
    MessageType.SNAPSHOT_END: _decode_snapshot_end,
}
