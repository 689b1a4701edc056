"""Where the signing key pair is: configured, or the development pair under keys/.

Apart from the signing code on purpose: the build sandbox must know where the key is to
cover it, and must not load (nor be rebuilt by a change of) the code that signs.
"""

from __future__ import annotations

import os
import stat
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


def key_mode_warning(keys: SigningKeys) -> str | None:
    """A warning when the private key exists and group or others may read or write it."""
    try:
        mode = keys.key.stat().st_mode
    except OSError:
        return None
    return _mode_warning(keys.key, mode)


def _mode_warning(path: Path, mode: int) -> str | None:
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"{path}: private key is readable by group or others (mode {mode & 0o777:o}); chmod 600 it"
    return None
