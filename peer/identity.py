"""This node's identity: its Ed25519 key file, certificate and TLS contexts.

The peer id functions live in :mod:`peer.pairing` (with the other codes users
exchange) and are re-exported here.

TLS: every certificate is signed by the fixed, public "crpeer universal issuer"
(SECURITY.md explains why that grants nothing). Both contexts trust only that
issuer and require a certificate from the other side. After the handshake the
caller derives the remote id with :func:`peer_id_from_certificate` and checks
it against the trust store before any sync frame.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import secrets
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from peer.errors import CrpeerError, IdentityError
from peer.pairing import PEER_ID_LENGTH, format_peer_id, parse_peer_id, peer_id_from_public_key

__all__ = [
    "PEER_ID_LENGTH",
    "Identity",
    "default_key_path",
    "format_peer_id",
    "parse_peer_id",
    "peer_id_from_certificate",
    "peer_id_from_public_key",
    "read_private_file",
    "universal_issuer_certificate",
    "write_private_file",
]

_ISSUER_SEED = b"crpeer universal issuer v1"
_ISSUER_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crpeer universal issuer v1")])
_CERT_LIFETIME = dt.timedelta(days=7305)  # 20 years
_CLOCK_SKEW = dt.timedelta(days=1)  # backdated so that a peer whose clock lags accepts it
_MAX_PRIVATE_FILE = 1 << 20
_O_BINARY: int = getattr(os, "O_BINARY", 0)


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
    seed = hashes.Hash(hashes.SHA256())
    seed.update(_ISSUER_SEED)
    return Ed25519PrivateKey.from_private_bytes(seed.finalize())


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
    unused = ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
    return x509.KeyUsage(
        digital_signature=signature,
        key_cert_sign=not signature,
        crl_sign=not signature,
        **dict.fromkeys((*unused, "encipher_only", "decipher_only"), False),
    )


def _mint_certificate(key: Ed25519PrivateKey, peer_id: str, now: dt.datetime) -> bytes:
    issuer = _issuer_key()
    public_key = key.public_key()
    not_before = now - _CLOCK_SKEW
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    certificate = (
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
    return certificate.public_bytes(serialization.Encoding.DER)


def read_private_file(path: Path, error: type[CrpeerError]) -> bytes | None:
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


def write_private_file(path: Path, data: bytes, *, replace: bool) -> bool:
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
        with contextlib.suppress(OSError):  # not every system can fsync a directory
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


@dataclass(frozen=True, slots=True)
class Identity:
    """This node's peer id and certificate, and the file holding its private key.

    Create it with :meth:`load_or_create`; then build TLS contexts with
    :meth:`server_ssl_context` and :meth:`client_ssl_context` (once, and reuse
    them: each build reads the key file again).
    """

    key_path: Path
    """The file holding the private key (PEM, PKCS8, unencrypted, mode 0600)."""
    peer_id: str
    """This node's canonical peer id."""
    public_key_bytes: bytes = field(repr=False)
    """The raw 32-byte Ed25519 public key."""
    certificate_der: bytes = field(repr=False)
    """This node's certificate (DER): subject CN = peer id, signed by the universal issuer."""

    @classmethod
    def load_or_create(
        cls, path: str | os.PathLike[str], *, now: dt.datetime | None = None
    ) -> Identity:
        """Load the key at ``path``, or create a new one there (mode 0600) if absent.

        ``now`` (default: the current UTC time) dates the certificate. Raises
        IdentityError, saying what to do, if the file is accessible to other
        users, is not an unencrypted PKCS8 PEM Ed25519 key, or cannot be created.
        """
        key_path = Path(path)
        data = read_private_file(key_path, IdentityError)
        if data is None:
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            try:
                write_private_file(key_path, pem, replace=False)
            except OSError as exc:
                raise IdentityError(
                    f"cannot create the key file {key_path}: {exc.strerror or exc}; "
                    "check that its folder exists and is writable"
                ) from exc
            data = read_private_file(key_path, IdentityError)
        advice = "restore it from a backup, or move it away to start with a new peer id"
        try:
            key = serialization.load_pem_private_key(data or b"", password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise IdentityError(
                f"{key_path} is not an unencrypted PKCS8 PEM key; {advice}"
            ) from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"{key_path} holds a key that is not Ed25519; {advice}")
        public_key = key.public_key().public_bytes_raw()
        peer_id = peer_id_from_public_key(public_key)
        certificate = _mint_certificate(key, peer_id, now or dt.datetime.now(dt.UTC))
        return cls(key_path, peer_id, public_key, certificate)

    @property
    def certificate_pem(self) -> bytes:
        """This node's certificate (PEM)."""
        return ssl.DER_cert_to_PEM_cert(self.certificate_der).encode("ascii")

    def server_ssl_context(self) -> ssl.SSLContext:
        """A TLS 1.3 server context that presents this node's certificate and
        requires a client certificate from the universal issuer.

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
            # The stdlib loads a certificate only from a file; it is public, and
            # the key is read from its own file, so no secret is copied.
            with tempfile.TemporaryDirectory(prefix="crpeer-") as folder:
                certificate_file = Path(folder) / "certificate.pem"
                certificate_file.write_bytes(self.certificate_pem)
                context.load_cert_chain(certificate_file, self.key_path)
        except OSError as exc:
            raise IdentityError(
                f"cannot set up TLS with the key file {self.key_path} ({exc}); "
                "was it changed or removed while the node was running?"
            ) from exc
        return context
