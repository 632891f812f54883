"""``crpeer serve --config FILE`` and ``crpeer config check FILE``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from peer.cli import cli
from peer.cli_config import load_config
from peer.cli_serve import serve
from peer.errors import ConfigError
from peer.protocol import Limits

FULL = """\
# every key serve knows
database = "notes.db"
tcp = "127.0.0.1:4000"
ws = "127.0.0.1:4001"
http = "127.0.0.1:4002"
lan = false
snapshot = false
connect = ["tcp://127.0.0.1:5000", "ws://127.0.0.1:5001/crpeer"]
insecure = false
name = "laptop"
json = true
status_interval = 0.5
log_format = "json"
wal_limit = 1048576
admin = "127.0.0.1:9000"

[limits]
max_frame_bytes = 65536
max_batch_rows = 100
window = 2
"""


def write(tmp_path: Path, text: str, name: str = "crpeer.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def check(path: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["config", "check", os.fspath(path)], prog_name="crpeer")
    return result.exit_code, result.stdout + result.stderr


def serve_params(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The values serve would run with: click parses ``args`` (and the file) for real."""
    old = {key: os.environ.get(key) for key in (env or {})}
    os.environ.update(env or {})
    try:
        with serve.make_context("serve", list(args)) as ctx:
            return dict(ctx.params)
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_a_full_config_file_checks_ok(tmp_path: Path) -> None:
    code, output = check(write(tmp_path, FULL))
    assert code == 0, output
    assert "ok" in output


def test_the_file_gives_every_option_and_flags_override_it(tmp_path: Path) -> None:
    config = write(tmp_path, FULL)
    params = serve_params("--config", os.fspath(config))
    assert params["database"] == tmp_path / "notes.db"  # relative to the file
    assert params["tcp"] == ("127.0.0.1", 4000)
    assert params["ws"] == ("127.0.0.1", 4001)
    assert params["http"] == ("127.0.0.1", 4002)
    assert params["lan"] is False
    assert params["snapshot"] is False
    assert params["connect"] == ("tcp://127.0.0.1:5000", "ws://127.0.0.1:5001/crpeer")
    assert params["name"] == "laptop"
    assert params["as_json"] is True
    assert params["status_interval"] == 0.5
    assert params["log_format"] == "json"
    assert params["wal_limit"] == 1 << 20
    limits = Limits(params["max_frame_bytes"], params["max_batch_rows"], params["window"])
    assert limits == Limits(65536, 100, 2)

    other = tmp_path / "other.db"
    params = serve_params(
        os.fspath(other),
        "--config",
        os.fspath(config),
        "--tcp",
        "127.0.0.1:7000",
        "--lan",
        "--connect",
        "tcp://127.0.0.1:6000",
        "--log-format",
        "text",
        "--window",
        "8",
    )
    assert params["database"] == other
    assert params["tcp"] == ("127.0.0.1", 7000)
    assert params["lan"] is True
    assert params["connect"] == ("tcp://127.0.0.1:6000",)
    assert params["log_format"] == "text"
    assert params["window"] == 8
    assert params["name"] == "laptop"  # not overridden: still the file's


def test_crpeer_config_names_the_file_when_no_option_does(tmp_path: Path) -> None:
    config = write(tmp_path, 'database = "/srv/notes.db"\nlan = false\n')
    params = serve_params(env={"CRPEER_CONFIG": os.fspath(config)})
    assert params["database"] == Path("/srv/notes.db")
    assert params["lan"] is False
    params = serve_params("--log-format", "json", env={"CRPEER_CONFIG": os.fspath(config)})
    assert params["log_format"] == "json"


def test_without_a_file_the_defaults_are_unchanged(tmp_path: Path) -> None:
    params = serve_params(os.fspath(tmp_path / "a.db"))
    assert params["tcp"] == ("0.0.0.0", 0)
    assert params["lan"] is True
    assert params["log_format"] == "text"
    assert Limits(params["max_frame_bytes"], params["max_batch_rows"], params["window"]) == (
        Limits()
    )


@pytest.mark.parametrize(
    ("text", "where", "says"),
    [
        ('lan = false\ncolour = "red"\n', ":2: colour:", "unknown key"),
        ("lan = false\n\n[limits]\nwindow = 2\nburst = 3\n", ":5: limits.burst:", "unknown key"),
        ("tcp = 4000\n", ":1: tcp:", 'must be a "HOST:PORT" string, not an integer'),
        ('lan = "no"\n', ":1: lan:", "must be true or false, not a string"),
        ("status_interval = true\n", ":1: status_interval:", "not a boolean"),
        ('[limits]\nwindow = "4"\n', ":2: limits.window:", "not a string"),
        ("limits.window = 0\n", ":1: limits.window:", "at least 1"),
        ("limits = 3\n", ":1: limits:", "must be a table"),
        ('lan = true\nlimits = { window = "2" }\n', ":2: limits.window:", "not a string"),
        ('log_format = "xml"\n', ":1: log_format:", "must be one of 'text', 'json'"),
        ('\n\nws = "localhost:99999"\n', ":3: ws:", "out of range"),
        ('connect = ["tcp://h:1", 5]\n', ":1: connect:", "not a list of an integer"),
        ('connect = [\n  "ftp://x",\n]\n', ":1: connect:", "is not a URL"),
        ("wal_limit = -1\n", ":1: wal_limit:", "at least 0"),
        ("lan = \n", "", "not valid TOML: Invalid value (at line 1, column 7)"),
    ],
)
def test_bad_files_fail_with_the_line_and_the_key(
    tmp_path: Path, text: str, where: str, says: str
) -> None:
    path = write(tmp_path, text)
    code, output = check(path)
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"crpeer: error: {path}{where}"), lines
    assert says in lines[0], lines
    with pytest.raises(ConfigError, match=r"crpeer\.toml"):
        load_config(path)


def test_serve_refuses_a_bad_config_file_before_anything_runs(tmp_path: Path) -> None:
    path = write(tmp_path, 'tcp = "nowhere"\n')
    result = CliRunner().invoke(cli, ["serve", "--config", os.fspath(path)], prog_name="crpeer")
    assert result.exit_code == 2, result.output
    assert f"{path}:1: tcp:" in result.stderr
    assert not (tmp_path / "notes.db").exists()
    missing = CliRunner().invoke(
        cli, ["config", "check", os.fspath(tmp_path / "none.toml")], prog_name="crpeer"
    )
    assert missing.exit_code == 2
    assert "cannot read the config file" in missing.stderr
