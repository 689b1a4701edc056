"""Signatures: Linux's module-signature format, deterministic, verified by openssl."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import Checkout

from xsplice_build.errors import ConfigError, SignatureError
from xsplice_build.stages.sign import (
    MARKER,
    MODULE_SIGNATURE,
    REQUIRE_CODE_SIGNING_ENV,
    SigningKeys,
    load_keys,
    make_development_keys,
    sign,
    split,
    verify,
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> SigningKeys:
    directory = tmp_path_factory.mktemp("keys")
    pair = SigningKeys(directory / "key.pem", directory / "cert.pem", development=True)
    make_development_keys(pair)
    return pair


def test_signed_payload_has_the_module_signature_layout(keys: SigningKeys) -> None:
    key, certificate, _ = load_keys(keys)
    signed = sign(b"payload bytes", key, certificate)
    assert signed.startswith(b"payload bytes") and signed.endswith(MARKER)
    header = signed[-len(MARKER) - 12:-len(MARKER)]
    algo, hash_algo, id_type, signer_len, key_id_len, *pad, sig_len = struct.unpack(">BBBBBBBBI", header)
    assert (algo, hash_algo, id_type, signer_len, key_id_len, pad) == (0, 0, 2, 0, 0, [0, 0, 0])
    assert len(signed) == len(b"payload bytes") + sig_len + 12 + len(MARKER)


def test_signing_is_deterministic(keys: SigningKeys) -> None:
    key, certificate, _ = load_keys(keys)
    assert sign(b"same", key, certificate) == sign(b"same", key, certificate)


def test_openssl_verifies_and_tampering_is_refused(keys: SigningKeys) -> None:
    key, certificate, _ = load_keys(keys)
    signed = sign(b"\x7fELF payload", key, certificate)
    assert verify(signed, keys.certificate, "p") == b"\x7fELF payload"
    tampered = b"\x7fELF paYload" + signed[len(b"\x7fELF payload"):]
    with pytest.raises(SignatureError, match="does not verify"):
        verify(tampered, keys.certificate, "p")


def test_malformed_trailers_are_refused_each_in_its_own_words(keys: SigningKeys) -> None:
    key, certificate, _ = load_keys(keys)
    signed = sign(b"body", key, certificate)
    with pytest.raises(SignatureError, match=r"no .~Module signature appended~. marker"):
        split(b"body", "p")
    header_at = len(signed) - len(MARKER) - 12
    huge = signed[:header_at + 8] + struct.pack(">I", 1 << 30) + MARKER
    with pytest.raises(SignatureError, match=r"sig_len .* exceeds the file"):
        split(huge, "p")
    other_type = signed[:header_at + 2] + b"\x01" + signed[header_at + 3:]
    with pytest.raises(SignatureError, match="id_type 1, expected 2"):
        split(other_type, "p")


def test_the_development_key_is_private_and_labelled(keys: SigningKeys) -> None:
    assert keys.key.stat().st_mode & 0o777 == 0o600
    assert b"DEVELOPMENT" in subprocess.run(["openssl", "x509", "-noout", "-subject", "-in", str(keys.certificate)],
                                            capture_output=True, check=True).stdout
    os.chmod(keys.key, 0o644)
    try:
        assert "readable by group or others" in load_keys(keys)[2][0]
    finally:
        os.chmod(keys.key, 0o600)


def test_a_key_that_is_not_pem_is_refused_without_echoing_it(tmp_path: Path) -> None:
    bad = SigningKeys(tmp_path / "k.pem", tmp_path / "c.pem", development=False)
    bad.key.write_text("SECRET-MATERIAL")
    bad.certificate.write_text("nope")
    with pytest.raises(ConfigError) as error:
        load_keys(bad)
    assert "SECRET-MATERIAL" not in str(error.value)


def test_openssl_cms_accepts_the_pipelines_payload(built_once: Checkout, tmp_path: Path) -> None:
    report = built_once.report("XSA-131")
    signed = (built_once.out("XSA-131") / "XSA-131.livepatch").read_bytes()
    payload, signature = split(signed, "XSA-131.livepatch")
    (tmp_path / "body").write_bytes(payload)
    (tmp_path / "sig").write_bytes(signature)
    certificate = (built_once.out("XSA-131") / report["signer_certificate"]).resolve()
    subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(tmp_path / "sig"),
                    "-content", str(tmp_path / "body"), "-certfile", str(certificate), "-noverify",
                    "-out", os.devnull], check=True, capture_output=True)
    private = (built_once.root / "keys" / "development" / "signing_key.pem").read_bytes()
    for path in built_once.root.joinpath("out").rglob("*"):
        if path.is_file():
            assert private not in path.read_bytes() and b"PRIVATE KEY" not in path.read_bytes()


def _other_certificate(directory: Path, key_of: SigningKeys | None, code_signing: bool) -> Path:
    """A certificate for `key_of`'s key (or a new key), with or without the codeSigning usage."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = (serialization.load_pem_private_key(key_of.key.read_bytes(), None) if key_of
           else rsa.generate_private_key(public_exponent=65537, key_size=2048))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "another certificate")])
    usage = ExtendedKeyUsageOID.CODE_SIGNING if code_signing else ExtendedKeyUsageOID.SERVER_AUTH
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .sign(key, hashes.SHA256()))
    path = directory / f"other-{'code' if code_signing else 'server'}-{'same' if key_of else 'new'}.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def _resigned(payload: bytes, signature: bytes) -> bytes:
    return payload + signature + MODULE_SIGNATURE.pack(0, 0, 2, 0, 0, len(signature)) + MARKER


