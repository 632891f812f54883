"""Join-secret proofs: pure functions, no sockets."""

from __future__ import annotations

import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from peer.errors import ConfigError, IdentityError, PairingError
from peer.pairing import (
    NONCE_SIZE,
    PROOF_SIZE,
    PairingNonces,
    format_peer_id,
    generate_join_secret,
    host_proof,
    joiner_proof,
    new_nonce,
    normalize_join_secret,
    peer_id_from_public_key,
    verify_host_proof,
    verify_joiner_proof,
)

SECRET = generate_join_secret()
JOINER = peer_id_from_public_key(b"\x0a" * 32)
HOST = peer_id_from_public_key(b"\x0b" * 32)
MALLORY = peer_id_from_public_key(b"\x0c" * 32)
NONCES = PairingNonces(joiner=b"\x01" * NONCE_SIZE, host=b"\x02" * NONCE_SIZE)


def test_right_secret_verifies_both_ways() -> None:
    nonces = PairingNonces(new_nonce(), new_nonce())
    proof = joiner_proof(SECRET, nonces, JOINER, HOST)
    assert len(proof) == PROOF_SIZE
    verify_joiner_proof(SECRET, nonces, JOINER, HOST, proof)
    answer = host_proof(SECRET, nonces, JOINER, HOST)
    verify_host_proof(SECRET, nonces, JOINER, HOST, answer)
    assert answer != proof


def test_secret_typed_differently_still_verifies() -> None:
    proof = joiner_proof(SECRET, NONCES, JOINER, HOST)
    typed = f"  {SECRET.lower().replace('-', ' ')} "
    verify_joiner_proof(typed, NONCES, format_peer_id(JOINER).lower(), HOST, proof)


def test_wrong_secret_fails_both_ways() -> None:
    other = generate_join_secret()
    with pytest.raises(PairingError, match="joiner does not know"):
        verify_joiner_proof(SECRET, NONCES, JOINER, HOST, joiner_proof(other, NONCES, JOINER, HOST))
    with pytest.raises(PairingError, match="host does not know"):
        verify_host_proof(SECRET, NONCES, JOINER, HOST, host_proof(other, NONCES, JOINER, HOST))


def test_swapped_ids_or_nonces_fail() -> None:
    proof = joiner_proof(SECRET, NONCES, JOINER, HOST)
    swapped_nonces = PairingNonces(joiner=NONCES.host, host=NONCES.joiner)
    for nonces, joiner, host in [
        (NONCES, HOST, JOINER),
        (swapped_nonces, JOINER, HOST),
        (PairingNonces(NONCES.joiner, b"\x03" * NONCE_SIZE), JOINER, HOST),
    ]:
        with pytest.raises(PairingError):
            verify_joiner_proof(SECRET, nonces, joiner, host, proof)


def test_relay_between_two_tls_sessions_fails() -> None:
    # Mallory sits between joiner and host: each side sees Mallory's peer id
    # from TLS, so the joiner's proof does not match what the host expects.
    relayed = joiner_proof(SECRET, NONCES, JOINER, MALLORY)
    with pytest.raises(PairingError):
        verify_joiner_proof(SECRET, NONCES, MALLORY, HOST, relayed)


def test_a_proof_of_one_role_is_not_accepted_for_the_other() -> None:
    with pytest.raises(PairingError):
        verify_host_proof(SECRET, NONCES, JOINER, HOST, joiner_proof(SECRET, NONCES, JOINER, HOST))
    with pytest.raises(PairingError):
        verify_joiner_proof(SECRET, NONCES, JOINER, HOST, host_proof(SECRET, NONCES, JOINER, HOST))


@pytest.mark.parametrize("proof", [b"", b"\x00" * (PROOF_SIZE - 1), b"\x00" * (PROOF_SIZE + 1)])
def test_proof_of_wrong_length_is_refused(proof: bytes) -> None:
    with pytest.raises(PairingError, match="must be 32 bytes"):
        verify_joiner_proof(SECRET, NONCES, JOINER, HOST, proof)


@pytest.mark.parametrize(
    ("joiner", "host"),
    [(b"\x01" * 31, b"\x02" * 32), (b"\x01" * 32, b"\x02" * 33), (b"\x01" * 32, b"\x01" * 32)],
)
def test_bad_nonces_are_refused(joiner: bytes, host: bytes) -> None:
    with pytest.raises(PairingError):
        PairingNonces(joiner, host)


def test_short_secret_and_bad_peer_id_are_caller_errors() -> None:
    with pytest.raises(ConfigError, match="at least 20"):
        joiner_proof("hunter2", NONCES, JOINER, HOST)
    with pytest.raises(IdentityError):
        joiner_proof(SECRET, NONCES, JOINER[::-1], HOST)


def test_generated_secrets_are_fresh_and_readable() -> None:
    secrets = {generate_join_secret() for _ in range(100)}
    assert len(secrets) == 100
    for secret in secrets:
        assert [len(group) for group in secret.split("-")] == [7, 7, 7, 5]
        assert len(normalize_join_secret(secret)) == 26


@given(wrong=st.text(alphabet=string.ascii_letters + string.digits, min_size=20, max_size=80))
def test_random_wrong_secrets_never_verify(wrong: str) -> None:
    assume(normalize_join_secret(wrong) != normalize_join_secret(SECRET))
    with pytest.raises(PairingError):
        verify_joiner_proof(SECRET, NONCES, JOINER, HOST, joiner_proof(wrong, NONCES, JOINER, HOST))
    with pytest.raises(PairingError):
        verify_host_proof(wrong, NONCES, JOINER, HOST, host_proof(SECRET, NONCES, JOINER, HOST))


@given(position=st.integers(min_value=0, max_value=25), replacement=st.sampled_from("ABCXYZ27"))
def test_a_secret_one_character_off_never_verifies(position: int, replacement: str) -> None:
    compact = normalize_join_secret(SECRET).decode()
    assume(compact[position] != replacement)
    near_miss = compact[:position] + replacement + compact[position + 1 :]
    with pytest.raises(PairingError):
        verify_joiner_proof(
            SECRET, NONCES, JOINER, HOST, joiner_proof(near_miss, NONCES, JOINER, HOST)
        )
