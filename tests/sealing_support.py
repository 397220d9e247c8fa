"""Test-only counterpart of generator/sealing.py: a fixed TEST key pair and the controller's decryption.

`unseal` is written from the controller's ``HybridDecrypt`` independently of `generator.sealing`, so a
round trip checks `seal` against the controller's format rather than against itself. The key pair in
tests/data/sealing/ is public and for tests only (see README.txt there).
"""

from __future__ import annotations

import base64
import functools
import pathlib
import secrets
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import ExtensionOID

from generator.sealing import SealingCert

TEST_KEY_DIR = pathlib.Path(__file__).parent / "data" / "sealing"

# The controller's default `--key-ttl` (10 years of 365 days).
CONTROLLER_CERT_VALIDITY = timedelta(days=3650)

# KeyUsage as Go marshals `x509.KeyUsageEncipherOnly` alone: BIT STRING, 0 unused bits, one byte 0x01.
# cryptography's own KeyUsage refuses encipherOnly without keyAgreement, hence the raw DER.
_ENCIPHER_ONLY_KEY_USAGE = bytes([0x03, 0x02, 0x00, 0x01])


class UnsealError(Exception):
    """The value does not decrypt with this key, namespace and name (the controller's ErrUnsealFailed)."""


def make_controller_cert(
    private_key: RSAPrivateKey | EllipticCurvePrivateKey,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> x509.Certificate:
    """A self-signed certificate built like the controller's (`pkg/crypto/keys.go` `SignKey`).

    Empty subject and issuer, KeyUsage encipherOnly (critical), CA:TRUE (critical), the subject key
    identifier Go adds to CA certificates, a random 128-bit serial and 10 years of validity.
    """
    start = not_before or datetime.now(UTC).replace(microsecond=0)
    end = not_after or start + CONTROLLER_CERT_VALIDITY
    public_key = private_key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([]))
        .public_key(public_key)
        .serial_number(secrets.randbelow(2**128 - 1) + 1)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.UnrecognizedExtension(ExtensionOID.KEY_USAGE, _ENCIPHER_ONLY_KEY_USAGE), critical=True
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    return builder.sign(private_key, hashes.SHA256())


def unseal(private_key: RSAPrivateKey | bytes, sealed: str, namespace: str, name: str) -> bytes:
    """Decrypt a strict-scope sealed value exactly as the controller does; raise UnsealError if it cannot."""
    return unseal_with_label(private_key, sealed, f"{namespace}/{name}".encode())


def unseal_with_label(private_key: RSAPrivateKey | bytes, sealed: str, label: bytes) -> bytes:
    """The controller's HybridDecrypt with an explicit OAEP label (scope), for checking scope binding."""
    key = private_key if isinstance(private_key, RSAPrivateKey) else _load_rsa_private_key(private_key)
    try:
        # Go's base64.StdEncoding skips line breaks but nothing else, and insists on padding.
        blob = base64.b64decode(sealed.replace("\r", "").replace("\n", ""), validate=True)
    except ValueError as e:
        raise UnsealError(f"not standard base64: {e}") from e
    if len(blob) < 2:
        raise UnsealError("too short")
    rsa_len = int.from_bytes(blob[:2], "big")
    if len(blob) < 2 + rsa_len:
        raise UnsealError("too short")
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)
    try:
        session_key = key.decrypt(blob[2 : 2 + rsa_len], oaep)
        return AESGCM(session_key).decrypt(bytes(12), blob[2 + rsa_len :], None)
    except (ValueError, InvalidTag) as e:
        raise UnsealError(f"decryption failed: {type(e).__name__}") from e


@functools.cache
def test_private_key() -> RSAPrivateKey:
    """The committed 4096-bit TEST private key (tests/data/sealing/test-key.pem)."""
    return _load_rsa_private_key((TEST_KEY_DIR / "test-key.pem").read_bytes())


@functools.cache
def test_cert() -> SealingCert:
    """The committed controller-like certificate of the TEST key (also examples/control/sealing-cert.pem)."""
    return SealingCert.load(TEST_KEY_DIR / "test-cert.pem")


# Not tests, despite their names: keep pytest from collecting them where they are imported.
test_private_key.__test__ = False  # type: ignore[attr-defined]
test_cert.__test__ = False  # type: ignore[attr-defined]


def _load_rsa_private_key(pem: bytes) -> RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, RSAPrivateKey):
        raise TypeError(f"expected an RSA private key, got {type(key).__name__}")
    return key
