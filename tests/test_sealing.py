"""generator/sealing.py against the controller's format: decrypted by an independent HybridDecrypt
(tests/sealing_support.py) and checked against fixtures made with Go's own crypto."""

from __future__ import annotations

import base64
import hashlib
import pathlib
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from sealing_support import (
    TEST_KEY_DIR,
    UnsealError,
    make_controller_cert,
    test_cert,
    test_private_key,
    unseal,
    unseal_with_label,
)

from generator.errors import UserError
from generator.sealing import SealingCert, check_sealed_value, seal

NAMESPACE = "team-a"
NAME = "db-creds"
GO_SEALED_PLAINTEXT = "correct horse battery staple ✓".encode()
CHECKOUT = pathlib.Path(__file__).parent.parent
# Exactly what Go's x509 writes for KeyUsage=encipherOnly: extnID, critical TRUE, BIT STRING 0x01.
ENCIPHER_ONLY_EXTENSION_DER = bytes.fromhex("300e0603551d0f0101ff040403020001")


def cert_for(key: RSAPrivateKey | ec.EllipticCurvePrivateKey, **validity: datetime) -> bytes:
    return make_controller_cert(key, **validity).public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="session")
def rsa_2048_key() -> RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def rsa_2048_cert(rsa_2048_key: RSAPrivateKey) -> SealingCert:
    return SealingCert.from_pem(cert_for(rsa_2048_key), "cert-2048.pem")


@pytest.fixture(scope="session")
def certs_by_size(rsa_2048_cert: SealingCert) -> dict[int, SealingCert]:
    """The sizes worth covering: the controller's default (4096) and the smallest accepted (2048)."""
    return {2048: rsa_2048_cert, 4096: test_cert()}


def go_sealed() -> str:
    return (TEST_KEY_DIR / "go-sealed.txt").read_text().strip()


# --- seal ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plaintext", "expected"),
    [
        (b"", b""),
        ("hunter2", b"hunter2"),
        ("pässwörd ✓", "pässwörd ✓".encode()),
        (bytes(range(256)), bytes(range(256))),
        (b"x" * 65536, b"x" * 65536),
    ],
    ids=["empty", "ascii-str", "unicode-str-as-utf8", "binary", "64KiB"],
)
def test_seal_round_trip_recovers_plaintext(plaintext: bytes | str, expected: bytes) -> None:
    sealed = seal(test_cert(), plaintext, NAMESPACE, NAME)
    assert unseal(test_private_key(), sealed, NAMESPACE, NAME) == expected


def test_seal_2048_bit_cert_round_trips(rsa_2048_key: RSAPrivateKey, rsa_2048_cert: SealingCert) -> None:
    sealed = seal(rsa_2048_cert, "hunter2", NAMESPACE, NAME)
    assert unseal(rsa_2048_key, sealed, NAMESPACE, NAME) == b"hunter2"


@pytest.mark.parametrize(
    ("namespace", "name"),
    [("team-b", NAME), (NAMESPACE, "db-creds-2"), (NAME, NAMESPACE)],
    ids=["other-namespace", "other-name", "swapped"],
)
def test_seal_other_namespace_or_name_fails_to_decrypt(namespace: str, name: str) -> None:
    sealed = seal(test_cert(), "hunter2", NAMESPACE, NAME)
    with pytest.raises(UnsealError):
        unseal(test_private_key(), sealed, namespace, name)


@pytest.mark.parametrize(
    "label",
    [NAMESPACE.encode(), b"", (NAMESPACE + NAME).encode()],
    ids=["namespace-wide", "cluster-wide", "no-slash-as-upstream-docs-say"],
)
def test_seal_other_scope_label_fails_to_decrypt(label: bytes) -> None:
    sealed = seal(test_cert(), "hunter2", NAMESPACE, NAME)
    with pytest.raises(UnsealError):
        unseal_with_label(test_private_key(), sealed, label)


def test_seal_same_input_gives_different_output() -> None:
    assert seal(test_cert(), "hunter2", NAMESPACE, NAME) != seal(test_cert(), "hunter2", NAMESPACE, NAME)


@pytest.mark.parametrize("plaintext_len", [0, 1, 100])
@pytest.mark.parametrize("bits", [2048, 4096])
def test_seal_length_is_prefix_rsa_block_plaintext_and_tag(
    certs_by_size: dict[int, SealingCert], bits: int, plaintext_len: int
) -> None:
    blob = base64.b64decode(seal(certs_by_size[bits], b"x" * plaintext_len, NAMESPACE, NAME), validate=True)
    assert len(blob) == 2 + bits // 8 + plaintext_len + 16


@pytest.mark.parametrize(("bits", "prefix"), [(2048, "AQ"), (4096, "Ag")])
def test_seal_text_prefix_matches_key_size(
    certs_by_size: dict[int, SealingCert], bits: int, prefix: str
) -> None:
    assert seal(certs_by_size[bits], "hunter2", NAMESPACE, NAME).startswith(prefix)


