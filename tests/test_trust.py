"""The trust store: allow-list, join secret, persistence, removal callbacks."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import stat
from pathlib import Path

import pytest

from peer.errors import ConfigError, IdentityError, UntrustedPeerError
from peer.pairing import format_peer_id, normalize_join_secret, peer_id_from_public_key
from peer.trust import TrustedPeer, TrustStore, default_trust_path

ALICE = peer_id_from_public_key(b"\x01" * 32)
BOB = peer_id_from_public_key(b"\x02" * 32)
CAROL = peer_id_from_public_key(b"\x03" * 32)


class FakeClock:
    def __init__(self) -> None:
        self.now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(minutes=1)
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return default_trust_path(tmp_path / "notes.db")


def write_private(path: Path, content: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(content)


def test_missing_file_is_an_empty_store_and_nothing_is_written(path: Path) -> None:
    store = TrustStore.load(path)
    assert store.list() == []
    assert store.join_secret is None
    assert not store.is_trusted(ALICE)
    assert not path.exists()
    assert path.name == "notes.db.trust.json"


def test_add_remove_list_persist_and_reload(path: Path) -> None:
    store = TrustStore.load(path, clock=FakeClock())
    alice = store.add(format_peer_id(ALICE).lower(), "alice's laptop")
    store.add(BOB)
    store.add(CAROL, "carol")
    assert alice == TrustedPeer(
        ALICE, "alice's laptop", dt.datetime(2030, 1, 1, 0, 1, tzinfo=dt.UTC)
    )
    assert store.add(ALICE).label == "alice's laptop"  # re-adding keeps label and time
    assert store.add(ALICE, "alice").added == alice.added
    assert store.remove(BOB)
    assert not store.remove(BOB)
    assert [entry.peer_id for entry in store.list()] == [ALICE, CAROL]
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # no temporary left; the writers' lock file stays (it holds nothing)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, f"{path.name}.lock"]

    reloaded = TrustStore.load(path)
    assert reloaded.list() == store.list()
    assert reloaded.list()[0].label == "alice"
    assert reloaded.is_trusted(ALICE)
    assert reloaded.is_trusted(format_peer_id(CAROL))
    assert not reloaded.is_trusted(BOB)
    assert not reloaded.is_trusted("not a peer id")
    reloaded.check(ALICE)
    with pytest.raises(UntrustedPeerError):
        reloaded.check(BOB)


def test_malformed_peer_id_is_refused_on_add(path: Path) -> None:
    store = TrustStore.load(path)
    with pytest.raises(IdentityError):
        store.add(ALICE[:-1] + ("A" if ALICE[-1] != "A" else "B"))
    assert not path.exists()


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{not json",
        "[]",
        '{"format": "something else", "version": 1, "peers": []}',
        '{"format": "crpeer-trust", "version": 99, "peers": []}',
        '{"format": "crpeer-trust", "version": 1, "peers": {}}',
        '{"format": "crpeer-trust", "version": 1, "peers": [], "join_secret": 42}',
        '{"format": "crpeer-trust", "version": 1, "peers": [], "join_secret": "short"}',
        '{"format": "crpeer-trust", "version": 1, "peers": [{"peer_id": "X"}]}',
        '{"format": "crpeer-trust", "version": 1, "peers": ["text"]}',
        json.dumps(
            {
                "format": "crpeer-trust",
                "version": 1,
                "peers": [{"peer_id": ALICE.lower(), "label": "", "added": "2030-01-01T00:00Z"}],
            }
        ),
        json.dumps(
            {
                "format": "crpeer-trust",
                "version": 1,
                "peers": [{"peer_id": ALICE, "label": "", "added": "2030-01-01T00:00"}],
            }
        ),
        json.dumps(
            {
                "format": "crpeer-trust",
                "version": 1,
                "peers": [{"peer_id": ALICE, "label": "", "added": "2030-01-01T00:00Z"}] * 2,
            }
        ),
    ],
)
def test_corrupt_file_is_a_config_error_and_is_not_reset(path: Path, content: str) -> None:
    write_private(path, content)
    with pytest.raises(ConfigError, match="move it away") as caught:
        TrustStore.load(path)
    assert str(path) in str(caught.value)
    assert path.read_text(encoding="utf-8") == content


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_file_readable_by_others_is_refused(path: Path) -> None:
    TrustStore.load(path).add(ALICE)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        TrustStore.load(path)


def test_unwritable_folder_is_a_config_error_and_changes_nothing(tmp_path: Path) -> None:
    store = TrustStore.load(tmp_path / "missing" / "trust.json")
    with pytest.raises(ConfigError, match="cannot write"):
        store.add(ALICE)
    assert store.list() == []


def test_removal_callbacks_fire_with_the_canonical_id(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = TrustStore.load(path)
    store.add(ALICE)
    store.add(BOB)
    removed: list[str] = []
    unregister = store.on_removed(removed.append)

    def broken(peer_id: str) -> None:
        raise RuntimeError("listener bug")

    store.on_removed(broken)
    late: list[str] = []
    store.on_removed(late.append)
    with caplog.at_level(logging.ERROR, logger="peer.trust"):
        assert store.remove(format_peer_id(ALICE).lower())
    assert removed == [ALICE]
    assert late == [ALICE]  # a failing listener does not stop the next one
    assert "removal callback failed" in caplog.text
    store.remove(CAROL)  # was never trusted: no callback
    assert removed == [ALICE]
    unregister()
    store.remove(BOB)
    assert removed == [ALICE]
    assert late == [ALICE, BOB]


def test_join_secret_rotation_persistence_and_clearing(path: Path) -> None:
    store = TrustStore.load(path)
    first = store.rotate_join_secret()
    second = store.rotate_join_secret()
    assert first != second
    assert store.join_secret == second
    assert len(normalize_join_secret(second)) == 26  # 128 bits of base32
    assert TrustStore.load(path).join_secret == second
    store.clear_join_secret()
    assert store.join_secret is None
    assert TrustStore.load(path).join_secret is None
    store.set_join_secret("  correct horse battery staple  ")
    assert TrustStore.load(path).join_secret == "correct horse battery staple"
    with pytest.raises(ConfigError, match="at least"):
        store.set_join_secret("hunter2")
    assert store.join_secret == "correct horse battery staple"


def test_peers_and_secret_survive_each_other_changes(path: Path) -> None:
    store = TrustStore.load(path, clock=FakeClock())
    store.add(ALICE, "a")
    secret = store.rotate_join_secret()
    store.add(BOB)
    reloaded = TrustStore.load(path)
    assert reloaded.join_secret == secret
    assert [entry.peer_id for entry in reloaded.list()] == [ALICE, BOB]
