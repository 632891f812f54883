"""Files that hold the user's data are readable by their owner only (mode 0600)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from peer.cli_common import status_path, write_status_file
from peer.store import Store
from peer.store.snapshot import restore_snapshot, take_snapshot
from tests.support import SCHEMA

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The umask most systems run with: files are created 0644 unless asked otherwise."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def written_store(path: Path) -> Store:
    store = Store(path)
    store.execute(SCHEMA)
    store.make_crr("notes")
    store.execute("INSERT INTO notes VALUES (1, 'private')")
    return store


def test_a_new_database_and_its_wal_and_shm_are_0600(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    store = written_store(path)
    try:
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        assert all(file.exists() for file in files)
        assert {file.name: mode(file) for file in files} == {file.name: 0o600 for file in files}
    finally:
        store.close()
    with Store(path) as reopened:  # reopening neither widens nor breaks anything
        assert reopened.execute("SELECT body FROM notes") == [("private",)]
    assert mode(path) == 0o600


def test_an_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    written_store(path).close()
    path.chmod(0o640)  # the owner chose to share it with a group
    with Store(path) as store:
        store.execute("INSERT INTO notes VALUES (2, 'more')")
        assert mode(path) == 0o640
        assert mode(Path(f"{path}-wal")) == 0o640


def test_snapshots_and_restored_databases_are_0600(tmp_path: Path) -> None:
    source = tmp_path / "source.db"
    written_store(source).close()
    snapshot, restored = tmp_path / "copy.snapshot", tmp_path / "restored.db"
    take_snapshot(source, snapshot)
    assert mode(snapshot) == 0o600
    restore_snapshot(snapshot, restored)
    assert mode(restored) == 0o600
    with Store(restored) as store:
        assert store.execute("SELECT body FROM notes") == [("private",)]


def test_the_status_file_is_0600(tmp_path: Path) -> None:
    path = status_path(tmp_path / "notes.db")
    write_status_file(path, {"updated": 1.0, "peers": []})
    assert mode(path) == 0o600
    write_status_file(path, {"updated": 2.0, "peers": []})  # rewritten in place of the old
    assert mode(path) == 0o600
    # No temporary file is left behind; the writers' lock file is 0600 too.
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, f"{path.name}.lock"]
    assert mode(tmp_path / f"{path.name}.lock") == 0o600