@pytest.mark.parametrize("plaintext_len", [0, 1, 2])
def test_seal_output_is_padded_standard_base64_on_one_line(plaintext_len: int) -> None:
    sealed = seal(test_cert(), b"x" * plaintext_len, NAMESPACE, NAME)
    assert re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", sealed)
    assert len(sealed) % 4 == 0


@pytest.mark.parametrize(
    ("namespace", "name"), [("", NAME), (NAMESPACE, "")], ids=["no-namespace", "no-name"]
)
def test_seal_without_namespace_or_name_raises_user_error(namespace: str, name: str) -> None:
    with pytest.raises(UserError, match="namespace and a Secret name"):
        seal(test_cert(), "hunter2", namespace, name)


def test_unseal_decrypts_value_sealed_by_go() -> None:
    # Pins the test decryptor to Go's crypto, so round trips through it say something about the controller.
    assert unseal(test_private_key(), go_sealed(), NAMESPACE, NAME) == GO_SEALED_PLAINTEXT


# --- check_sealed_value ---------------------------------------------------------------------------


def wrapped(text: str, newline: str) -> str:
    return newline.join(text[i : i + 76] for i in range(0, len(text), 76)) + newline


@pytest.mark.parametrize(
    "make_value",
    [
        lambda: seal(test_cert(), "hunter2", NAMESPACE, NAME),
        lambda: seal(test_cert(), b"", NAMESPACE, NAME),
        go_sealed,
        lambda: wrapped(go_sealed(), "\n"),
        lambda: wrapped(go_sealed(), "\r\n"),
    ],
    ids=["sealed-4096", "sealed-empty-plaintext", "sealed-by-go", "line-wrapped", "crlf-wrapped"],
)
def test_check_sealed_value_accepts_ciphertext(make_value: Callable[[], str]) -> None:
    assert check_sealed_value(make_value()) is None


def test_check_sealed_value_accepts_2048_bit_ciphertext(rsa_2048_cert: SealingCert) -> None:
    assert check_sealed_value(seal(rsa_2048_cert, "hunter2", NAMESPACE, NAME)) is None


def url_safe() -> str:
    blob = base64.b64decode(go_sealed())
    text = base64.urlsafe_b64encode(blob).decode()
    assert "-" in text or "_" in text, "fixture must exercise the URL-safe alphabet"
    return text


def unpadded() -> str:
    text = seal(test_cert(), b"12345678", NAMESPACE, NAME)  # 538 bytes: not a multiple of 3
    assert text.endswith("=")
    return text.rstrip("=")


BAD_STRINGS = {
    "plaintext": (lambda: "hunter2", "not standard base64"),
    "plaintext-in-base64-alphabet": (lambda: "pass1234", "too short"),
    "plaintext-sentence": (lambda: "my database password is s3cr3t!", "not standard base64"),
    "base64-of-secret": (lambda: base64.b64encode(b"supersecretvalue").decode(), "too short"),
    "url-safe-base64": (url_safe, "not standard base64"),
    "unpadded-base64": (unpadded, "not standard base64"),
    "truncated-mid-quad": (lambda: go_sealed()[:-3], "not standard base64"),
    "truncated-on-quad": (lambda: go_sealed()[:400], "too short"),
    "truncated-in-tag": (lambda: base64.b64encode(base64.b64decode(go_sealed())[:520]).decode(), "too short"),
    "1024-bit-prefix": (lambda: base64.b64encode(b"\x00\x80" + bytes(400)).decode(), "length prefix"),
    "3072-bit-prefix-truncated": (
        lambda: base64.b64encode(b"\x01\x80" + bytes(390)).decode(),
        "3072-bit key",
    ),
    "empty": (lambda: "", "too short"),
    "spaces": (lambda: go_sealed()[:100] + " " + go_sealed()[100:], "not standard base64"),
}


@pytest.mark.parametrize(("make_value", "reason_part"), BAD_STRINGS.values(), ids=BAD_STRINGS.keys())
def test_check_sealed_value_rejects_non_ciphertext_string(
    make_value: Callable[[], str], reason_part: str
) -> None:
    reason = check_sealed_value(make_value())
    assert reason is not None
    assert reason_part in reason


@pytest.mark.parametrize("value", [None, 42, b"AgBtxiFQ", ["AgBtxiFQ"], {"value": "AgBtxiFQ"}])
def test_check_sealed_value_rejects_non_string(value: object) -> None:
    reason = check_sealed_value(value)
    assert reason is not None
    assert reason.startswith("not a string")


