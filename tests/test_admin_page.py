"""``crpeer serve --admin``: the API against the CLI's JSON, and the page in a real browser.

Two ``crpeer serve`` processes on loopback, trusting each other; the first
runs the admin listener. The browser test drives Debian's Chromium with
Playwright (``executable_path``: Playwright's own browser download is not
used) and skips, saying why, where Chromium is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import wait_until
from tests.test_cli import Serve, ok, two_databases, usage_error

CHROMIUM = os.environ.get("CRPEER_CHROMIUM", "/usr/bin/chromium")
LOOPBACK = ("--no-lan", "--tcp", "127.0.0.1:0")


@dataclass
class Pair:
    a: Path
    b: Path
    id_a: str
    id_b: str
    admin: str
    """The admin listener of ``a``: ``http://127.0.0.1:PORT/``."""


@contextmanager
def two_serves(tmp_path: Path) -> Iterator[Pair]:
    """``a`` (with ``--admin``) and ``b`` dialing it; b is "laptop" in a's trust store."""
    a, b = two_databases(tmp_path)
    id_a = json.loads(ok("id", a, "--json").stdout)["peer_id"]
    id_b = json.loads(ok("id", b, "--json").stdout)["peer_id"]
    ok("trust", "add", a, id_b, "--label", "laptop")
    ok("trust", "add", b, id_a, "--label", "desk")
    serves: list[Serve] = []
    try:
        serves.append(Serve(tmp_path, a, *LOOPBACK, "--admin", "127.0.0.1:0"))
        address = serves[0].listening()
        admin: str = serves[0].lines()[0]["admin"]
        assert serves[0].lines()[0]["admin_token_file"] is None
        serves.append(Serve(tmp_path, b, *LOOPBACK, "--connect", address))
        serves[1].listening()
        yield Pair(a, b, id_a, id_b, admin)
        codes = [serve.stop() for serve in serves]
        assert codes == [0, 0], [s.err.read_text() for s in serves]
    finally:
        for serve in serves:
            if serve.process.poll() is None:
                serve.process.kill()
                serve.process.wait()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def live_session(pair: Pair) -> bool:
    sessions = get_json(pair.admin + "api/status")["sessions"]
    return [(s["peer_id"], s["state"], s["classification"]) for s in sessions] == [
        (pair.id_b, "live", "in_sync")
    ]


_STABLE_SESSION = ("remote_name", "site_id", "peer_id", "address", "transport", "inbound")


def stable(document: dict[str, Any]) -> dict[str, Any]:
    """A status document without what changes from one second to the next."""
    return {
        **{k: v for k, v in document.items() if k not in {"serve", "sessions", "wal"}},
        "wal": sorted(document["wal"]),  # its size moves; which fields it has does not
        "serve": {k: document["serve"][k] for k in ("state", "pid", "listen")},
        "sessions": [
            {k: s[k] for k in (*_STABLE_SESSION, "state", "classification", "lag")}
            for s in document["sessions"]
        ],
    }


@pytest.mark.timeout(180)
def test_the_api_says_what_the_cli_says(tmp_path: Path) -> None:
    with two_serves(tmp_path) as pair:
        ok("sql", pair.b, "INSERT INTO notes VALUES (1, 'typed on b', 0)")
        wait_until(lambda: live_session(pair), within=20, interval=0.1)

        def same_status() -> bool:
            cli = json.loads(ok("status", pair.a, "--json").stdout)
            api = get_json(pair.admin + "api/status")
            return cli["serve"]["state"] == "running" and stable(cli) == stable(api)

        wait_until(same_status, within=20, interval=0.1)
        cli = json.loads(ok("status", pair.a, "--json").stdout)
        api = get_json(pair.admin + "api/status")
        assert api.keys() == cli.keys()
        assert api["serve"].keys() == cli["serve"].keys()
        assert [s.keys() for s in api["sessions"]] == [s.keys() for s in cli["sessions"]]
        wait_until(
            lambda: (
                get_json(pair.admin + "api/peers")
                == json.loads(ok("peers", pair.a, "--json").stdout)
            ),
            within=20,
            interval=0.1,
        )
        peers = get_json(pair.admin + "api/peers")
        assert [(p["peer_id"], p["label"], p["connected"]) for p in peers["peers"]] == [
            (pair.id_b, "laptop", True)
        ]


