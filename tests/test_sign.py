"""Signatures: Linux's module-signature format, deterministic, verified by openssl."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import Checkout

from xsplice_build.errors import ConfigError, SignatureError
from xsplice_build.sign import MARKER, SigningKeys, load_keys, make_development_keys, sign, split, verify


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
