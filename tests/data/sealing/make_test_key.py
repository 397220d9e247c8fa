"""Regenerate the TEST key pair and its controller-like certificate (run by hand, never by the suite).

    .venv/bin/python tests/data/sealing/make_test_key.py

Writes test-key.pem (PKCS#1, as the controller stores `tls.key`) and test-cert.pem here, and copies the
certificate to examples/control/sealing-cert.pem. Everything sealed with the old pair stops decrypting,
so golden files that hold sealed values must be regenerated afterwards.
"""

from __future__ import annotations

import pathlib
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

HERE = pathlib.Path(__file__).resolve().parent
CHECKOUT = HERE.parents[2]
# tests/ is not a package; put it on the path the way pytest does so the one cert builder is reused.
sys.path.insert(0, str(CHECKOUT / "tests"))

from sealing_support import make_controller_cert  # noqa: E402


def main() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    cert_pem = make_controller_cert(key).public_bytes(serialization.Encoding.PEM)
    (HERE / "test-key.pem").write_bytes(key_pem)
    (HERE / "test-cert.pem").write_bytes(cert_pem)
    (CHECKOUT / "examples" / "control" / "sealing-cert.pem").write_bytes(cert_pem)


if __name__ == "__main__":
    main()
