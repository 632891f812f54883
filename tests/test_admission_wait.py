"""Admission that has to wait for a page another session holds open says so.

Binding a new site id to a peer id is a write (SessionRegistry.admit), so it
waits while a page spanning frames is open; the wait is logged, not silent.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from peer.peer import Peer
from peer.store import Store
from tests.support import wait_for

SITE = bytes(range(16))


async def test_a_site_claim_waiting_for_an_open_page_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "a.db"
    Store(path).close()
    caplog.set_level(logging.INFO, logger="crpeer.peer")
    async with Peer(path, [], insecure=True) as peer:
        claim = peer._registry._claim_site  # what admit calls after a HELLO
        async with peer._worker.page():  # what a session does for a page spanning frames
            assert peer._worker.page_open
            claiming = asyncio.create_task(claim(SITE, "remote-peer"))
            await wait_for(lambda: peer._worker.waiting_for_page == 1)
            assert "admission of peer remote-peer waits for a page" in caplog.text
            assert not claiming.done()
        assert not peer._worker.page_open
        async with asyncio.timeout(10):
            assert await claiming is None  # bound once the page ended
        caplog.clear()
        assert await claim(SITE, "remote-peer") is None  # no page open: no wait, no line
        assert "waits for a page" not in caplog.text
