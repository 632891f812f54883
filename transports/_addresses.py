"""Transport addresses: ``SCHEME://HOST:PORT[/PATH]`` URLs, IPv6 hosts in brackets.

Pure functions; the one place that writes and reads the address forms every
socket transport uses (``tcp://``, ``ws[s]://``, ``http[s]://``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any
from urllib.parse import SplitResult, urlsplit

from peer.errors import ConfigError

__all__ = ["format_address", "parse_address", "socket_address"]


def format_address(scheme: str, host: str, port: int, path: str = "") -> str:
    """``scheme://host:port`` followed by ``path``; an IPv6 ``host`` goes in brackets."""
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}{path}"


def socket_address(scheme: str, sockname: Sequence[Any], path: str = "") -> str:
    """The address of a socket name (``getsockname()``, ``peername``: host, port, ...)."""
    return format_address(scheme, str(sockname[0]), int(sockname[1]), path)


def parse_address(address: str, schemes: Collection[str], form: str) -> SplitResult:
    """The parts of ``address`` (``urllib.parse.urlsplit``).

    Raises ConfigError unless its scheme is one of ``schemes``, it names a
    host, and its port (if any) is a valid number; ``form`` describes what was
    expected in that error (e.g. ``tcp://HOST:PORT``). The port may be absent:
    callers that need one check ``parts.port``.
    """
    parts = urlsplit(address)
    try:
        parts.port  # noqa: B018 (it validates the port)
    except ValueError as exc:
        raise ConfigError(f"bad port in address {address!r}") from exc
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(f"not a {form} address: {address!r}")
    return parts
