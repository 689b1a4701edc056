"""File helpers every stage shares: inputs read as regular files up to a limit, atomic writes that
replace only regular files, hashes, stage records, tree copies."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import InputError, OutputError, XspliceError

# The most an input of each kind may hold. A device (/dev/zero), a FIFO or a forged file must not
# exhaust memory or hang a read: inputs are regular files read up to their limit, never past it.
ELF_LIMIT = 512 << 20  # objects, images, payloads: a debug xen-syms is tens of MiB
KEY_LIMIT = 1 << 20  # PEM keys and certificates: a few KiB
TEXT_LIMIT = 64 << 20  # TOML definitions, JSON records and manifests, patches


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words (for refusals)."""
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def read_input(path: Path, what: str, limit: int, missing: str | None = None) -> bytes:
    """The bytes of the regular file `path` (`what` it is, for refusals), at most `limit` of them.

    Opened without blocking, so a FIFO is refused instead of waiting for a writer; checked on the open
    descriptor, so what is read is what was checked.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(f"{path}: {missing or f'no such file ({what})'}") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read the {what}: {error.strerror or error}") from None
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):
        os.close(descriptor)
        raise InputError(f"{path}: {file_kind(info.st_mode)}, not a regular file; the {what} must be a file")
    with os.fdopen(descriptor, "rb") as stream:
        try:
            data = stream.read(limit + 1) if info.st_size <= limit else b""
        except OSError as error:
            raise InputError(f"{path}: cannot read the {what}: {error.strerror or error}") from None
    if info.st_size > limit or len(data) > limit:
        raise InputError(f"{path}: {max(info.st_size, len(data))} bytes, more than the {limit} a {what} may hold")
    return data


def check_replaceable(path: Path) -> None:
    """Refuse to put a file where something other than a regular file is (a device, a directory, a link)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as error:
        raise OutputError(f"{path}: cannot write: {error.strerror or error}") from None
    if not stat.S_ISREG(info.st_mode):
        raise OutputError(f"{path}: is {file_kind(info.st_mode)}; refusing to replace it with a file "
                          "(name a regular file or a new path)")


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write via a temporary file in the same directory and rename: readers see old or new, never half.

    Only a regular file (or nothing) is replaced; a full disk or a read-only directory is a one-line
    refusal, and the temporary file is gone whatever happened (an interrupt included).
    """
    check_replaceable(path)
    temporary: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
        temporary = None
    except OSError as error:
        raise OutputError(f"{path}: cannot write: {error.strerror or error}") from None
    finally:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)


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


def read_json(path: Path, what: str, missing: str | None = None) -> Any:
    data = read_input(path, what, TEXT_LIMIT, missing or f"missing ({what}); run the stage that makes it")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise XspliceError(f"{path}: unreadable {what} ({reason}); delete it and run again") from None


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


def sync_tree(source: Path, destination: Path, ignored: Callable[[str], bool]) -> None:
    """Make `destination` what `copy_tree(source, destination)` would, rewriting only the entries that differ.

    An entry is kept when its kind, mode, size and mtime_ns (or link target) are the source's: a
    build changes what it writes in all of these, so resetting a tree a build ran in costs what
    that build wrote, not the whole tree. Entries whose name `ignored` accepts are left out.
    """
    if not destination.is_dir() or destination.is_symlink():
        remove_tree(destination)
        destination.mkdir(parents=True)
    wanted = {entry.name: entry for entry in os.scandir(source) if not ignored(entry.name)}
    for entry in os.scandir(destination):
        if entry.name not in wanted:
            remove_tree(Path(entry.path))
    for name, entry in wanted.items():
        target = destination / name
        if entry.is_symlink():
            if not target.is_symlink() or os.readlink(target) != os.readlink(entry.path):
                remove_tree(target)
                os.symlink(os.readlink(entry.path), target)
        elif entry.is_dir():
            sync_tree(Path(entry.path), target, ignored)
        elif not _same_file_state(entry, target):
            remove_tree(target)  # a new file, never a write through a link into something else
            shutil.copy2(entry.path, target)
    shutil.copystat(source, destination)


def _same_file_state(entry: os.DirEntry[str], target: Path) -> bool:
    try:
        theirs = target.lstat()
    except FileNotFoundError:
        return False
    ours = entry.stat(follow_symlinks=False)
    return (stat.S_ISREG(theirs.st_mode) and ours.st_mode == theirs.st_mode and ours.st_size == theirs.st_size
            and ours.st_mtime_ns == theirs.st_mtime_ns)


def relative(path: Path, root: Path) -> str:
    return os.path.relpath(path, root)
