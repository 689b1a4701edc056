"""Where the signing key pair is: configured, or the development pair under keys/.

Apart from the signing code on purpose: the build sandbox must know where the key is to
cover it, and must not load (nor be rebuilt by a change of) the code that signs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError


@dataclass(frozen=True)
class SigningKeys:
    key: Path
    certificate: Path
    development: bool


def configured_keys(root: Path) -> SigningKeys:
    """XSPLICE_SIGNING_KEY/XSPLICE_SIGNING_CERT when set, else the development pair under keys/."""
    key, certificate = os.environ.get("XSPLICE_SIGNING_KEY"), os.environ.get("XSPLICE_SIGNING_CERT")
    if bool(key) != bool(certificate):
        raise ConfigError("set both XSPLICE_SIGNING_KEY and XSPLICE_SIGNING_CERT, or neither (to use the "
                          "development key pair)")
    if key and certificate:
        return SigningKeys(Path(key), Path(certificate), development=False)
    directory = root / "keys" / "development"
    return SigningKeys(directory / "signing_key.pem", directory / "signing_cert.pem", development=True)
