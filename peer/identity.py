"""This node's identity: its Ed25519 key, peer id, certificate and TLS contexts.

Peer id: the first 20 bytes of SHA-256 of the raw 32-byte public key, in
RFC 4648 base32 (32 characters), then 2 check characters chosen so that all 34
characters, read as one base-32 number (A=0 … Z=25, 2=26 … 7=31), are 1 modulo
the prime 1021 (the ISO/IEC 7064 "pure" construction IBAN uses with 97). Any
single substitution or adjacent transposition, check characters included,
changes that remainder, so :func:`parse_peer_id` rejects it. The canonical form
is 34 uppercase characters; :func:`format_peer_id` adds dashes for reading.

TLS: every certificate is signed by the fixed, public "crpeer universal issuer"
(SECURITY.md explains why that grants nothing). After the handshake the caller
derives the remote id with :func:`peer_id_from_certificate` and checks it
against the trust store before any sync frame.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import os
import secrets
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from peer.errors import CrpeerError, IdentityError

__all__ = [
    "PEER_ID_LENGTH",
    "Identity",
    "default_key_path",
    "format_peer_id",
    "parse_peer_id",
    "peer_id_from_certificate",
    "peer_id_from_public_key",
    "universal_issuer_certificate",
]

PEER_ID_LENGTH = 34
"""Characters in a canonical peer id (32 of hash, 2 of check)."""

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_DIGIT = {char: value for value, char in enumerate(_ALPHABET)}
_CHECK_PRIME = 1021
_ISSUER_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crpeer universal issuer v1")])
_CERT_LIFETIME = dt.timedelta(days=7305)  # 20 years
_CLOCK_SKEW = dt.timedelta(days=1)  # backdating so a peer whose clock lags still accepts it
_MAX_PRIVATE_FILE = 1 << 20
_O_BINARY: int = getattr(os, "O_BINARY", 0)


def _sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


def _radix32(text: str) -> int:
    value = 0
    for char in text:
        value = value * 32 + _DIGIT[char]
    return value


def _in_groups(text: str, longest: int = 7) -> str:
    """Split ``text`` with dashes into near-equal groups of at most ``longest``."""
    count = -(-len(text) // longest)
    size, extra = divmod(len(text), count)
    groups, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        groups.append(text[start:end])
        start = end
    return "-".join(groups)


def peer_id_from_public_key(public_key: bytes) -> str:
    """The canonical peer id of a raw 32-byte Ed25519 public key.

    Raises IdentityError if ``public_key`` is not 32 bytes.
    """
    if len(public_key) != 32:
        raise IdentityError(f"an Ed25519 public key has 32 bytes, not {len(public_key)}")
    body = base64.b32encode(_sha256(public_key)[:20]).decode("ascii")
    check = (1 - _radix32(body) * 32 * 32) % _CHECK_PRIME
    return body + _ALPHABET[check // 32] + _ALPHABET[check % 32]


def parse_peer_id(text: str) -> str:
    """Validate a peer id as a user typed it and return its canonical form.

    Accepts any case, with or without dashes and whitespace. Raises
    IdentityError, saying what is wrong, when the length, the characters or the
    check do not match (a typo or two swapped characters).
    """
    compact = "".join(text.split()).replace("-", "")
    if not compact.isascii() or len(compact) != PEER_ID_LENGTH:
        raise IdentityError(
            f"a peer id has {PEER_ID_LENGTH} letters and digits (dashes and spaces aside); "
            f"{text[:80]!r} does not"
        )
    compact = compact.upper()
    unknown = sorted(set(compact) - set(_ALPHABET))
    if unknown:
        raise IdentityError(
            f"a peer id uses only the letters A-Z and the digits 2-7; {text!r} contains "
            f"{''.join(unknown)!r} (0, 1, 8 and 9 are never used: O, I and B look alike)"
        )
    if _radix32(compact) % _CHECK_PRIME != 1:
        raise IdentityError(
            f"{text!r} is not a valid peer id: its check failed, so a character is "
            "mistyped or two are swapped; compare it again with the other device"
        )
    return compact


def format_peer_id(peer_id: str) -> str:
    """The peer id in dash-separated groups of 6-7 characters, for reading aloud.

    Raises IdentityError if ``peer_id`` is not a valid peer id.
    """
    return _in_groups(parse_peer_id(peer_id))


def peer_id_from_certificate(der: bytes) -> str:
    """The peer id of the Ed25519 key in a DER certificate (a TLS remote's).

    Only the certificate's public key counts; its names and issuer are ignored.
    Raises IdentityError if the certificate cannot be parsed or its key is not
    Ed25519 (the remote is then not a crpeer peer: close the connection).
    """
    try:
        public_key = x509.load_der_x509_certificate(der).public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise IdentityError("the remote certificate cannot be parsed") from exc
    if not isinstance(public_key, Ed25519PublicKey):
        raise IdentityError("the remote certificate does not carry an Ed25519 key")
    return peer_id_from_public_key(public_key.public_bytes_raw())


def _issuer_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(_sha256(b"crpeer universal issuer v1"))


@functools.cache
def universal_issuer_certificate() -> bytes:
    """The DER certificate of the crpeer universal issuer, identical on every machine.

    Its private key is public on purpose (derived from a fixed seed); it is the
    only CA the TLS contexts trust. It may sign no intermediate CA.
    """
    key = _issuer_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_ISSUER_NAME)
        .issuer_name(_ISSUER_NAME)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signature=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, None)
    )
    return certificate.public_bytes(serialization.Encoding.DER)


def _key_usage(*, signature: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=not signature,
        crl_sign=not signature,
        encipher_only=False,
        decipher_only=False,
    )


def _mint_certificate(key: Ed25519PrivateKey, peer_id: str, now: dt.datetime) -> x509.Certificate:
    issuer = _issuer_key()
    public_key = key.public_key()
    not_before = now - _CLOCK_SKEW
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, peer_id)]))
        .issuer_name(_ISSUER_NAME)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + _CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()), critical=False
        )
        .sign(issuer, None)
    )


def _read_private_file(path: Path, error: type[CrpeerError]) -> bytes | None:
    """The bytes of a secret file, or None if it does not exist.

    Raises ``error`` if it cannot be read, is too large, or (on POSIX) other
    users may read or write it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | _O_BINARY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise error(f"cannot open {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode & 0o777
            if os.name == "posix" and mode & 0o077:
                raise error(
                    f"{path} is accessible to other users (mode {mode:o}); it holds a secret: "
                    f"run `chmod 600 {path}` and start again"
                )
            data = file.read(_MAX_PRIVATE_FILE + 1)
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > _MAX_PRIVATE_FILE:
        raise error(f"{path} is larger than {_MAX_PRIVATE_FILE} bytes; it is not a crpeer file")
    return data


def _write_private_file(path: Path, data: bytes, *, replace: bool) -> bool:
    """Atomically write a secret file with mode 0600 (created so, never chmod-ed).

    With ``replace=False`` an existing file is left alone and False returned.
    Raises OSError; the caller translates it.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)  # unlike a rename, never overwrites a racing writer
            except FileExistsError:
                return False
        if os.name == "posix":
            with contextlib.suppress(OSError):  # some file systems cannot fsync a directory
                dir_fd = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def default_key_path(database: str | os.PathLike[str]) -> Path:
    """Where a node keeps its key unless told otherwise: ``<database>.key``."""
    return Path(f"{os.fspath(database)}.key")


class Identity:
    """This node's key pair, peer id and certificate.

    Create it with :meth:`load_or_create`; then build TLS contexts with
    :meth:`server_ssl_context` / :meth:`client_ssl_context` (once, and reuse
    them). The key file must stay in place while contexts are built.
    """

    def __init__(self, key: Ed25519PrivateKey, key_path: Path, now: dt.datetime) -> None:
        self._key = key
        self._key_path = key_path
        self._public_key = key.public_key().public_bytes_raw()
        self._peer_id = peer_id_from_public_key(self._public_key)
        self._certificate = _mint_certificate(key, self._peer_id, now)

    @classmethod
    def load_or_create(
        cls, path: str | os.PathLike[str], *, now: dt.datetime | None = None
    ) -> Identity:
        """Load the key at ``path``, creating a new one (mode 0600) if absent.

        ``now`` (default: the current UTC time) dates the certificate. Raises
        IdentityError, saying what to do, if the file is accessible to other
        users, malformed, not an unencrypted PKCS8 Ed25519 key, or cannot be
        created.
        """
        key_path = Path(path)
        data = _read_private_file(key_path, IdentityError)
        if data is None:
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            try:
                _write_private_file(key_path, pem, replace=False)
            except OSError as exc:
                raise IdentityError(
                    f"cannot create the key file {key_path}: {exc.strerror or exc}; "
                    "check that its folder exists and is writable"
                ) from exc
            data = _read_private_file(key_path, IdentityError)
        key = _parse_key(data or b"", key_path)
        return cls(key, key_path, now or dt.datetime.now(dt.UTC))

    @property
    def peer_id(self) -> str:
        """This node's canonical peer id."""
        return self._peer_id

    @property
    def public_key_bytes(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self._public_key

    @property
    def key_path(self) -> Path:
        """The file the private key was loaded from."""
        return self._key_path

    @property
    def certificate_der(self) -> bytes:
        """This node's certificate (DER), signed by the universal issuer."""
        return self._certificate.public_bytes(serialization.Encoding.DER)

    @property
    def certificate_pem(self) -> bytes:
        """This node's certificate (PEM), signed by the universal issuer."""
        return self._certificate.public_bytes(serialization.Encoding.PEM)

    def server_ssl_context(self) -> ssl.SSLContext:
        """A TLS 1.3 server context that requires a client certificate.

        Raises IdentityError if the key file no longer matches this identity.
        """
        return self._ssl_context(server=True)

    def client_ssl_context(self) -> ssl.SSLContext:
        """A TLS 1.3 client context that presents this node's certificate and
        requires the server's; host names are not checked (peer ids are).

        Raises IdentityError if the key file no longer matches this identity.
        """
        return self._ssl_context(server=False)

    def _ssl_context(self, *, server: bool) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        if server:
            context.num_tickets = 0  # no resumption: every session shows its certificate
        try:
            context.load_verify_locations(cadata=universal_issuer_certificate())
            # The stdlib loads a certificate chain only from files; the
            # certificate is public, the key is read from its own file.
            with tempfile.TemporaryDirectory(prefix="crpeer-") as folder:
                certificate_file = Path(folder) / "certificate.pem"
                certificate_file.write_bytes(self.certificate_pem)
                context.load_cert_chain(certificate_file, self._key_path)
        except OSError as exc:
            raise IdentityError(
                f"cannot set up TLS with the key file {self._key_path}: {exc}; "
                "was it changed or removed while the node was running?"
            ) from exc
        return context


def _parse_key(data: bytes, path: Path) -> Ed25519PrivateKey:
    advice = (
        "restore it from a backup, or move it away to start with a new peer id "
        "(peers that trusted the old id must then trust the new one)"
    )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise IdentityError(
            f"{path} is not an unencrypted PEM PKCS8 private key; {advice}"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{path} holds a key that is not Ed25519; {advice}")
    return key