def _refused(signed: bytes, certificate: Path, **options: bool) -> str:
    with pytest.raises(SignatureError) as error:
        verify(signed, certificate, "p.livepatch", **options)
    message = str(error.value)
    assert message.startswith(("p.livepatch: ", str(certificate))) and "\n" not in message
    return message


def test_each_broken_signature_is_refused_in_its_own_words(keys: SigningKeys, tmp_path: Path) -> None:
    key, certificate, _ = load_keys(keys)
    signed = sign(b"\x7fELF payload", key, certificate)
    payload, der = split(signed, "p")
    another_key = _other_certificate(tmp_path, None, code_signing=True)
    assert "signed by another key" in _refused(signed, another_key)
    assert "over different content" in _refused(b"\x7fELF paYload" + signed[len(payload):], keys.certificate)
    other_content = sign(b"\x7fELF other", key, certificate)
    assert "over different content" in _refused(payload + other_content[len(b"\x7fELF other"):], keys.certificate)
    assert "not a well-formed DER PKCS#7 blob" in _refused(_resigned(payload, der[:-20]), keys.certificate)
    assert "not a well-formed DER PKCS#7 blob" in _refused(_resigned(payload, bytes(range(256))), keys.certificate)
    assert "not a well-formed DER PKCS#7 blob" in _refused(_resigned(payload, b"\x30\x82" + b"\xff" * 40),
                                                           keys.certificate)
    assert "no '~Module signature appended~' marker" in _refused(payload, keys.certificate)
    assert "truncated module signature header" in _refused(MARKER, keys.certificate)
    assert "exceeds the file" in _refused(_resigned(b"", b"")[:-len(MARKER) - 12] +
                                          MODULE_SIGNATURE.pack(0, 0, 2, 0, 0, 1 << 31) + MARKER, keys.certificate)
    assert "non-zero algo/hash/signer/key-id" in _refused(
        payload + der + MODULE_SIGNATURE.pack(1, 0, 2, 0, 0, len(der)) + MARKER, keys.certificate)


def test_a_certificate_not_for_code_signing_is_refused_when_asked(keys: SigningKeys, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    key, certificate, _ = load_keys(keys)
    signed = sign(b"\x7fELF payload", key, certificate)
    server_certificate = _other_certificate(tmp_path, keys, code_signing=False)
    # Without the requirement the certificate's purpose is not looked at (openssl then finds the signer,
    # named by issuer and serial, is not its holder).
    assert "code-signing" not in _refused(signed, server_certificate)
    assert "not a code-signing certificate" in _refused(signed, server_certificate, require_code_signing=True)
    monkeypatch.setenv(REQUIRE_CODE_SIGNING_ENV, "1")
    assert "not a code-signing certificate" in _refused(signed, server_certificate)
    # The development certificate is a code-signing one.
    assert verify(signed, keys.certificate, "p.livepatch") == b"\x7fELF payload"