@pytest.mark.parametrize(
    "value",
    [
        "hunter2-Zq9",
        "my database password is s3cr3t!",
        "kQ9x+mZr/secretpw",  # base64 alphabet, wrong length
        "c2VjcmV0LXBhc3N3b3Jk",  # valid base64 of a secret
        "x7Zk" * 100,  # valid base64 with a wrong length prefix
        base64.b64encode(b"\x02\x00" + b"secret-pw!" * 30).decode(),  # 4096-bit prefix, too short
    ],
)
def test_check_sealed_value_reason_never_echoes_value(value: str) -> None:
    reason = check_sealed_value(value)
    assert reason is not None
    windows = {value[i : i + 6] for i in range(len(value) - 5)}
    assert not [w for w in windows if w in reason]


# --- SealingCert ---------------------------------------------------------------------------------


@pytest.mark.parametrize("file_name", ["test-cert.pem", "go-controller-cert.pem"])
def test_sealing_cert_load_controller_cert_succeeds(file_name: str) -> None:
    cert = SealingCert.load(TEST_KEY_DIR / file_name)
    assert cert.public_key.key_size == 4096


@pytest.mark.parametrize("file_name", ["test-cert.pem", "go-controller-cert.pem"])
def test_controller_cert_fixture_has_encipher_only_key_usage(file_name: str) -> None:
    # The quirk that makes `cryptography` raise on extensions must really be in the fixtures.
    pem = (TEST_KEY_DIR / file_name).read_bytes()
    der = base64.b64decode(b"".join(pem.splitlines()[1:-1]))
    assert ENCIPHER_ONLY_EXTENSION_DER in der


def test_sealing_cert_fingerprint_is_sha256_of_subject_public_key_info() -> None:
    spki = (
        test_private_key()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert test_cert().fingerprint == hashlib.sha256(spki).hexdigest()


def test_sealing_cert_fingerprint_same_key_in_other_cert_is_equal() -> None:
    assert SealingCert.load(TEST_KEY_DIR / "go-controller-cert.pem").fingerprint == test_cert().fingerprint


def test_sealing_cert_fingerprint_other_key_differs(rsa_2048_cert: SealingCert) -> None:
    assert rsa_2048_cert.fingerprint != test_cert().fingerprint


def test_example_sealing_cert_is_test_cert() -> None:
    # Lets tests unseal what is rendered from the examples; regenerate both with make_test_key.py.
    example = CHECKOUT / "examples" / "control" / "sealing-cert.pem"
    assert example.read_bytes() == (TEST_KEY_DIR / "test-cert.pem").read_bytes()


def test_sealing_cert_load_missing_file_raises_user_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "sealing-cert.pem"
    with pytest.raises(
        UserError, match=r"sealing-cert\.pem: sealing certificate not found.*kubeseal --fetch-cert"
    ):
        SealingCert.load(path)


def test_sealing_cert_load_directory_raises_user_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(UserError, match=r"cannot be read.*kubeseal --fetch-cert"):
        SealingCert.load(tmp_path)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "no -----BEGIN CERTIFICATE----- block"),
        (b"not a certificate at all\n", "no -----BEGIN CERTIFICATE----- block"),
        (b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n", "block is damaged"),
        ((TEST_KEY_DIR / "test-key.pem").read_bytes(), "holds a private key"),
    ],
    ids=["empty", "garbage", "broken-pem", "private-key"],
)
def test_sealing_cert_load_non_certificate_raises_user_error(
    tmp_path: pathlib.Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "sealing-cert.pem"
    path.write_bytes(content)
    with pytest.raises(
        UserError, match=r"sealing-cert\.pem: not a PEM certificate \(.*kubeseal --fetch-cert"
    ) as raised:
        SealingCert.load(path)
    assert problem in str(raised.value)


def test_sealing_cert_load_non_certificate_does_not_echo_private_key(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "sealing-cert.pem"
    key_pem = (TEST_KEY_DIR / "test-key.pem").read_bytes()
    path.write_bytes(key_pem)
    with pytest.raises(UserError) as raised:
        SealingCert.load(path)
    assert key_pem.splitlines()[1].decode() not in str(raised.value)


def test_sealing_cert_load_expired_cert_raises_user_error(tmp_path: pathlib.Path) -> None:
    now = datetime.now(UTC)
    path = tmp_path / "sealing-cert.pem"
    path.write_bytes(
        cert_for(test_private_key(), not_before=now - timedelta(days=3700), not_after=now - timedelta(days=2))
    )
    expiry = (now - timedelta(days=2)).date().isoformat()
    with pytest.raises(
        UserError, match=rf"sealing-cert\.pem: the certificate expired on {expiry}.*--fetch-cert"
    ):
        SealingCert.load(path)


def test_sealing_cert_load_ec_cert_raises_user_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "sealing-cert.pem"
    path.write_bytes(cert_for(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(UserError, match=r"sealing-cert\.pem: the certificate's key is EC, not the RSA key"):
        SealingCert.load(path)


def test_sealing_cert_from_pem_unsupported_rsa_size_raises_user_error() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(UserError, match=r"cert\.pem: .*1024-bit RSA key"):
        SealingCert.from_pem(cert_for(small), "cert.pem")
