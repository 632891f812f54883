"""What two people exchange to pair devices: peer ids, join secrets, and the
proof that a device knows the join secret without sending it.

Pure functions: no I/O and no clock; only :func:`new_nonce` and
:func:`generate_join_secret` draw randomness (from :mod:`secrets`).
:mod:`peer.identity` re-exports the peer id functions.

Peer id: the first 20 bytes of SHA-256 of the raw 32-byte Ed25519 public key,
in RFC 4648 base32 (32 characters), then 2 check characters chosen so that all
34 characters, read as one base-32 number (A=0 … Z=25, 2=26 … 7=31), are 1
modulo the prime 1021 (the ISO/IEC 7064 "pure" construction that IBAN uses with
97). Any single substitution or adjacent transposition, check characters
included, changes that remainder, so :func:`parse_peer_id` rejects it. The
canonical form is the 34 uppercase characters; :func:`format_peer_id` adds
dashes for reading aloud.

Pairing, after a mutually authenticated TLS handshake in which each side learnt
the other's peer id: both send a :func:`new_nonce`; the joiner sends
:func:`joiner_proof`; the host checks it with :func:`verify_joiner_proof` and
only then sends :func:`host_proof`, which the joiner checks with
:func:`verify_host_proof`. A proof is HMAC-SHA256 under
``HKDF-SHA256(secret, salt=b"crpeer-pairing-v1", info=b"pairing key")`` of the
fields ``b"crpeer-pair-v1"``, the role (1 joiner, 2 host), the joiner's nonce,
the host's nonce, the joiner's peer id and the host's peer id, each preceded by
its length as 4 big-endian bytes.
"""

from __future__ import annotations

import base64
import secrets
import unicodedata
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from peer.errors import ConfigError, IdentityError, PairingError

__all__ = [
    "JOIN_SECRET_MIN_LENGTH",
    "NONCE_SIZE",
    "PEER_ID_LENGTH",
    "PROOF_SIZE",
    "WRONG_SECRET",
    "PairingNonces",
    "format_peer_id",
    "generate_join_secret",
    "host_proof",
    "joiner_proof",
    "new_nonce",
    "normalize_join_secret",
    "parse_peer_id",
    "peer_id_from_public_key",
    "same_join_secret",
    "verify_host_proof",
    "verify_joiner_proof",
]

PEER_ID_LENGTH = 34
"""Characters in a canonical peer id (32 of hash, 2 of check)."""
NONCE_SIZE = 32
"""Bytes in a pairing nonce."""
PROOF_SIZE = 32
"""Bytes in a pairing proof (an HMAC-SHA256)."""
JOIN_SECRET_MIN_LENGTH = 20
"""Fewest characters a join secret may have once normalized. A floor, not a
guarantee: a rogue host can brute-force a weak secret offline (SECURITY.md)."""

WRONG_SECRET = "wrong join secret"
"""The reason a host sends when a joiner's proof fails: the joiner reports it
as a PairingError and stops trying (retrying with the same secret cannot work)."""

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_DIGIT = {char: value for value, char in enumerate(_ALPHABET)}
_CHECK_PRIME = 1021
_SALT = b"crpeer-pairing-v1"
_INFO = b"pairing key"
_LABEL = b"crpeer-pair-v1"
_JOINER = b"\x01"
_HOST = b"\x02"


def _radix32(text: str) -> int:
    value = 0
    for char in text:
        value = value * 32 + _DIGIT[char]
    return value


def _in_groups(text: str) -> str:
    return "-".join(text[start : start + 7] for start in range(0, len(text), 7))


