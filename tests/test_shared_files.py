"""Two processes changing the trust store at once lose nothing; status writes take turns."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from click.testing import CliRunner

from peer.cli import cli
from peer.cli_common import read_status_file, write_status_file
from peer.filelock import lock_path, locked
from peer.pairing import peer_id_from_public_key
from peer.trust import TrustStore

ROOT = Path(__file__).resolve().parent.parent
COUNT = 30

# Each process says "ready" once it has imported crpeer, starts on the
# test's "go" (a line on its stdin), then adds its ids at a trickle: the two
# writers' adds must interleave, which is what the test is about.

# Process A: `crpeer trust add` in a loop, each call a fresh command run.
CLI_LOOP = """
import sys, time
from peer.cli import main
from peer.pairing import peer_id_from_public_key
print("ready", flush=True)
sys.stdin.readline()
for n in range(int(sys.argv[2])):
    time.sleep(0.005)
    code = main(["trust", "add", sys.argv[1], peer_id_from_public_key(bytes([1, n]) * 16)])
    assert code == 0, code
"""
# Process B: one long-lived TrustStore (as `crpeer serve` holds), adding other ids.
API_LOOP = """
import sys, time
from peer.pairing import peer_id_from_public_key
from peer.trust import TrustStore
store = TrustStore.load(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
for n in range(int(sys.argv[2])):
    time.sleep(0.03)
    store.add(peer_id_from_public_key(bytes([2, n]) * 16), f"b{n}")
"""


def test_two_processes_adding_ids_at_once_lose_none(tmp_path: Path) -> None:
    database = tmp_path / "a.db"
    assert CliRunner().invoke(cli, ["init", str(database)]).exit_code == 0
    trust_file = f"{database}.trust.json"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", loop, target, str(COUNT)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for loop, target in ((CLI_LOOP, str(database)), (API_LOOP, trust_file))
    ]
    for process in processes:  # both have imported crpeer: start together
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    for process in processes:
        process.communicate(timeout=120)
        assert process.returncode == 0
    expected = {peer_id_from_public_key(bytes([a, n]) * 16) for a in (1, 2) for n in range(COUNT)}
    trusted = {entry.peer_id for entry in TrustStore.load(trust_file).list()}
    assert trusted == expected
    labels = {e.label for e in TrustStore.load(trust_file).list()}
    assert {f"b{n}" for n in range(COUNT)} <= labels


def test_a_store_sees_what_another_process_added_before_its_own_change(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    first, second = TrustStore.load(path), TrustStore.load(path)
    one, two = (peer_id_from_public_key(bytes([n]) * 32) for n in (1, 2))
    first.add(one, "one")
    second.add(two, "two")  # loaded before `one` was added: must not drop it
    assert {e.peer_id for e in TrustStore.load(path).list()} == {one, two}
    removed: list[str] = []
    second.on_removed(removed.append)
    first.remove(one)
    second.add(two, "renamed")
    assert removed == [one]  # the other process's removal reaches the callbacks
    assert [(e.peer_id, e.label) for e in TrustStore.load(path).list()] == [(two, "renamed")]


def test_status_file_writes_hold_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "a.db.status.json"
    entered = threading.Event()
    done = threading.Event()

    def write() -> None:
        entered.set()
        write_status_file(path, {"updated": 1.0, "n": 2})
        done.set()

    with locked(path):
        thread = threading.Thread(target=write)
        thread.start()
        assert entered.wait(5)
        assert not done.wait(0.3)  # waits for the lock holder
        assert not path.exists()
    thread.join(5)
    assert done.is_set()
    assert lock_path(path).exists()
    document = read_status_file(path)
    assert document is not None
    assert document["n"] == 2
    assert json.loads(path.read_text())["format"] == "crpeer-status"
