"""Before signing: refuse a payload that carries private-key material (behind the build sandbox).

The sandbox keeps keys out of the builds' reach; this scan is what stops a key that got
into a payload anyway (a sandbox turned off, a key left where a build could read it) from
being signed and shipped. It looks for, in this order:
- PEM blocks of any private key (RSA, EC, PKCS#8, encrypted, OpenSSH, ...);
- DER private keys that really parse as keys: PKCS#1 RSAPrivateKey, PKCS#8, SEC1 EC;
- the configured signing key itself: its file's bytes, its DER forms, its modulus and each
  private number (d, p, q, the CRT values) big- and little-endian (a bignum in memory),
  in 32-byte pieces, so any copy of 64 bytes or more is found, wherever it starts.
The first finding is named by the section and offset that hold it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..elf.reader import read_elf
from ..errors import PayloadRejected, XspliceError

PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----")
# A DER SEQUENCE (short or long form length) whose first member is INTEGER 0 (PKCS#1, PKCS#8) or
# INTEGER 1 (SEC1 EC): where every private key encoding starts.
DER_KEY_START = re.compile(rb"\x30(?:[\x00-\x7f]|\x81[\x80-\xff]|\x82[\x01-\xff].|\x83[\x01-\xff]..)\x02\x01[\x00\x01]",
                           re.DOTALL)
PIECE = 32


@dataclass(frozen=True)
class Finding:
    offset: int
    what: str


@dataclass(frozen=True)
class SigningKeyBytes:
    """Byte strings only the configured key holds, each with what it is."""

    forms: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, key: rsa.RSAPrivateKey, key_file: bytes) -> SigningKeyBytes:
        # Most specific first: a piece of the DER is a piece of one of the numbers, named as that number.
        numbers = key.private_numbers()
        values = {"private exponent": numbers.d, "prime p": numbers.p, "prime q": numbers.q,
                  "CRT exponent dp": numbers.dmp1, "CRT exponent dq": numbers.dmq1, "CRT coefficient": numbers.iqmp,
                  "modulus": numbers.public_numbers.n}
        forms: list[tuple[str, bytes]] = []
        for name, value in values.items():
            big = value.to_bytes((value.bit_length() + 7) // 8, "big")
            forms += [(f"{name} (big-endian)", big), (f"{name} (little-endian)", big[::-1])]
        forms += [("DER (PKCS#8)", key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption())),
                  ("DER (PKCS#1)", key.private_bytes(serialization.Encoding.DER,
                                                     serialization.PrivateFormat.TraditionalOpenSSL,
                                                     serialization.NoEncryption())),
                  ("key file", key_file)]
        return cls(tuple(forms))


def find_key_material(data: bytes, signing_key: SigningKeyBytes | None = None) -> Finding | None:
    """The first key material in `data`: a PEM block, else a DER key, else the signing key's first form found."""
    pem = min(_pem_blocks(data), key=lambda finding: finding.offset, default=None)
    return pem or next(_der_keys(data), None) or next(_signing_key(data, signing_key), None)


def refuse_key_material(data: bytes, name: str, signing_key: SigningKeyBytes | None = None) -> None:
    """Raise PayloadRejected (one line: section, offset, what) when `data` holds key material."""
    finding = find_key_material(data, signing_key)
    if finding is not None:
        raise PayloadRejected(f"{name}: {where(data, name, finding.offset)} holds {finding.what}: a build must never "
                              "reach a private key; refusing to sign it (see docs/security.md)")


def where(data: bytes, name: str, offset: int) -> str:
    """`section NAME+0xN (file offset 0xM)`, or the file offset alone outside any section or ELF."""
    try:
        sections = read_elf(data, name).sections
    except XspliceError:
        sections = []
    for section in sections:
        if section.size and section.data and section.offset <= offset < section.offset + len(section.data):
            return f"section {section.name}+{offset - section.offset:#x} (file offset {offset:#x})"
    return f"file offset {offset:#x}"


def _pem_blocks(data: bytes) -> Iterator[Finding]:
    for match in PEM_PRIVATE_KEY.finditer(data):
        yield Finding(match.start(), f"a PEM private key block ({match.group().decode('ascii').strip('-')})")


def _der_keys(data: bytes) -> Iterator[Finding]:
    for match in DER_KEY_START.finditer(data):
        start = match.start()
        encoded = data[start:start + _der_length(data, start)]
        try:
            key = serialization.load_der_private_key(encoded, password=None, unsafe_skip_rsa_key_validation=True)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
        yield Finding(start, f"a DER private key ({_der_kind(key, data, match.end())}, {len(encoded)} bytes)")


def _der_kind(key: object, data: bytes, after_version: int) -> str:
    """PKCS#8 has an AlgorithmIdentifier SEQUENCE after its version; PKCS#1 and SEC1 a number or a string."""
    algorithm = "RSA" if isinstance(key, rsa.RSAPrivateKey) else "EC" if isinstance(key, ec.EllipticCurvePrivateKey) \
        else type(key).__name__
    if data[after_version:after_version + 1] == b"\x30":
        return f"{algorithm}, PKCS#8"
    return f"{algorithm}, {'PKCS#1' if algorithm == 'RSA' else 'SEC1' if algorithm == 'EC' else 'traditional'}"


def _der_length(data: bytes, start: int) -> int:
    """Header plus content length of the DER element at `start` (the regular expression checked its form)."""
    first = data[start + 1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    return 2 + count + int.from_bytes(data[start + 2:start + 2 + count], "big")


def _signing_key(data: bytes, signing_key: SigningKeyBytes | None) -> Iterator[Finding]:
    if signing_key is None:
        return
    for what, blob in signing_key.forms:
        for piece_start in range(0, max(len(blob) - PIECE, 0) + 1, PIECE):
            piece = blob[piece_start:piece_start + PIECE]
            offset = data.find(piece)
            if len(piece) == PIECE and offset >= 0:
                yield Finding(offset, f"bytes of the signing key's {what} (its bytes {piece_start}..."
                                      f"{piece_start + PIECE - 1})")
                break