def peer_id_from_public_key(public_key: bytes) -> str:
    """The canonical peer id of a raw 32-byte Ed25519 public key.

    Raises IdentityError if ``public_key`` is not 32 bytes.
    """
    if len(public_key) != 32:
        raise IdentityError(f"an Ed25519 public key has 32 bytes, not {len(public_key)}")
    digest = hashes.Hash(hashes.SHA256())
    digest.update(public_key)
    body = base64.b32encode(digest.finalize()[:20]).decode("ascii")
    check = (1 - _radix32(body) * 32 * 32) % _CHECK_PRIME
    return body + _ALPHABET[check // 32] + _ALPHABET[check % 32]


def parse_peer_id(text: str) -> str:
    """Validate a peer id as a user typed it and return its canonical form.

    Accepts any case, with or without dashes and whitespace. Raises
    IdentityError, saying what is wrong, when the length, the characters or the
    check do not match (a typo, or two characters swapped).
    """
    compact, shown = "".join(text.split()).replace("-", ""), repr(text[:80])
    if not compact.isascii() or len(compact) != PEER_ID_LENGTH:
        raise IdentityError(
            f"a peer id has {PEER_ID_LENGTH} letters and digits (dashes and spaces aside); "
            f"{shown} does not"
        )
    compact = compact.upper()
    unknown = sorted(set(compact) - set(_ALPHABET))
    if unknown:
        raise IdentityError(
            f"a peer id uses only the letters A-Z and the digits 2-7; {shown} contains "
            f"{''.join(unknown)!r} (0, 1, 8 and 9 are never used: read them as O, I, B)"
        )
    if _radix32(compact) % _CHECK_PRIME != 1:
        raise IdentityError(
            f"{shown} is not a valid peer id: its check failed, so a character is "
            "mistyped or two are swapped; compare it again with the other device"
        )
    return compact


def format_peer_id(peer_id: str) -> str:
    """The peer id in dash-separated groups of 7 (the last of 6), for reading aloud.

    Raises IdentityError if ``peer_id`` is not a valid peer id.
    """
    return _in_groups(parse_peer_id(peer_id))


def generate_join_secret() -> str:
    """A new random join secret: 128 bits, as 26 base32 characters in dashed groups."""
    return _in_groups(base64.b32encode(secrets.token_bytes(16)).decode("ascii").rstrip("="))


def normalize_join_secret(secret: str) -> bytes:
    """The bytes both sides derive the pairing key from.

    Unicode NFKC, whitespace and dashes removed, upper case, UTF-8: so a secret
    typed in lower case or without its dashes still matches. Raises ConfigError
    if fewer than :data:`JOIN_SECRET_MIN_LENGTH` characters remain.
    """
    compact = "".join(unicodedata.normalize("NFKC", secret).split()).replace("-", "").upper()
    if len(compact) < JOIN_SECRET_MIN_LENGTH:
        raise ConfigError(
            f"a join secret needs at least {JOIN_SECRET_MIN_LENGTH} letters or digits "
            f"(dashes and spaces aside), not {len(compact)}; use a generated one"
        )
    return compact.encode("utf-8")


def same_join_secret(first: str, second: str) -> bool:
    """Whether two join secrets normalize alike; a too short one matches nothing."""
    try:
        return secrets.compare_digest(normalize_join_secret(first), normalize_join_secret(second))
    except ConfigError:
        return False


def new_nonce() -> bytes:
    """A fresh random nonce; each side sends one per pairing attempt, never reused."""
    return secrets.token_bytes(NONCE_SIZE)


@dataclass(frozen=True, slots=True)
class PairingNonces:
    """The two nonces of one pairing attempt.

    Raises PairingError if either is not :data:`NONCE_SIZE` bytes or they are
    equal (a remote echoing our own nonce back).
    """

    joiner: bytes
    host: bytes

    def __post_init__(self) -> None:
        for nonce in (self.joiner, self.host):
            if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
                raise PairingError(f"a pairing nonce must be {NONCE_SIZE} bytes")
        if self.joiner == self.host:
            raise PairingError("the two pairing nonces are equal")


def _mac(
    secret: str, role: bytes, nonces: PairingNonces, joiner_id: str, host_id: str
) -> hmac.HMAC:
    key = HKDF(hashes.SHA256(), length=32, salt=_SALT, info=_INFO).derive(
        normalize_join_secret(secret)
    )
    mac = hmac.HMAC(key, hashes.SHA256())
    ids = (parse_peer_id(joiner_id).encode("ascii"), parse_peer_id(host_id).encode("ascii"))
    for field in (_LABEL, role, nonces.joiner, nonces.host, *ids):
        mac.update(len(field).to_bytes(4, "big") + field)
    return mac


def _verify(mac: hmac.HMAC, proof: bytes, sender: str) -> None:
    if not isinstance(proof, bytes) or len(proof) != PROOF_SIZE:
        raise PairingError(f"the {sender}'s pairing proof must be {PROOF_SIZE} bytes")
    try:
        mac.verify(proof)  # constant-time comparison
    except InvalidSignature:
        raise PairingError(
            f"{WRONG_SECRET}: the {sender} does not know the join secret "
            "(or a different device is in between)"
        ) from None


def joiner_proof(secret: str, nonces: PairingNonces, joiner_id: str, host_id: str) -> bytes:
    """The joiner's proof that it knows ``secret``; the joiner sends it first.

    ``joiner_id`` and ``host_id`` are the peer ids each side learnt from TLS.
    Raises ConfigError for a too short secret, IdentityError for a bad peer id.
    """
    return _mac(secret, _JOINER, nonces, joiner_id, host_id).finalize()


def host_proof(secret: str, nonces: PairingNonces, joiner_id: str, host_id: str) -> bytes:
    """The host's proof that it knows ``secret``; send it only after
    :func:`verify_joiner_proof` succeeded, never before.

    Raises like :func:`joiner_proof`.
    """
    return _mac(secret, _HOST, nonces, joiner_id, host_id).finalize()


def verify_joiner_proof(
    secret: str, nonces: PairingNonces, joiner_id: str, host_id: str, proof: bytes
) -> None:
    """Check the joiner's proof on the host; return normally if it is right.

    Raises PairingError if it is wrong: the host then closes the session and
    sends nothing derived from the secret. Also raises like :func:`joiner_proof`.
    """
    _verify(_mac(secret, _JOINER, nonces, joiner_id, host_id), proof, "joiner")


def verify_host_proof(
    secret: str, nonces: PairingNonces, joiner_id: str, host_id: str, proof: bytes
) -> None:
    """Check the host's proof on the joiner; return normally if it is right.

    Raises PairingError if it is wrong (the joiner must not trust that host).
    Also raises like :func:`joiner_proof`.
    """
    _verify(_mac(secret, _HOST, nonces, joiner_id, host_id), proof, "host")
