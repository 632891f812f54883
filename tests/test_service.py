"""``crpeer service install``: the systemd unit; and SIGTERM stops serve cleanly."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from peer.cli import cli
from peer.cli_service import crpeer_command, unit_text
from tests.support import wait_until
from tests.test_cli import ROOT, SCHEMA, Serve, notes, ok


def unit(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=True, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_the_unit_runs_serve_with_absolute_paths_restarts_and_stops_by_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "my notes 100%"
    folder.mkdir()
    database = folder / "a b.db"
    config = folder / "crpeer.toml"
    monkeypatch.chdir(folder)
    text = unit_text(Path("a b.db"), system=False, config=Path("crpeer.toml"))
    parsed = unit(text)
    service = parsed["Service"]
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    argv = shlex.split(service["ExecStart"].replace("%%", "%"))
    assert argv == [*crpeer_command(), "serve", str(database), "--config", str(config)]
    assert Path(argv[0]).is_absolute()
    assert os.access(argv[0], os.X_OK)
    assert parsed["Install"]["WantedBy"] == "default.target"
    assert "User" not in service
    system = unit(unit_text(database, system=True, user="crpeer"))
    assert system["Service"]["User"] == "crpeer"
    assert system["Install"]["WantedBy"] == "multi-user.target"
    assert "--config" not in system["Service"]["ExecStart"]


def test_install_writes_to_the_user_folder_an_output_file_or_stdout(tmp_path: Path) -> None:
    database = tmp_path / "notes.db"
    ok("init", database)
    config_home = tmp_path / "config"
    runner = CliRunner(env={"XDG_CONFIG_HOME": str(config_home)})
    result = runner.invoke(cli, ["service", "install", str(database), "--json"])
    assert result.exit_code == 0, result.output
    written = config_home / "systemd" / "user" / "crpeer-notes.service"
    assert json.loads(result.stdout) == {"unit": str(written), "name": written.name}
    assert unit(written.read_text())["Service"]["Restart"] == "on-failure"

    out = tmp_path / "system.service"
    result = runner.invoke(
        cli, ["service", "install", str(database), "--system", "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert unit(out.read_text())["Install"]["WantedBy"] == "multi-user.target"

    printed = runner.invoke(cli, ["service", "install", str(database), "--print"])
    assert printed.exit_code == 0
    assert printed.stdout == unit_text(database, system=False)

    missing = runner.invoke(cli, ["service", "install", str(tmp_path / "none.db"), "--print"])
    assert missing.exit_code == 1
    assert "crpeer init" in missing.stderr
    both = runner.invoke(
        cli, ["service", "install", str(database), "--print", "--output", str(out)]
    )
    assert both.exit_code == 2


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit text is checked above")
    database = tmp_path / "notes.db"
    ok("init", database)
    config = tmp_path / "crpeer.toml"
    config.write_text("lan = false\n")
    out = tmp_path / "crpeer-notes.service"
    ok("service", "install", database, "--system", "--config", config, "--output", out)
    # System mode: verifying a user unit needs a user session manager.
    check = subprocess.run(
        [analyze, "verify", str(out)], capture_output=True, text=True, timeout=60
    )
    if "Failed to initialize manager" in check.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {check.stderr.strip()}")
    complaints = [line for line in check.stderr.splitlines() if out.name in line]
    assert check.returncode == 0, check.stderr
    assert complaints == [], complaints
    broken = tmp_path / "crpeer-broken.service"
    broken.write_text(out.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    check = subprocess.run(
        [analyze, "verify", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert broken.name in check.stderr  # the check does look at the file


class ConfiguredServe(Serve):
    """``crpeer serve --config FILE --json``: the database comes from the file."""

    def __init__(self, tmp_path: Path, database: Path, config: Path) -> None:
        self.out = tmp_path / f"{database.name}.out"
        self.err = tmp_path / f"{database.name}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "peer.cli", "serve", "--config", str(config), "--json"],
                cwd=ROOT,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )


@pytest.mark.timeout(180)
def test_sigterm_stops_serve_with_status_0_and_keeps_the_last_commit(tmp_path: Path) -> None:
    database = tmp_path / "a.db"
    ok("init", database)
    ok("sql", database, SCHEMA)
    ok("crr", database, "notes")
    config = tmp_path / "crpeer.toml"
    config.write_text(
        'database = "a.db"\ntcp = "127.0.0.1:0"\nlan = false\nlog_format = "json"\n'
        "wal_limit = 1048576\n"
    )
    serve = ConfiguredServe(tmp_path, database, config)
    try:
        serve.listening()
        assert serve.lines()[0]["database"] == str(database)

        def wal_reported() -> bool:
            report = json.loads(ok("status", database, "--json").stdout)
            return bool(report["serve"]["state"] == "running" and report["wal"]["limit"] == 1 << 20)

        wait_until(wal_reported, within=20, interval=0.1)
        for n in range(1, 4):  # each through its own process, the last just before SIGTERM
            written = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "peer.cli",
                    "sql",
                    str(database),
                    f"INSERT INTO notes VALUES ({n}, 'row {n}', {n})",
                ],
                cwd=ROOT,
                capture_output=True,
                timeout=60,
            )
            assert written.returncode == 0, written.stderr
        assert serve.stop() == 0, serve.err.read_text()
    finally:
        if serve.process.poll() is None:
            serve.process.kill()
            serve.process.wait()
    assert notes(database) == [[1, "row 1"], [2, "row 2"], [3, "row 3"]]
    records = [json.loads(line) for line in serve.err.read_text().splitlines()]
    assert records[0]["event"] == "listening"
    assert not (tmp_path / "a.db.status.json").exists()
    assert ok("status", database, "--json").stdout  # opens cleanly after


def test_the_examples_are_what_the_commands_make_and_accept() -> None:
    example = (ROOT / "examples" / "crpeer.service").read_text(encoding="utf-8")
    body = "".join(line for line in example.splitlines(keepends=True) if not line.startswith("#"))
    assert body == unit_text(
        Path("/home/alice/notes/notes.db"),
        system=False,
        config=Path("/home/alice/notes/crpeer.toml"),
        command=["/home/alice/.venv/bin/crpeer"],
    )
    ok("config", "check", ROOT / "examples" / "crpeer.toml")
