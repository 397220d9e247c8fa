"""Sealing secret values for the cluster's Bitnami Sealed Secrets controller, without kubeseal.

`seal` produces exactly what ``kubeseal --raw --scope strict`` produces: the controller's
``HybridEncrypt`` (RSA-OAEP-SHA256 wrapping a one-time AES-256-GCM key), bound to one namespace and
Secret name, as standard padded base64. `check_sealed_value` is the cheap guard that a value in a
control repo is a ciphertext and not a pasted plaintext. The byte layout is specified in the project's
sealed-secrets note; this module is pure apart from `SealingCert.load` reading one file.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pathlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import UserError

# The sizes a controller is realistically run with (`--key-size`, default 4096). Refusing others in
# `SealingCert` keeps every value `seal` produces acceptable to `check_sealed_value`.
KEY_SIZES = (2048, 3072, 4096)
_KEY_SIZES_TEXT = "2048, 3072 or 4096-bit"

FETCH_HINT = "fetch the controller's current certificate with `kubeseal --fetch-cert > sealing-cert.pem`"

_SESSION_KEY_BYTES = 32
# Each session key encrypts exactly one value, which is why the controller can use a fixed nonce.
_ZERO_NONCE = bytes(12)
_GCM_TAG_BYTES = 16
_RSA_CIPHERTEXT_BYTES = frozenset(size // 8 for size in KEY_SIZES)
# Go's base64.StdEncoding: "+/" alphabet, padded. Any `\r` / `\n` is removed before this applies.
_STD_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


@dataclass(frozen=True)
class SealingCert:
    """The controller's public key, ready to seal with, and a fingerprint to tell key renewals apart."""

    public_key: RSAPublicKey
    fingerprint: str  # hex SHA-256 of the SubjectPublicKeyInfo DER; changes only when the key does

    @classmethod
    def from_pem(cls, data: bytes, source: str) -> SealingCert:
        """Accept the PEM that ``kubeseal --fetch-cert`` (or ``GET /v1/cert.pem``) returns.

        Checks only what kubeseal checks: the first certificate holds an RSA key and has not expired.
        `source` names the file in error messages.
        """
        try:
            cert = x509.load_pem_x509_certificate(data)
        except ValueError as e:
            raise UserError(f"{source}: not a PEM certificate ({_pem_problem(data)}); {FETCH_HINT}") from e
        # Only the key and the expiry date are read: reading the extensions raises on the
        # controller's own certificates (KeyUsage encipherOnly without keyAgreement).
        try:
            key = cert.public_key()
        except (ValueError, UnsupportedAlgorithm) as e:
            raise UserError(f"{source}: the certificate's key cannot be read ({e}); {FETCH_HINT}") from e
        if not isinstance(key, RSAPublicKey):
            raise UserError(
                f"{source}: the certificate's key is {_key_kind(key)}, not the RSA key a sealed-secrets "
                f"controller uses; {FETCH_HINT}"
            )
        if key.key_size not in KEY_SIZES:
            raise UserError(
                f"{source}: the certificate holds a {key.key_size}-bit RSA key; cupaas seals only with "
                f"{_KEY_SIZES_TEXT} keys (the controller's --key-size)"
            )
        expiry = cert.not_valid_after_utc
        if expiry < datetime.now(UTC):
            raise UserError(
                f"{source}: the certificate expired on {expiry:%Y-%m-%d}; the controller serves its newest "
                f"certificate, so {FETCH_HINT}"
            )
        spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return cls(public_key=key, fingerprint=hashlib.sha256(spki).hexdigest())

    @classmethod
    def load(cls, path: pathlib.Path, shown: str | None = None) -> SealingCert:
        """Read and check a certificate file; ``shown`` names it in messages (default: ``path``).

        A control repo's `sealing.cert` goes through `loading.load_sealing_cert`, which keeps it inside the repo.
        """
        shown = shown or str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise UserError(f"{shown}: sealing certificate not found; {FETCH_HINT}") from e
        except OSError as e:
            reason = e.strerror or type(e).__name__
            raise UserError(f"{shown}: sealing certificate cannot be read ({reason}); {FETCH_HINT}") from e
        return cls.from_pem(data, shown)


def seal(cert: SealingCert, plaintext: bytes | str, namespace: str, name: str) -> str:
    """Seal one value for the Secret `name` in `namespace` (strict scope), as kubeseal --raw does.

    `plaintext` is the raw secret (a str is taken as UTF-8), never its base64 form. The result is
    different on every call, so callers that want stable output reuse an earlier ciphertext.
    """
    if not namespace or not name:
        raise UserError("sealing needs both a namespace and a Secret name (strict scope binds to both)")
    data = plaintext.encode() if isinstance(plaintext, str) else plaintext
    # The controller rebuilds this label from the SealedSecret's own metadata when it decrypts.
    label = f"{namespace}/{name}".encode()
    session_key = os.urandom(_SESSION_KEY_BYTES)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)
    rsa_ciphertext = cert.public_key.encrypt(session_key, oaep)
    gcm_ciphertext = AESGCM(session_key).encrypt(_ZERO_NONCE, data, None)
    blob = len(rsa_ciphertext).to_bytes(2, "big") + rsa_ciphertext + gcm_ciphertext
    return base64.b64encode(blob).decode("ascii")


def check_sealed_value(value: object) -> str | None:
    """Tell whether `value` can be a sealed ciphertext: None if so, else a short reason.

    Catches plaintext pasted where a sealed value belongs. It cannot prove the value decrypts (only
    the controller's private key can), and the reason never repeats the value, which may be a secret.
    """
    if not isinstance(value, str):
        return f"not a string (got {type(value).__name__})"
    # The controller decodes with Go's base64.StdEncoding, which skips line breaks.
    text = value.replace("\r", "").replace("\n", "")
    if not _STD_BASE64.fullmatch(text):
        return "not standard base64 (the '+/' alphabet, padded with '=')"
    blob = base64.b64decode(text, validate=True)
    if len(blob) < 2 + min(_RSA_CIPHERTEXT_BYTES) + _GCM_TAG_BYTES:
        return "too short"
    rsa_len = int.from_bytes(blob[:2], "big")
    if rsa_len not in _RSA_CIPHERTEXT_BYTES:
        return f"length prefix does not match a {_KEY_SIZES_TEXT} key"
    if len(blob) < 2 + rsa_len + _GCM_TAG_BYTES:
        return f"too short for a {rsa_len * 8}-bit key (truncated?)"
    return None


def _pem_problem(data: bytes) -> str:
    """What is wrong with a file that is not a PEM certificate, in words a user can act on."""
    # cryptography's own message is about PEM framing and ASN.1, which tells a user little.
    if b"-----BEGIN CERTIFICATE-----" in data:
        return "its CERTIFICATE block is damaged"
    if b"PRIVATE KEY-----" in data:
        return "it holds a private key, which must never be committed; only the certificate is needed"
    return "no -----BEGIN CERTIFICATE----- block"


def _key_kind(key: object) -> str:
    """A readable name for a non-RSA public key type, for error messages."""
    kind = type(key).__name__.removeprefix("_")
    return kind.removesuffix("PublicKey") or kind
