"""A deterministic cpio archive ("newc", the format Linux unpacks as an initramfs).

Every entry is written with owner root, mtime 0 and inode numbers in archive order, so the
same entries give the same bytes on any machine; the layout is the kernel's
(Documentation/driver-api/early-userspace/buffer-format.rst).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member: a path without leading slash, its mode (type and permissions), its data."""

    path: str
    mode: int
    data: bytes = b""
    device: tuple[int, int] = (0, 0)


def directory(path: str) -> Entry:
    return Entry(path, stat.S_IFDIR | 0o755)


def regular(path: str, data: bytes, executable: bool = False) -> Entry:
    return Entry(path, stat.S_IFREG | (0o755 if executable else 0o644), data)


def character_device(path: str, major: int, minor: int) -> Entry:
    return Entry(path, stat.S_IFCHR | 0o600, device=(major, minor))


def archive(entries: list[Entry]) -> bytes:
    """The archive of `entries` in path order (parents before children), ending with the trailer."""
    paths = [entry.path for entry in entries]
    if len(set(paths)) != len(paths):
        raise ValueError("duplicate archive paths")
    out = bytearray()
    for inode, entry in enumerate(sorted(entries, key=lambda e: e.path.split("/")), start=1):
        _member(out, inode, entry.path, entry.mode, entry.data, entry.device, nlink=2 if stat.S_ISDIR(entry.mode)
                else 1)
    _member(out, 0, TRAILER, 0, b"", (0, 0), nlink=1)
    return bytes(out)


def _member(out: bytearray, inode: int, path: str, mode: int, data: bytes, device: tuple[int, int],
            nlink: int) -> None:
    name = path.encode() + b"\0"
    # ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check
    fields = (inode, mode, 0, 0, nlink, 0, len(data), 0, 0, device[0], device[1], len(name), 0)
    out += MAGIC + b"".join(b"%08X" % value for value in fields) + name
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
