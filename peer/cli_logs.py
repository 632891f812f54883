"""``crpeer serve --log-format text|json``: the node's log on stderr.

``text`` (the default) is for people: warnings and errors as ``crpeer:
warning: ...`` lines on stderr, and the node's events as the lines
:class:`~peer.cli_events.EventPrinter` prints on stdout. ``json`` is for
machines (journald, a log shipper): every log record, and every line the
event printer would print, is one JSON object on stderr::

    {"time": "2026-01-01T12:00:00.000+00:00", "level": "info", "logger": "crpeer.serve",
     "message": "connected from laptop (NTG4OCI-...) (127.0.0.1:50000)",
     "event": "connected", "peer_id": "NTG4OCI...", "label": "laptop", "address": "127.0.0.1:50000"}

``peer_id``, ``label``, ``address`` and ``event`` appear where they are
known. Session starts and ends, refusals and errors are always logged
(level info, warning or error), with or without ``-v``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable

from peer.cli_common import _StderrHandler

__all__ = ["LOG_FIELDS", "LOG_FORMATS", "SERVE_LOGGER", "JsonFormatter", "use_log_format"]

LOG_FORMATS = ("text", "json")
SERVE_LOGGER = "crpeer.serve"
"""The logger the event printer writes to in the ``json`` format."""
LOG_FIELDS = ("event", "peer_id", "label", "address")
"""Extra fields a record may carry (``logger.info(..., extra={...})``)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the
    :data:`LOG_FIELDS` the record carries; ``error`` holds a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in LOG_FIELDS:
            value = record.__dict__.get(field)
            if value not in (None, ""):
                document[field] = value
        if record.exc_info:
            document["error"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False, default=str)


def use_log_format(log_format: str) -> Callable[[], None]:
    """Switch stderr logging to ``log_format`` (one of :data:`LOG_FORMATS`).

    For ``json``: the stderr handler the CLI installed formats JSON, and
    :data:`SERVE_LOGGER` writes its info records (the session lines) to
    stderr whatever ``-v`` says. Returns a function that undoes it.
    """
    if log_format != "json":
        return lambda: None
    formatter = JsonFormatter()
    root = logging.getLogger()
    handlers = [h for h in root.handlers if isinstance(h, _StderrHandler)]
    previous = [h.formatter for h in handlers]
    for handler in handlers:
        handler.setFormatter(formatter)
    serve_log = logging.getLogger(SERVE_LOGGER)
    own = _StderrHandler(logging.INFO)
    own.setFormatter(formatter)
    old_level, old_propagate = serve_log.level, serve_log.propagate
    serve_log.addHandler(own)
    serve_log.setLevel(logging.INFO)
    serve_log.propagate = False

    def undo() -> None:
        serve_log.removeHandler(own)
        serve_log.setLevel(old_level)
        serve_log.propagate = old_propagate
        for handler, old in zip(handlers, previous, strict=True):
            handler.setFormatter(old)

    return undo
