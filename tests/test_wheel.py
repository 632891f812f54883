"""The platform wheel, as a user who only runs ``pip install`` gets it.

Builds an sdist from this checkout, a wheel from that sdist (which compiles
cr-sqlite from source, as another machine would), installs the wheel into a
fresh virtualenv outside the checkout, and drives two installed ``crpeer serve``
processes until a row written on one is read on the other.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support import wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SYNC_DEADLINE_S = 60.0


def _run(cmd: list[str | Path], *, cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(
        [str(part) for part in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{cmd} failed ({result.returncode}):\n{result.stderr[-4000:]}"
    return result.stdout


def _clean_env() -> dict[str, str]:
    """The environment minus anything that would let the checkout leak into the venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CRPEER_CRSQLITE")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    env = _clean_env()
    # A private build directory, so the checkout's own cr-sqlite build is untouched.
    env["CRPEER_BUILD_DIR"] = str(out / "crsqlite-build")
    _run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", out, ROOT],
        cwd=out,
        env=env,
    )
    (sdist,) = out.glob("crpeer-*.tar.gz")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            out,
            sdist,
        ],
        cwd=out,
        env=env,
    )
    (built,) = out.glob("crpeer-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("venv")
    env = _clean_env()
    _run([sys.executable, "-m", "venv", home / "venv"], cwd=home, env=env)
    _run(
        [home / "venv" / "bin" / "python", "-m", "pip", "install", "--quiet", wheel],
        cwd=home,
        env=env,
    )
    return home / "venv" / "bin"


def test_the_wheel_is_tagged_for_a_platform_and_carries_the_extension(wheel: Path) -> None:
    assert wheel.name.startswith("crpeer-0.2.0-py3-none-linux_")
    names = zipfile.ZipFile(wheel).namelist()
    assert "peer/_lib/crsqlite.so" in names
    assert "peer/_lib/crsqlite.LICENSE" in names
    assert "transports/__init__.py" in names
    for page_file in ("index.html", "app.js", "style.css"):  # the admin page, as package data
        assert f"peer/admin_page/{page_file}" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    wheel_meta = next(name for name in names if name.endswith(".dist-info/WHEEL"))
    assert "Root-Is-Purelib: false" in zipfile.ZipFile(wheel).read(wheel_meta).decode()


def test_the_installed_package_imports_outside_the_checkout(venv: Path, tmp_path: Path) -> None:
    out = _run(
        [
            venv / "python",
            "-c",
            "import peer, transports, peer.crsqlite as c; "
            "print(peer.__version__); print(c.loadable_path())",
        ],
        cwd=tmp_path,
        env=_clean_env(),
    )
    version, library = out.split()
    assert version == "0.2.0"
    assert library.startswith(str(venv.parent)), library
    assert not library.startswith(str(ROOT))


def test_two_installed_nodes_sync_over_tcp(venv: Path, tmp_path: Path) -> None:
    env = _clean_env()
    crpeer = venv / "crpeer"
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    for db in (a, b):
        _run([crpeer, "init", db], cwd=tmp_path, env=env)
        _run(
            [crpeer, "sql", db, "CREATE TABLE notes (id TEXT PRIMARY KEY NOT NULL, body TEXT)"],
            cwd=tmp_path,
            env=env,
        )
        _run([crpeer, "crr", db, "notes"], cwd=tmp_path, env=env)
    id_a = _run([crpeer, "id", a], cwd=tmp_path, env=env).strip()
    id_b = _run([crpeer, "id", b], cwd=tmp_path, env=env).strip()
    _run([crpeer, "trust", "add", a, id_b], cwd=tmp_path, env=env)
    _run([crpeer, "trust", "add", b, id_a], cwd=tmp_path, env=env)
    _run(
        [crpeer, "sql", a, "INSERT INTO notes VALUES ('1', 'written before serving')"],
        cwd=tmp_path,
        env=env,
    )

    port = _free_port()
    logs = [(tmp_path / f"{name}.log").open("w") for name in ("a", "b")]
    serving = [
        subprocess.Popen(
            [crpeer, "serve", a, "--no-lan", "--tcp", f"127.0.0.1:{port}"],
            cwd=tmp_path,
            env=env,
            stdout=logs[0],
            stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [
                crpeer,
                "serve",
                b,
                "--no-lan",
                "--tcp",
                "127.0.0.1:0",
                "--connect",
                f"tcp://127.0.0.1:{port}",
            ],
            cwd=tmp_path,
            env=env,
            stdout=logs[1],
            stderr=subprocess.STDOUT,
        ),
    ]
    try:
        _run(
            [crpeer, "sql", a, "INSERT INTO notes VALUES ('2', 'written while serving')"],
            cwd=tmp_path,
            env=env,
        )
        rows = ""

        def synced() -> bool:
            nonlocal rows
            rows = _run(
                [crpeer, "sql", "--no-header", b, "SELECT id, body FROM notes ORDER BY id"],
                cwd=tmp_path,
                env=env,
            )
            return rows.count("\n") >= 2

        with contextlib.suppress(AssertionError):  # the assertion below shows what arrived
            wait_until(synced, within=SYNC_DEADLINE_S, interval=0.5)
        assert rows.splitlines() == ["1\twritten before serving", "2\twritten while serving"], (
            rows
            + "\n--- a ---\n"
            + (tmp_path / "a.log").read_text()
            + "\n--- b ---\n"
            + (tmp_path / "b.log").read_text()
        )
    finally:
        for process in serving:
            process.terminate()
        for process in serving:
            process.wait(timeout=20)
        for log in logs:
            log.close()
    assert [process.returncode for process in serving] == [0, 0]