@pytest.mark.timeout(180)
def test_the_status_page_in_chromium(tmp_path: Path) -> None:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with two_serves(tmp_path) as pair, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            console_errors: list[str] = []
            page.on(
                "console",
                lambda message: (
                    console_errors.append(message.text) if message.type == "error" else None
                ),
            )
            page.goto(pair.admin)
            row = page.locator(
                f'#peers tr[data-peer-id="{pair.id_b}"][data-connected="true"]'
                '[data-state="live"][data-classification="in_sync"]'
            )
            row.wait_for(timeout=30_000)
            assert "laptop" in row.inner_text()
            assert page.locator("#node-lan").inner_text() == "off"
            peer_id = page.locator("#node-peer-id").inner_text()
            assert peer_id.replace("-", "") == pair.id_a

            ok("sql", pair.b, "INSERT INTO notes VALUES (7, 'typed on b', 0)")
            event = page.locator('#events li[data-event="changed"]', has_text="laptop")
            event.first.wait_for(timeout=30_000)
            assert "notes" in event.first.inner_text()
            assert page.locator('#events li[data-event="connected"]').count() >= 1  # replayed
            line = page.locator("#lag-chart polyline").first
            # The page keeps polling: the lag chart grows (no eval: the page's CSP forbids it).
            wait_until(
                lambda: len((line.get_attribute("points") or "").split()) >= 4,
                within=20,
                interval=0.1,
            )
            assert page.locator("#connection").inner_text() == "live"
            page.screenshot(path=tmp_path / "admin-page.png", full_page=True)
            assert (tmp_path / "admin-page.png").stat().st_size > 10_000
            if os.environ.get("CRPEER_SCREENSHOT_TO"):
                shutil.copy(tmp_path / "admin-page.png", os.environ["CRPEER_SCREENSHOT_TO"])
            assert console_errors == []
        finally:
            browser.close()


@pytest.mark.timeout(120)
def test_serve_admin_options(tmp_path: Path) -> None:
    a, _ = two_databases(tmp_path)
    usage_error("serve", a, "--admin", "nonsense", match="is not HOST:PORT")
    usage_error("serve", a, "--admin", "8484", "--admin-token", "never", match="'never'")
    serve = Serve(tmp_path, a, *LOOPBACK, "--insecure", "--admin", "0", "--admin-token", "required")
    try:
        serve.listening()
        banner = serve.lines()[0]
        assert banner["admin"].startswith("http://127.0.0.1:")  # a bare port: loopback
        token_file = Path(banner["admin_token_file"])
        assert token_file == Path(f"{a}.admin-token")
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        with pytest.raises(urllib.error.HTTPError) as refused:
            get_json(banner["admin"] + "api/status")
        assert refused.value.code == 401
        refused.value.close()
        token = token_file.read_text().strip()
        request = urllib.request.Request(
            banner["admin"] + "metrics", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert b"crpeer_db_version" in response.read()
        assert serve.stop() == 0
    finally:
        if serve.process.poll() is None:
            serve.process.kill()
            serve.process.wait()


@pytest.mark.timeout(120)
def test_the_page_behind_a_token_in_chromium(tmp_path: Path) -> None:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    a, _ = two_databases(tmp_path)
    serve = Serve(tmp_path, a, *LOOPBACK, "--insecure", "--admin", "0", "--admin-token", "required")
    try:
        serve.listening()
        banner = serve.lines()[0]
        token = Path(banner["admin_token_file"]).read_text().strip()
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                page = browser.new_page()
                page.goto(banner["admin"])
                page.locator("#login").wait_for(state="visible", timeout=30_000)
                assert page.locator("#node-site-id").text_content() == "\u2013"  # nothing yet
                page.fill("#token", "not-the-token-not-the-token")
                page.click("#login button")
                page.locator("#login-error", has_text="wrong token").wait_for(timeout=30_000)
                page.fill("#token", token)
                page.click("#login button")
                page.locator("#login").wait_for(state="hidden", timeout=30_000)
                site = page.locator("#node-site-id", has_text=banner["site_id"])
                site.wait_for(timeout=30_000)
                assert page.locator("#node-peer-id").inner_text() == "(insecure: no peer id)"
                # The event stream authenticates with the cookie the login set.
                page.locator("#connection", has_text="live").wait_for(timeout=30_000)
            finally:
                browser.close()
        assert serve.stop() == 0
    finally:
        if serve.process.poll() is None:
            serve.process.kill()
            serve.process.wait()
