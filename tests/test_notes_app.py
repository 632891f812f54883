"""The Tk notes example, headless: two windows in one process sync over TCP loopback.

Needs Tk and an X server. The fixture starts Xvfb (installing the Debian
package ``xvfb`` first when it is missing and we are root); without them the
test is skipped and says why.
"""

from __future__ import annotations

import importlib.util
import os
import select
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[1]

tk = pytest.importorskip("tkinter", reason="this Python has no tkinter (Tk)")


def load_app() -> Any:
    spec = importlib.util.spec_from_file_location("notes_app", ROOT / "examples" / "notes_app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def install_xvfb() -> str | None:
    """Install Debian's xvfb when we may (root, apt-get); the Xvfb path or None."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "xvfb"]
    for step in (install, ["apt-get", "update", "-q"], install):
        done = subprocess.run(step, env=env, capture_output=True, timeout=400, check=False)
        if step is install and done.returncode == 0:
            break
    return shutil.which("Xvfb")


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    """An Xvfb display for this module's tests, as ``DISPLAY`` (restored after)."""
    xvfb = shutil.which("Xvfb") or install_xvfb()
    if xvfb is None:
        pytest.skip("Xvfb is missing (install the Debian package xvfb, or run as root)")
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [xvfb, "-displayfd", str(write_end), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    previous = os.environ.get("DISPLAY")
    try:
        ready, _, _ = select.select([read_end], [], [], 20)
        number = os.read(read_end, 64).decode().strip() if ready else ""
        if not number.isdigit():
            pytest.skip("Xvfb did not start")
        os.environ["DISPLAY"] = f":{number}"
        yield os.environ["DISPLAY"]
    finally:
        os.close(read_end)
        if previous is None:
            os.environ.pop("DISPLAY", None)
        else:
            os.environ["DISPLAY"] = previous
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def pump(roots: list[Any], predicate: Callable[[], bool], within: float = 20.0) -> None:
    """Run the Tk loops until ``predicate()`` holds; fail after ``scaled(within)`` seconds."""

    def there() -> bool:
        if predicate():
            return True
        for root in roots:
            root.update()
        return False

    wait_until(there, within, interval=0.01)


@pytest.mark.timeout(600)  # the first run may install Xvfb
def test_a_note_added_in_one_window_shows_in_the_other(display: str, tmp_path: Path) -> None:
    app = load_app()
    a = app.open_peer(tmp_path / "a.db", "tcp://127.0.0.1:0", [], "a", True)
    a.start()
    try:
        (address,) = a.listen_addresses()
        b = app.open_peer(tmp_path / "b.db", "tcp://127.0.0.1:0", [address], "b", True)
        b.start()
        try:
            roots = [tk.Tk(), tk.Tk()]
            try:
                window_a = app.NotesApp(roots[0], a, poll_ms=20)
                window_b = app.NotesApp(roots[1], b, poll_ms=20)
                pump(roots, lambda: window_b.status.cget("text") == "1 peer connected")

                window_a.entry.insert(0, "buy milk")
                window_a.add_button.invoke()
                assert window_a.notes() == ["buy milk"], window_a.status.cget("text")
                assert window_a.entry.get() == ""
                pump(roots, lambda: window_b.notes() == ["buy milk"])

                window_b.entry.insert(0, "call mum")
                window_b.add_button.invoke()
                pump(roots, lambda: window_a.notes() == ["buy milk", "call mum"])

                window_b.listbox.selection_set(0)
                window_b.delete_button.invoke()
                assert window_b.notes() == ["call mum"]
                pump(roots, lambda: window_a.notes() == ["call mum"])

                window_a.add_button.invoke()  # a blank entry adds nothing
                assert window_a.notes() == ["call mum"]
                window_a.close()
                window_b.close()
            finally:
                for root in roots:
                    root.destroy()
        finally:
            b.stop()
    finally:
        a.stop()


def test_bad_options_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = load_app()
    assert app.main(["--db", str(tmp_path / "n.db"), "--listen", "udp://x:1", "--insecure"]) == 1
    assert "notes_app: error: --listen needs tcp:// or ws://" in capsys.readouterr().err
    assert app.main(["--db", str(tmp_path / "n.db"), "--listen", "tcp://x", "--insecure"]) == 1
    assert "notes_app: error:" in capsys.readouterr().err
