"""A child process that feeds hostile change rows to a real Store.

Run as ``python -m tests.change_fuzz_worker [database path]``. It opens a Store
(in memory unless given a path)
with :data:`SCHEMA` (every kind of primary key cr-sqlite takes), writes one
row of its own, then reads frames from stdin: a 4-byte big-endian length and
a msgpack list of batches, each a list of change rows. Each batch goes to
``Store.apply`` whole; a batch refused whole is then applied row by row, so
every row that passes the checks reaches the extension. After each frame it
writes back a frame: ``[merged, refused, rejected_by_db, unexpected]``, the
last being a list of ``"Type: message"`` for any error that is not a
:class:`~peer.errors.CrpeerError` or that left the database broken (its own
row gone, or ``PRAGMA integrity_check`` failing). EOF on stdin ends it with
exit status 0. If the extension aborts, the process dies with a signal and
the parent sees it.
"""

from __future__ import annotations

import struct
import sys
from typing import IO, Any

import msgpack

from peer.errors import CrpeerError, InvalidChangeError
from peer.store import Store

SCHEMA = """
CREATE TABLE notes (id TEXT PRIMARY KEY NOT NULL, body TEXT);
CREATE TABLE items (id INTEGER PRIMARY KEY NOT NULL, name TEXT, score INTEGER);
CREATE TABLE tags (item INTEGER NOT NULL, tag TEXT NOT NULL, note TEXT, PRIMARY KEY (item, tag));
CREATE TABLE files (k BLOB PRIMARY KEY NOT NULL, size INTEGER NOT NULL DEFAULT 0)
    WITHOUT ROWID;
CREATE TABLE points (x REAL NOT NULL, y NUMERIC NOT NULL, label, PRIMARY KEY (x, y));
CREATE TABLE strict_kv (a INT NOT NULL, b TEXT NOT NULL, c ANY NOT NULL, v BLOB,
    PRIMARY KEY (a, b, c)) STRICT;
"""
TABLES = ("notes", "items", "tags", "files", "points", "strict_kv")
_FRAME = struct.Struct(">I")


def read_frame(stream: IO[bytes]) -> Any | None:
    """One length-prefixed msgpack frame, or None at EOF."""
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    (size,) = _FRAME.unpack(head)
    body = stream.read(size)
    return msgpack.unpackb(body, raw=False, unicode_errors="surrogatepass", strict_map_key=False)


def write_frame(stream: IO[bytes], value: Any) -> None:
    body = msgpack.packb(value, use_bin_type=True, unicode_errors="surrogatepass")
    stream.write(_FRAME.pack(len(body)) + body)
    stream.flush()


def _apply(store: Store, rows: list[Any], counts: list[Any]) -> bool:
    """Apply ``rows``; count the outcome; False when refused before the database."""
    try:
        store.apply(rows, hold_unknown=True)
    except InvalidChangeError as exc:
        if str(exc).startswith("batch rejected by the database"):
            counts[2] += len(rows)
            return True
        return False
    except CrpeerError:
        counts[2] += len(rows)
        return True
    except Exception as exc:
        counts[3].append(f"{type(exc).__name__}: {exc}")
        return True
    counts[0] += len(rows)
    return True


def main() -> int:
    store = Store(sys.argv[1] if len(sys.argv) > 1 else ":memory:")
    store.executescript(SCHEMA)
    store.make_crr(*TABLES)
    store.execute("INSERT INTO notes VALUES ('own', 'kept')")
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while (batches := read_frame(stdin)) is not None:
        counts: list[Any] = [0, 0, 0, []]
        for batch in batches:
            rows = [tuple(row) if isinstance(row, list) else row for row in batch]
            if _apply(store, rows, counts):
                continue
            if len(rows) == 1:
                counts[1] += 1
                continue
            for row in rows:
                if not _apply(store, [row], counts):
                    counts[1] += 1
        if store.execute("SELECT body FROM notes WHERE id = 'own'") != [("kept",)]:
            counts[3].append("the worker's own row is gone")
        write_frame(stdout, counts)
    (check,) = store.execute("PRAGMA integrity_check")[0]
    store.close()
    return 0 if check == "ok" else 3


if __name__ == "__main__":
    sys.exit(main())
