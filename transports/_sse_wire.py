"""The HTTP/SSE session's wire format, without I/O (see ``transports.http_sse``).

Both ends use it: the header names, the session offer (``POST .../sessions``
answer), and the event stream (one event per frame, heartbeats, the close
event) with its incremental parser.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from peer.errors import ChannelClosed, FrameTooLarge

__all__ = [
    "ACK",
    "CLOSE_EVENT",
    "HEARTBEAT",
    "SEQ",
    "EventParser",
    "encode_event",
    "encode_offer",
    "parse_offer",
]

SEQ = "Crpeer-Seq"
"""Header numbering each client-to-server frame (1, 2, 3...)."""
ACK = "Crpeer-Ack"
"""Header of an acknowledgement: every frame up to this number was consumed."""
HEARTBEAT = b":\n\n"
CLOSE_EVENT = b"event: close\ndata:\n\n"


def encode_event(entry: tuple[int, bytes]) -> bytes:
    """One frame as an event: ``id: NUMBER`` and ``data: BASE64``."""
    return b"id: %d\ndata: %s\n\n" % (entry[0], base64.b64encode(entry[1]))


def encode_offer(session: str, window: int, heartbeat: float) -> str:
    """The JSON body of a ``201`` answer to ``POST .../sessions``."""
    return json.dumps({"session": session, "window": window, "heartbeat": heartbeat})


def parse_offer(answer: Any) -> tuple[str, int, float]:
    """(session id, window, heartbeat) from a ``POST /sessions`` answer; ValueError if malformed."""
    if not isinstance(answer, dict):
        raise ValueError("the session offer is not an object")
    session, window, heartbeat = (
        answer.get("session"),
        answer.get("window"),
        answer.get("heartbeat"),
    )
    if not (
        isinstance(session, str)
        and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", session)
        and isinstance(window, int)
        and isinstance(heartbeat, int | float)
        and heartbeat > 0
    ):
        raise ValueError(f"malformed session offer {answer!r:.200}")
    return session, window, float(heartbeat)


class EventParser:
    """Splits an event stream into ``(id, frame)``; ``(-1, b"")`` is the close
    event. A line longer than a max_frame event raises FrameTooLarge, a
    malformed event ChannelClosed."""

    def __init__(self, max_frame: int) -> None:
        self.set_limit(max_frame)
        self._buffer = bytearray()
        self._scanned = 0  # no newline in _buffer[:_scanned]
        self._fields: dict[bytes, bytes] = {}

    def set_limit(self, max_frame: int) -> None:
        """Accept events of up to ``max_frame`` bytes (decoded) from now on."""
        self._max_frame = max_frame
        self._max_line = len(b"data: ") + 4 * -(-max_frame // 3)

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        """The events completed by ``chunk``, in order."""
        self._buffer += chunk
        events, start = [], 0
        while (end := self._buffer.find(b"\n", max(start, self._scanned))) >= 0:
            line, start = bytes(self._buffer[start:end]).rstrip(b"\r"), end + 1
            if line and not line.startswith(b":"):
                name, _, value = line.partition(b":")
                self._fields[name] = value.removeprefix(b" ")
            elif not line and self._fields:
                events.append(self._dispatch())
        del self._buffer[:start]
        self._scanned = len(self._buffer)
        if self._scanned > self._max_line:
            raise FrameTooLarge(f"event stream line over {self._max_line} bytes")
        return events

    def _dispatch(self) -> tuple[int, bytes]:
        fields, self._fields = self._fields, {}
        if fields.get(b"event") == b"close":
            return -1, b""
        try:
            number, frame = int(fields[b"id"]), base64.b64decode(fields[b"data"], validate=True)
        except (KeyError, ValueError) as exc:
            raise ChannelClosed("malformed event in the event stream") from exc
        if len(frame) > self._max_frame:
            raise FrameTooLarge(f"event of {len(frame)} bytes exceeds {self._max_frame}")
        return number, frame
