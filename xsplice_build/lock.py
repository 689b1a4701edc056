"""One doit build at a time per checkout: an advisory lock on work/.lock (fcntl.flock).

Two commands writing the same checkout (`doit build-patch`, `doit nightly`, `doit audit`, any
`doit` run of the stages, `xen-xsplice boot` building a base image) would write the same stage
trees and share doit's dependency database; the second waits (saying
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

from . import noop
from .errors import XspliceError
from .project import Project

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


def _wait(path: Path, descriptor: int, timeout: float, announce: Callable[[str], None]) -> None:
    """Lock `descriptor`, saying once that we wait; refuse after `timeout` seconds. Records our pid in the file."""
    if not _try_lock(descriptor):
        noop.observe("waited for the checkout's lock")  # the wait is printed: no no-op's output
        holder = _holder(path)
        announce(f"waiting for another build in this checkout ({holder}) to finish; "
                 f"giving up after {timeout:.0f} s")
        deadline = time.monotonic() + timeout
        while not _try_lock(descriptor):
            if time.monotonic() >= deadline:
                os.close(descriptor)
                raise LockTimeout(f"{path}: another build ({holder}) still holds the lock after "
                                  f"{timeout:.0f} s; wait for it to finish, or stop it")
            time.sleep(POLL_SECONDS)
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())


_HELD: dict[Path, int] = {}  # the checkout locks this process holds: lock file -> descriptor


def hold(project: Project, announce: Callable[[str], None] | None = None) -> None:
    """Take the checkout's lock (work/.lock) for the rest of this process, unless this process holds it already.

    For a console command that writes work/ or out/: the kernel drops the lock when the process exits,
    however it exits.
    """
    path = _lock_file(project)
    if path not in _HELD:
        _HELD[path] = _acquire(path, announce)


def held() -> list[Path]:
    """The lock files this process holds (a no-op's stamp names the one it must find free: noop.py)."""
    return sorted(_HELD)


@contextmanager
def holding(project: Project, announce: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the checkout's lock for the block, unless this process holds it already (then it stays held).

    For library calls in a long-lived process (runner.run_targets, hypervisor.boot from a test or a
    coordinator): the lock is released when the block ends, not when the process does. Re-entrant: the
    outermost holder releases it, a `hold` inside the block changes nothing.
    """
    path = _lock_file(project)
    if path in _HELD:
        yield
        return
    _HELD[path] = _acquire(path, announce)
    try:
        yield
    finally:
        os.close(_HELD.pop(path))


def _lock_file(project: Project) -> Path:
    return (project.work_dir / ".lock").resolve()


def _acquire(path: Path, announce: Callable[[str], None] | None) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    _wait(path, descriptor, lock_timeout(), announce or _say)
    return descriptor


def _say(text: str) -> None:
    print(f"xsplice: {text}", flush=True)


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
