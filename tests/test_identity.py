"""Key files, peer ids and certificates (no network)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from peer.errors import IdentityError
from peer.identity import (
    PEER_ID_LENGTH,
    Identity,
    default_key_path,
    format_peer_id,
    parse_peer_id,
    peer_id_from_certificate,
    peer_id_from_public_key,
    universal_issuer_certificate,
)

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def test_key_file_is_created_with_mode_0600_and_reloads_to_the_same_id(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite.key"
    first = Identity.load_or_create(path)
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in path.read_bytes()
    second = Identity.load_or_create(path)
    assert second.peer_id == first.peer_id
    assert second.public_key_bytes == first.public_key_bytes
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_default_key_path_is_next_to_the_database(tmp_path: Path) -> None:
    assert default_key_path(tmp_path / "notes.db") == tmp_path / "notes.db.key"


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_key_file_accessible_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k.key"
    Identity.load_or_create(path)
    path.chmod(mode)
    with pytest.raises(IdentityError, match="chmod 600"):
        Identity.load_or_create(path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a key at all\n",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        ),
    ],
    ids=["empty", "text", "truncated", "ecdsa", "encrypted"],
)
def test_malformed_key_file_is_refused_and_left_alone(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "k.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(content)
    with pytest.raises(IdentityError, match="move it away"):
        Identity.load_or_create(path)
    assert path.read_bytes() == content


def test_missing_folder_is_an_identity_error(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="folder exists"):
        Identity.load_or_create(tmp_path / "missing" / "k.key")


def test_peer_id_derivation_matches_the_specification() -> None:
    public_key = Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key().public_bytes_raw()
    peer_id = peer_id_from_public_key(public_key)
    body = base64.b32encode(hashlib.sha256(public_key).digest()[:20]).decode()
    assert len(peer_id) == PEER_ID_LENGTH
    assert peer_id[:32] == body
    assert int("".join(f"{ALPHABET.index(c):05b}" for c in peer_id), 2) % 1021 == 1
    assert peer_id == "COPDSQHGJNKJC4RARDM2BV2BMKH4QJXAFA"  # pinned: ids must never change


def test_peer_id_check_catches_every_substitution_and_adjacent_transposition() -> None:
    peer_id = peer_id_from_public_key(bytes(range(32)))
    assert parse_peer_id(peer_id) == peer_id
    typos = 0
    for index, original in enumerate(peer_id):
        for replacement in ALPHABET.replace(original, ""):
            typo = peer_id[:index] + replacement + peer_id[index + 1 :]
            with pytest.raises(IdentityError, match="check failed"):
                parse_peer_id(typo)
            typos += 1
    for index in range(PEER_ID_LENGTH - 1):
        left, right = peer_id[index], peer_id[index + 1]
        if left == right:
            continue
        swapped = peer_id[:index] + right + left + peer_id[index + 2 :]
        with pytest.raises(IdentityError, match="check failed"):
            parse_peer_id(swapped)
        typos += 1
    assert typos >= PEER_ID_LENGTH * 31 + 20


def test_parse_accepts_lowercase_dashes_and_spaces() -> None:
    peer_id = peer_id_from_public_key(b"\x07" * 32)
    shown = format_peer_id(peer_id)
    assert [len(group) for group in shown.split("-")] == [7, 7, 7, 7, 6]
    assert shown.replace("-", "") == peer_id
    for text in (shown, shown.lower(), shown.replace("-", " "), f"  {peer_id.lower()}\n"):
        assert parse_peer_id(text) == peer_id
    assert parse_peer_id(" ".join(peer_id[i : i + 4] for i in range(0, 34, 4))) == peer_id


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "34 letters"),
        ("ABC", "34 letters"),
        ("0" * 34, "digits 2-7"),
        ("É" * 34, "34 letters"),
        ("A" * 35, "34 letters"),
    ],
)
def test_parse_explains_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(IdentityError, match=message):
        parse_peer_id(text)


def test_certificate_names_the_peer_and_is_signed_by_the_universal_issuer(tmp_path: Path) -> None:
    now = dt.datetime(2030, 6, 1, tzinfo=dt.UTC)
    identity = Identity.load_or_create(tmp_path / "k.key", now=now)
    certificate = x509.load_der_x509_certificate(identity.certificate_der)
    issuer = x509.load_der_x509_certificate(universal_issuer_certificate())
    common_name = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == identity.peer_id
    assert certificate.issuer == issuer.subject
    certificate.verify_directly_issued_by(issuer)
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc
    assert 20 * 365 <= lifetime.days <= 20 * 366
    assert peer_id_from_certificate(identity.certificate_der) == identity.peer_id
    assert x509.load_pem_x509_certificate(identity.certificate_pem) == certificate
    again = Identity.load_or_create(tmp_path / "k.key", now=now)
    assert again.certificate_der != identity.certificate_der  # random serial, same key
    assert peer_id_from_certificate(again.certificate_der) == identity.peer_id


def test_universal_issuer_is_byte_identical_everywhere() -> None:
    der = universal_issuer_certificate()
    issuer = x509.load_der_x509_certificate(der)
    constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca
    assert constraints.path_length == 0
    assert issuer.serial_number == 1
    # Pinned: changing these bytes would split the network into incompatible versions.
    assert hashlib.sha256(der).hexdigest() == (
        "43a3687b1662174eb9d6c5e71f67f951e9fdf7c6d0c313577ddf2bbd31decea2"
    )


def test_peer_id_from_certificate_refuses_other_keys_and_garbage() -> None:
    ecdsa = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ecdsa")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ecdsa.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ecdsa, hashes.SHA256())
    )
    with pytest.raises(IdentityError, match="Ed25519"):
        peer_id_from_certificate(certificate.public_bytes(serialization.Encoding.DER))
    with pytest.raises(IdentityError, match="cannot be parsed"):
        peer_id_from_certificate(b"\x30\x03garbage")
