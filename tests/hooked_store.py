"""A real Store that calls a test's hooks around what a Peer asks of it.

Passed to a Peer as its ``database``, it stands for a slow disk, a busy read
thread or a recorder, without touching the Peer's internals: the hooks run
on the thread the Peer calls the store from (its store thread for merges and
pages, its read thread for reads of changes to send), so they must be
thread-safe (appending to a list is) and may block that thread.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from peer.store import ApplyResult, Change, LargeGroup, Store

__all__ = ["HookedStore"]


class HookedStore(Store):
    """A Store; set the hooks (attributes) before or while a Peer uses it."""

    def __init__(self, path: str | Path = ":memory:", schema: Sequence[str] = ()) -> None:
        super().__init__(path)
        for statement in schema:
            self.execute(statement)
        self.before_apply: Callable[[Sequence[Change], bool], None] | None = None
        """``hook(changes, in_page)`` before each merge."""
        self.after_next_page: Callable[[list[Change] | LargeGroup], None] | None = None
        """``hook(page)`` after each read of changes to send."""
        self.before_next_page: Callable[[], None] | None = None
        self.after_end_page: Callable[[bool], None] | None = None
        """``hook(commit)`` once a page spanning frames has ended."""
        self.after_change_marker: Callable[[], None] | None = None
        """After each poll for local writes (the Peer's watcher)."""
        self._in_page = False

    def apply(self, changes: Sequence[Change], **options: Any) -> ApplyResult:
        if self.before_apply is not None:
            self.before_apply(changes, self._in_page)
        return super().apply(changes, **options)

    def begin_page(self) -> None:
        super().begin_page()
        self._in_page = True

    def end_page(self, *, commit: bool) -> None:
        self._in_page = False
        super().end_page(commit=commit)
        if self.after_end_page is not None:
            self.after_end_page(commit)

    def next_page(
        self,
        cursor: Mapping[bytes, int],
        limit: int,
        *,
        exclude: Collection[bytes] = (),
        max_bytes: int | None = None,
    ) -> list[Change] | LargeGroup:
        if self.before_next_page is not None:
            self.before_next_page()
        page = super().next_page(cursor, limit, exclude=exclude, max_bytes=max_bytes)
        if self.after_next_page is not None:
            self.after_next_page(page)
        return page

    def change_marker(self) -> tuple[int, int]:
        marker = super().change_marker()
        if self.after_change_marker is not None:
            self.after_change_marker()
        return marker
