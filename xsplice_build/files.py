"""File helpers every stage shares: atomic writes, hashes, stage records, tree copies."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import XspliceError


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write via a temporary file in the same directory and rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def remove_temporaries(directory: Path) -> None:
    """Drop what write_atomic left when a run was killed mid-write; call only where no other task writes."""
    if directory.is_dir():
        for stale in directory.glob(".*.tmp"):
            stale.unlink(missing_ok=True)


def dump_json(value: Any) -> bytes:
    """Canonical JSON: sorted keys, fixed indentation, trailing newline (stable bytes, readable diffs)."""
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def write_json(path: Path, value: Any) -> None:
    """Write a stage record; unchanged content keeps the old file so later stages stay up to date."""
    data = dump_json(value)
    if path.is_file() and path.read_bytes() == data:
        return
    write_atomic(path, data)


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise XspliceError(f"{path}: missing ({what}); run the stage that makes it") from None
    except (OSError, ValueError) as error:
        raise XspliceError(f"{path}: unreadable {what} ({error}); delete it and run again") from None


def remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def copy_tree(source: Path, destination: Path) -> None:
    """Copy a source or build tree, keeping modification times so make sees what is up to date."""
    remove_tree(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, destination, symlinks=True, ignore=shutil.ignore_patterns(".git"))


def relative(path: Path, root: Path) -> str:
    return os.path.relpath(path, root)
