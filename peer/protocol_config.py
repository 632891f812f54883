"""What a :class:`~peer.protocol.SyncSession` is built from: this side's
:class:`Limits` and its :class:`LocalInfo`. Pure data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from peer.messages import MIN_FRAME_BYTES

__all__ = ["Limits", "LocalInfo"]


@dataclass(frozen=True, slots=True)
class Limits:
    """What this side accepts. Every limit is an input, never a constant."""

    max_frame_bytes: int = 8 * 1024 * 1024
    """The largest frame this side accepts (and sends at most); pages are cut
    to fit it. At least 1 KiB."""
    max_batch_rows: int = 5_000
    """Change rows per CHANGES frame this side accepts (and sends at most)."""
    window: int = 4
    """CHANGES frames the other side may have in flight to us."""
    max_value_bytes: int = 256 * 1024 * 1024
    """The largest single value (text in UTF-8, or blob) this side accepts. A
    value larger than a frame arrives in parts and is held whole in memory
    until its row is applied, so this bounds that memory, per session.
    SQLite stores no value over its own length limit (1,000,000,000 bytes
    unless built otherwise), whatever this says."""
    snapshot_threshold: int = 50_000
    """(Sending) A fresh remote that takes snapshots gets one instead of its
    catch-up when the catch-up holds at least this many change rows."""
    max_snapshot_bytes: int = 1 << 40
    """(Receiving) The largest snapshot this side takes, in bytes."""

    def __post_init__(self) -> None:
        if min(self.max_frame_bytes, self.max_batch_rows, self.window, self.max_value_bytes) < 1:
            raise ValueError("limits must be positive")
        if self.snapshot_threshold < 0 or self.max_snapshot_bytes < 1:
            raise ValueError("snapshot limits must be positive")
        if self.max_frame_bytes < MIN_FRAME_BYTES:
            raise ValueError(f"max_frame_bytes must be at least {MIN_FRAME_BYTES}")


@dataclass(frozen=True, slots=True)
class LocalInfo:
    """This side, as its HELLO announces it."""

    site_id: bytes
    name: str
    schema_version: int
    schema_fingerprint: bytes
