"""Stage 7, sign: a PKCS#7 signature appended to the payload, in Linux's module format.

Layout of a signed payload (the xSplice design's last slide; scripts/sign-file.c):
    payload | PKCS#7 DER (CMS signedData, detached, no certificates, no attributes)
            | struct module_signature (12 bytes) | "~Module signature appended~\\n"
RSA with PKCS#1 v1.5 padding is deterministic: the same key and payload always give
the same signature bytes, so a signed release can be rebuilt bit for bit.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import struct
import subprocess
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import ConfigError, SignatureError
from ..files import ELF_LIMIT, KEY_LIMIT, read_input, write_atomic
from ..keys import SigningKeys as SigningKeys  # re-exported: where the keys are is keys.py's
from ..keys import _mode_warning
from ..keys import configured_keys as configured_keys
from ..keys import key_mode_warning as key_mode_warning

MARKER = b"~Module signature appended~\n"
# struct module_signature: algo, hash, id_type, signer_len, key_id_len, __pad[3], be32 sig_len
MODULE_SIGNATURE = struct.Struct(">BBBBB3xI")
PKEY_ID_PKCS7 = 2
REQUIRE_CODE_SIGNING_ENV = "XSPLICE_REQUIRE_CODE_SIGNING"
DEVELOPMENT_SUBJECT = "xsplice-build DEVELOPMENT signing key - not for production"


def make_development_keys(keys: SigningKeys) -> None:
    """A clearly labelled RSA-3072 key and self-signed code-signing certificate, key mode 0600."""
    keys.key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEVELOPMENT_SUBJECT)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(private, hashes.SHA256())
    )
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    write_atomic(keys.key, pem, mode=0o600)
    write_atomic(keys.certificate, certificate.public_bytes(serialization.Encoding.PEM))


def load_keys(keys: SigningKeys) -> tuple[rsa.RSAPrivateKey, x509.Certificate, list[str]]:
    """The private key and certificate; warnings for a key others can read."""
    missing = ("signing key or certificate missing; run `doit dev-keys` for a development pair or set "
               "XSPLICE_SIGNING_KEY/XSPLICE_SIGNING_CERT")
    key_bytes = read_input(keys.key, "signing key", KEY_LIMIT, missing)
    certificate_bytes = read_input(keys.certificate, "signing certificate", KEY_LIMIT, missing)
    try:
        mode = keys.key.stat().st_mode
        key, certificate = _parsed(key_bytes, certificate_bytes)
    except (ValueError, TypeError, OSError) as error:
        # Never echo the key file's content: only say which file could not be read.
        raise ConfigError(f"{keys.key} or {keys.certificate}: not a PEM private key and certificate "
                          f"({type(error).__name__})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{keys.key}: signing needs an RSA key (deterministic PKCS#1 v1.5 signatures)")
    if key.public_key().public_numbers() != certificate.public_key().public_numbers():
        raise ConfigError(f"{keys.certificate}: does not belong to the private key {keys.key}")
    warning = _mode_warning(keys.key, mode)
    return key, certificate, [warning] if warning else []


# The keys this process has parsed and checked, by the sha256 of their files' bytes: checking an RSA key
# (which load_pem_private_key does) takes about a tenth of a second, and a build-patch checks it while the
# sandboxed build runs (stages._warm_later_stages), then signs with it.
_PARSED: dict[bytes, tuple[PrivateKeyTypes, x509.Certificate]] = {}


def _parsed(key_bytes: bytes, certificate_bytes: bytes) -> tuple[PrivateKeyTypes, x509.Certificate]:
    digest = hashlib.sha256(hashlib.sha256(key_bytes).digest() + certificate_bytes).digest()
    if digest not in _PARSED:
        _PARSED[digest] = (serialization.load_pem_private_key(key_bytes, password=None),
                           x509.load_pem_x509_certificate(certificate_bytes))
    return _PARSED[digest]


def sign(payload: bytes, key: rsa.RSAPrivateKey, certificate: x509.Certificate) -> bytes:
    signature = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(payload)
        .add_signer(certificate, key, hashes.SHA256(), rsa_padding=padding.PKCS1v15())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.NoAttributes,
                                           pkcs7.PKCS7Options.NoCerts, pkcs7.PKCS7Options.Binary])
    )
    return payload + signature + MODULE_SIGNATURE.pack(0, 0, PKEY_ID_PKCS7, 0, 0, len(signature)) + MARKER


def split(signed: bytes, name: str) -> tuple[bytes, bytes]:
    """(payload, DER signature) of a signed payload; refuse anything malformed, each in its own words."""
    if not signed.endswith(MARKER):
        raise SignatureError(f"{name}: no '~Module signature appended~' marker at the end: the payload is unsigned")
    end = len(signed) - len(MARKER)
    if end < MODULE_SIGNATURE.size:
        raise SignatureError(f"{name}: truncated module signature header")
    algo, hash_algo, id_type, signer_len, key_id_len, sig_len = MODULE_SIGNATURE.unpack_from(
        signed, end - MODULE_SIGNATURE.size)
    if id_type != PKEY_ID_PKCS7:
        raise SignatureError(f"{name}: module signature id_type {id_type}, expected {PKEY_ID_PKCS7} (PKCS#7)")
    if algo or hash_algo or signer_len or key_id_len:
        raise SignatureError(f"{name}: module signature header has non-zero algo/hash/signer/key-id fields, "
                             "which PKCS#7 signatures leave zero")
    start = end - MODULE_SIGNATURE.size - sig_len
    if sig_len == 0 or start < 0:
        raise SignatureError(f"{name}: module signature sig_len {sig_len} exceeds the file ({len(signed)} bytes)")
    return signed[:start], signed[start:end - MODULE_SIGNATURE.size]


def verify_file(path: Path, certificate: Path, require_code_signing: bool | None = None) -> bytes:
    """Read a signed payload and check its signature; returns the payload it covers."""
    signed = read_input(path, "signed payload", ELF_LIMIT)
    read_input(certificate, "trusted certificate", KEY_LIMIT,
               "trusted certificate not found; pass --cert or run `doit dev-keys`")
    return verify(signed, certificate, str(path), require_code_signing)


def verify(signed: bytes, certificate_path: Path, name: str, require_code_signing: bool | None = None) -> bytes:
    """Check the signature with openssl against `certificate_path`; returns the payload it covers.

    `require_code_signing` (default: XSPLICE_REQUIRE_CODE_SIGNING=1) also asks that the certificate be
    one issued for code signing (extended key usage codeSigning), as a production trust store would.
    """
    payload, signature = split(signed, name)
    if require_code_signing is None:
        require_code_signing = os.environ.get(REQUIRE_CODE_SIGNING_ENV, "") not in ("", "0")
    if require_code_signing:
        check_code_signing(certificate_path)
    with tempfile.TemporaryDirectory(prefix="xsplice-verify-") as scratch:
        content, der = Path(scratch) / "payload", Path(scratch) / "signature"
        content.write_bytes(payload)
        der.write_bytes(signature)
        result = subprocess.run(
            ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(der), "-content", str(content),
             "-certfile", str(certificate_path), "-nointern", "-noverify", "-out", os.devnull],
            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SignatureError(f"{name}: signature does not verify with {certificate_path}: "
                             f"{_openssl_reason(result.stderr)}")
    return payload


def check_code_signing(certificate_path: Path) -> None:
    """Refuse a certificate that was not issued for code signing (no codeSigning extended key usage)."""
    data = read_input(certificate_path, "certificate", KEY_LIMIT)
    try:
        certificate = x509.load_pem_x509_certificate(data)
    except ValueError as error:
        raise SignatureError(f"{certificate_path}: not a readable PEM certificate ({type(error).__name__})") from None
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    except ValueError as error:
        raise SignatureError(f"{certificate_path}: malformed certificate extensions ({error})") from None
    if usages is None or ExtendedKeyUsageOID.CODE_SIGNING not in usages:
        raise SignatureError(f"{certificate_path}: not a code-signing certificate (no codeSigning extended key "
                             f"usage), and {REQUIRE_CODE_SIGNING_ENV} or --require-code-signing asks for one")


# openssl's reasons, in the words a user can act on (the first that matches the error lines).
_OPENSSL_REASONS = (
    ("signer certificate not found", "signed by another key (the signer is not the holder of this certificate)"),
    ("bad signature", "the signature is over different content (the payload changed after it was signed)"),
    ("digest failure", "the signature is over different content (the payload changed after it was signed)"),
    ("content verify error", "the signature is over different content (the payload changed after it was signed)"),
    ("asn1", "the signature is not a well-formed DER PKCS#7 blob (truncated or garbage)"),
    ("could not read any certificate", "the certificate file holds no PEM certificate"),
)


def _openssl_reason(stderr: str) -> str:
    lowered = stderr.lower()
    for needle, reason in _OPENSSL_REASONS:
        if needle in lowered:
            return reason
    for line in stderr.splitlines():
        fields = line.split(":")
        # openssl 3: <thread>:error:<code>:<library>:<function>:<reason>:<file>:<line>:
        if len(fields) >= 6 and fields[1] == "error":
            return f"openssl cms -verify: {fields[5]}"
    return stderr.strip().splitlines()[-1] if stderr.strip() else "openssl cms -verify failed"
