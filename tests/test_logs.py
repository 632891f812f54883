"""``--log-format json``: one JSON object per line, session lines with peer id and label."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from peer import events
from peer.cli_events import EventPrinter
from peer.cli_logs import SERVE_LOGGER, JsonFormatter
from peer.errors import ChannelClosed, UntrustedPeerError
from peer.pairing import format_peer_id, peer_id_from_public_key
from tests.support import wait_until
from tests.test_cli import Serve, ok, two_databases

BEE = peer_id_from_public_key(b"\x0b" * 32)
STRANGER = peer_id_from_public_key(b"\x0c" * 32)


@pytest.fixture
def records() -> Iterator[io.StringIO]:
    """What the serve logger writes, formatted as JSON lines."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(SERVE_LOGGER)
    old = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield out
    finally:
        log.removeHandler(handler)
        log.setLevel(old)


def parsed(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_session_start_end_refusal_and_error_are_one_record_each(
    records: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = {BEE: "bee"}
    printer = EventPrinter(
        as_json=False,
        console=Console(file=io.StringIO()),
        labels=lambda peer_id: labels.get(peer_id, ""),
        log=logging.getLogger(SERVE_LOGGER),
    )
    printer.listening(
        {"database": "a.db", "peer_id": BEE, "addresses": ["tcp://127.0.0.1:4000"], "lan": False}
    )
    remote = events.RemotePeer(b"\x01" * 16, "b", "127.0.0.1:5000", "tcp", True, BEE)
    printer.on_event(events.Connected(remote))
    printer.on_event(events.Disconnected(remote, ChannelClosed("reset by peer")))
    printer.on_event(
        events.SessionFailed(
            None,
            "127.0.0.1:6000",
            UntrustedPeerError(f"peer {format_peer_id(STRANGER)} is not trusted"),
        )
    )
    printer.error("a.db is damaged")
    assert capsys.readouterr().out == ""  # the lines went to the log, not stdout
    lines = parsed(records)
    assert [(r["event"], r["level"]) for r in lines] == [
        ("listening", "info"),
        ("connected", "info"),
        ("disconnected", "warning"),
        ("refused", "warning"),
        ("error", "error"),
    ]
    for record in lines:
        assert {"time", "level", "logger", "message"} <= set(record)
        assert record["logger"] == SERVE_LOGGER
    connected, disconnected, refused = lines[1:4]
    assert connected["peer_id"] == BEE
    assert connected["label"] == "bee"
    assert connected["address"] == "127.0.0.1:5000"
    assert "bee" in connected["message"]
    assert (disconnected["peer_id"], disconnected["label"]) == (BEE, "bee")
    assert "reset by peer" in disconnected["message"]
    assert refused["peer_id"] == STRANGER
    assert "label" not in refused  # not in the trust store: no label
    assert refused["address"] == "127.0.0.1:6000"


def test_events_on_stdout_and_session_records_on_the_log_together(
    records: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    printer = EventPrinter(
        as_json=True, console=Console(file=io.StringIO()), log=logging.getLogger(SERVE_LOGGER)
    )
    printer.listening({"database": "a.db", "peer_id": None, "addresses": [], "lan": False})
    remote = events.RemotePeer(b"\x01" * 16, "b", "127.0.0.1:5000", "tcp", False, BEE)
    printer.on_event(events.Connected(remote))
    stdout = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["event"] for line in stdout] == ["listening", "connected"]
    assert [r["event"] for r in parsed(records)] == ["listening", "connected"]


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every stderr line of a serve, each of which must be one JSON object."""
    lines = path.read_text(encoding="utf-8").splitlines()
    documents = [json.loads(line) for line in lines]
    assert all(
        isinstance(d, dict) and {"time", "level", "logger", "message"} <= set(d) for d in documents
    )
    return documents


@pytest.mark.timeout(240)
def test_serve_logs_sessions_and_refusals_as_json(tmp_path: Path) -> None:
    a, b = two_databases(tmp_path)
    c = tmp_path / "c.db"
    ok("init", c)
    id_a, id_b, id_c = (json.loads(ok("id", db, "--json").stdout)["peer_id"] for db in (a, b, c))
    ok("trust", "add", a, id_b, "--label", "bee")
    ok("trust", "add", b, id_a, "--label", "ay")
    ok("trust", "add", c, id_a, "--label", "ay")  # c trusts a; a does not trust c
    loopback = ("--no-lan", "--tcp", "127.0.0.1:0", "--log-format", "json")
    serves: list[Serve] = []

    def logged(event: str, peer_id: str) -> list[dict[str, Any]]:
        return [
            r
            for r in json_lines(serves[0].err)
            if r.get("event") == event and r.get("peer_id") == peer_id
        ]

    try:
        serves.append(Serve(tmp_path, a, *loopback))
        address = serves[0].listening()
        serves.append(Serve(tmp_path, b, *loopback, "--connect", address))
        wait_until(lambda: bool(logged("connected", id_b)), within=20, interval=0.1)
        serves.append(Serve(tmp_path, c, *loopback, "--connect", address))
        wait_until(lambda: bool(logged("refused", id_c)), within=20, interval=0.1)
        assert serves[1].stop() == 0
        wait_until(lambda: bool(logged("disconnected", id_b)), within=20, interval=0.1)
        assert serves[0].stop() == 0
        connected = logged("connected", id_b)[0]
        assert (connected["level"], connected["label"]) == ("info", "bee")
        assert logged("disconnected", id_b)[0]["label"] == "bee"
        assert logged("refused", id_c)[0]["level"] == "warning"
        listening = [r for r in json_lines(serves[0].err) if r.get("event") == "listening"]
        assert listening[0]["peer_id"] == id_a
        assert json_lines(serves[1].err)  # b's log is JSON too
        warnings = [r["message"] for r in json_lines(serves[2].err) if r["level"] == "warning"]
        assert any("has no replicated tables" in w for w in warnings)  # c's, as JSON too
    finally:
        for serve in serves:
            if serve.process.poll() is None:
                serve.process.kill()
                serve.process.wait()
