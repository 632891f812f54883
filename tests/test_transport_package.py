"""The ``transports`` package surface: lazy exports, and the one address format."""

from __future__ import annotations

import subprocess
import sys

import pytest

import transports
from peer.errors import ConfigError
from transports._addresses import format_address, parse_address, socket_address
from transports.tcp import TcpTransport


def test_importing_the_package_loads_no_transport_library() -> None:
    code = (
        "import sys, transports\n"
        "heavy = {'aiohttp', 'websockets', 'zeroconf'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_every_export_resolves() -> None:
    for name in transports.__all__:
        assert getattr(transports, name) is not None
    assert transports.TcpTransport is TcpTransport
    with pytest.raises(AttributeError):
        _ = transports.NoSuchTransport


@pytest.mark.parametrize(
    ("host", "path", "address"),
    [
        ("127.0.0.1", "", "tcp://127.0.0.1:9"),
        ("::1", "", "tcp://[::1]:9"),
        ("fe80::1%eth0", "/crpeer", "tcp://[fe80::1%eth0]:9/crpeer"),
        ("example.org", "/crpeer", "tcp://example.org:9/crpeer"),
    ],
)
def test_format_address(host: str, path: str, address: str) -> None:
    assert format_address("tcp", host, 9, path) == address
    assert socket_address("tcp", (host, 9, 0, 0), path) == address


def test_parse_address() -> None:
    parts = parse_address("ws://[::1]:80/crpeer", ("ws", "wss"), "ws://")
    assert (parts.scheme, parts.hostname, parts.port, parts.path) == ("ws", "::1", 80, "/crpeer")
    assert parse_address("http://h/p", ("http",), "http://").port is None
    for bad in ("ws://h:99999/p", "ws://h:x/p", "ws:///p", "tcp://h:1", "h:1"):
        with pytest.raises(ConfigError):
            parse_address(bad, ("ws", "wss"), "ws://")
