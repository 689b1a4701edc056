"""One doit build at a time per checkout: an advisory lock on work/.lock (fcntl.flock).

Two builds in the same checkout (`doit build-patch`, or `xen-xsplice boot` building a base image)
would write the same stage trees and share doit's dependency database; the second waits (saying
so, in one line) until the first is done, and refuses in one line if it has waited longer than
XSPLICE_LOCK_TIMEOUT seconds (default 3600). The kernel drops the lock when its holder exits,
however it exits, so a crashed build never leaves it held.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import XspliceError

TIMEOUT_ENV = "XSPLICE_LOCK_TIMEOUT"
DEFAULT_TIMEOUT = 3600.0
POLL_SECONDS = 0.2


class LockTimeout(XspliceError):
    """Another build held the checkout's lock for longer than we were willing to wait."""


def lock_timeout() -> float:
    value = os.environ.get(TIMEOUT_ENV, "")
    try:
        return float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        raise XspliceError(f"{TIMEOUT_ENV}={value!r} is not a number of seconds") from None


@contextmanager
def exclusive(path: Path, timeout: float, announce: Callable[[str], None]) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the block; wait up to `timeout` seconds for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if not _try_lock(descriptor):
            holder = _holder(path)
            announce(f"waiting for another build in this checkout ({holder}) to finish; "
                     f"giving up after {timeout:.0f} s")
            deadline = time.monotonic() + timeout
            while not _try_lock(descriptor):
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"{path}: another build ({holder}) still holds the lock after "
                                      f"{timeout:.0f} s; wait for it to finish, or stop it")
                time.sleep(POLL_SECONDS)
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(descriptor)


def _try_lock(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"
