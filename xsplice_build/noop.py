"""A no-op `doit build-patch` recognised before doit is imported: doit's verdict, remembered.

Importing doit alone costs several times a bare interpreter start, so a warm no-op cannot
be cheap through doit. Instead, a `doit build-patch` run in which doit found every task
up to date leaves a stamp: what it printed, and a fingerprint of everything it read. A
later run of the same command whose fingerprints all still match prints the same lines
and exits 0 without importing doit; anything else goes the normal way.

What the stamp is keyed by: the command line, the working directory, the interpreter,
the whole environment (hashed: stages read many variables, an allow-list could miss one),
the user and group ids, and whether stdout and stderr are terminals.

What it fingerprints is recorded, not listed: while the normal run plans and checks, every
file it opens, stats or probes (`os.stat`, `os.lstat`, `os.access`, which pathlib and
os.path go through, and the audit events of `open`, `os.listdir`, `os.scandir` and
`sqlite3.connect`) is noted, with the source of every module loaded and the directories
on sys.path. A fingerprint is a stat (mode, inode, device, size, mtime_ns, ctime_ns, or
the error), a listed directory's own stat, and for a scanned directory the stat of every
entry. So doit's file_dep and targets, the stage records and their outputs, the doit
database, the package's code, dodo.py, the baseline, patch and advisory files, the keys,
the toolchain binaries and the pristine trees are all in it, because the checks read them.

A stamp is written only when the whole run was a pure no-op: exit 0, the reporter saw
every task up to date (`observe`), no process started, nothing on stderr, and no file read
changed during the run (its mtime or ctime is not older than a clock file touched when the
run began, as git treats "racily clean" entries). A run that is not a no-op removes the
stamp. The checkout's lock is tried, shared and without waiting, before a stamp is
trusted: a build in progress sends the run the normal way, where it waits.

The limit is make's and doit's: a file rewritten with its size, mtime and inode restored
and its ctime unchanged cannot be told apart (only the clock's owner can set ctime).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import sys

# Paths are strings here: pathlib (with the modules it loads) costs half as much as the rest of a replay.

try:  # the interpreter's own sha256: hashlib would load OpenSSL first, a tenth of an interpreter start
    from _sha256 import sha256
except ImportError:  # another interpreter
    from hashlib import sha256

TYPE_CHECKING = False  # typing itself costs as much to import: read by type checkers only
if TYPE_CHECKING:
    from os import PathLike
    from typing import Any

    Fingerprint = list[Any]

FORMAT = 1
STAMP_DIR = os.path.join("work", ".noop")  # under the checkout: work/ is the pipeline's own (project.Project.work_dir)
CLOCK = "clock"  # touched when a recording starts: the file system's own time
# Audit events that start another program: its reads are not seen, so such a run is no verdict to keep.
_SPAWNING = frozenset({"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                       "os.forkpty", "pty.spawn", "os.startfile"})
_IGNORED = ("/dev/",)  # /dev/null and the like: not inputs
_DYNAMIC = ("/proc/", "/sys/")  # read from the kernel each time: a run reading them is no verdict to keep
_DOUBT = (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError, UnicodeError)


def _stat(path: str, follow: bool = True, whole: bool = False) -> Fingerprint:
    """A file's mode, inode, device, size, mtime_ns and ctime_ns, or the error stat gave.

    A directory that was only looked up or probed (a component of a path, `is_dir`) gives what it is, not
    what it holds (`whole` gives that too): its listing, when read, is noted as a listing. Else /tmp's
    mtime, which every program's temporary file moves, would be part of every stamp.
    """
    try:
        status = os.stat(path, follow_symlinks=follow)
    except OSError as error:
        return [error.errno]
    if stat.S_ISDIR(status.st_mode) and not whole:
        return [status.st_mode, status.st_ino, status.st_dev]
    return [status.st_mode, status.st_ino, status.st_dev, status.st_size, status.st_mtime_ns, status.st_ctime_ns]


def _scan(path: str) -> Fingerprint:
    """Every entry of a directory (name and lstat; a symlink also what it points to), as one digest."""
    return _scanned(path)[0]


def _scanned(path: str) -> tuple[Fingerprint, int]:
    """`_scan`'s fingerprint and the newest mtime_ns or ctime_ns among the entries."""
    digest = sha256()
    try:
        with os.scandir(path) as listing:
            entries = sorted(entry.name for entry in listing)
    except OSError as error:
        return [error.errno], 0
    newest = 0
    for name in entries:
        entry = os.path.join(path, name)
        status = _stat(entry, follow=False, whole=True)
        target = _stat(entry, whole=True) if status[1:] and stat.S_ISLNK(status[0]) else []
        newest = max((newest, *_times(status), *_times(target)))
        digest.update(f"{name}\0{status}\0{target}\n".encode("utf-8", "surrogateescape"))
    return [digest.hexdigest()], newest


def _times(value: Fingerprint) -> tuple[int, ...]:
    return (value[4], value[5]) if len(value) == 6 else ()


_MEASURES = {"stat": _stat, "lstat": lambda path: _stat(path, follow=False),
             "list": lambda path: _stat(path, whole=True), "scan": _scan}


def _measure(kind: str, path: str) -> Fingerprint:
    return _MEASURES[kind](path)


def command_key(argv: list[str]) -> dict[str, Any]:
    """What a run's verdict may depend on besides the files it reads."""
    environment = sha256(json.dumps(sorted(os.environ.items())).encode("utf-8", "surrogateescape"))
    return {"format": FORMAT, "argv": argv, "cwd": os.getcwd(), "python": [sys.executable, sys.version],
            "environment": environment.hexdigest(), "terminal": [os.isatty(1), os.isatty(2)],
            "user": [os.getuid(), os.getgid(), os.geteuid(), os.getegid(), sorted(os.getgroups())]}


def stamp_name(argv: list[str]) -> str:
    command = json.dumps([argv, os.getcwd()]).encode("utf-8", "surrogateescape")
    return sha256(command).hexdigest()[:32] + ".json"


def stamp_dir(start: str | None = None) -> str | None:
    """The stamps of the checkout a run from here would use: the nearest work/.noop at or above the start
    (XSPLICE_ROOT, else the working directory, where project.Project.find starts too)."""
    candidate = os.path.abspath(start or os.environ.get("XSPLICE_ROOT") or os.getcwd())
    while True:
        if os.path.isdir(os.path.join(candidate, STAMP_DIR)):
            return os.path.join(candidate, STAMP_DIR)
        parent = os.path.dirname(candidate)
        if parent == candidate:
            return None
        candidate = parent


# Replaying


def replay(argv: list[str]) -> int | None:
    """Print what the stamped no-op printed and return 0, when this run is that no-op; else None."""
    directory = stamp_dir() if _streams_open() else None
    if directory is None:
        return None
    try:
        with open(os.path.join(directory, stamp_name(argv)), "rb") as stream:
            stamp = json.loads(stream.read())
        if stamp["key"] != command_key(argv):
            return None
        lock = _try_shared_lock(stamp["lock"])
    except _DOUBT:
        return None
    if lock is None:
        return None
    try:
        if any(_measure(kind, path) != value for kind, path, value in stamp["entries"]):
            return None
        return _print(stamp["output"])
    except _DOUBT:
        return None
    finally:
        os.close(lock)  # the normal way, in this process, takes it exclusively


def _streams_open() -> bool:
    """stdout and stderr open: else the normal way refuses the run in one line (console.run_command)."""
    try:
        os.fstat(1)
        os.fstat(2)
    except OSError:
        return False
    return sys.stdout is not None and sys.stderr is not None


def _try_shared_lock(path: str) -> int | None:
    """The checkout's lock (lock.py), shared: held while the stamp is checked; None when a build holds it."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def _print(output: str) -> int | None:
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]  # as console.run_command
    try:
        sys.stdout.write(output)
        sys.stdout.flush()
    except BrokenPipeError:
        return None  # the normal way says so in one line (console.run_command)
    return 0


# Recording


class Recording:
    """What one normal `doit build-patch` run reads and prints, kept as a stamp if it turns out a pure no-op."""

    def __init__(self, argv: list[str], directory: str | None) -> None:
        self.key = command_key(argv)
        self.name = stamp_name(argv)
        self.directory = directory
        self.clock = _touch_clock(directory) if directory is not None else None
        self.reads: dict[tuple[str, str], None] = {}
        self.output: list[str] = []
        self.spoiled: str | None = None if self.clock is not None else "no clock"
        self.uptodate = False
        self.completed = False

    def note(self, kind: str, path: Any, dir_fd: Any = None) -> None:
        if dir_fd is not None:
            self.spoil("a path relative to a directory descriptor was read")
            return
        if isinstance(path, int) or path is None:
            return  # an open descriptor: its path was noted when it was opened
        try:
            name = os.fsdecode(path)
            name = name if os.path.isabs(name) else os.path.join(os.getcwd(), name)
        except _DOUBT:
            self.spoil(f"a path that cannot be noted: {path!r}")
            return
        if name.startswith(_DYNAMIC):
            self.spoil(f"{name} was read")
        elif not name.startswith(_IGNORED):
            self.reads[(kind, name)] = None

    def spoil(self, reason: str) -> None:
        if self.spoiled is None:
            self.spoiled = reason
        _stop_watching()

    def finish(self, code: int, project_work: PathLike[str] | None, locks: list[PathLike[str]]) -> None:
        """After doit returned `code`: write the stamp when the run was a pure no-op, else leave none."""
        _stop_watching()
        if code != 0:
            self.spoil(f"exit {code}")
        elif not self.completed or not self.uptodate:
            self.spoil("doit did not complete a run of up-to-date tasks")
        if project_work is None:
            return
        target = os.path.join(project_work, ".noop")
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(target, mode=0o700)
            if self.directory is None or not os.path.samefile(target, self.directory):
                self.spoil("the stamps of another checkout were found first")
            stamp = self._stamp(locks) if self.spoiled is None else None
        except _DOUBT:
            stamp = None
        if stamp is not None:
            _write(os.path.join(target, self.name), stamp)
        else:
            _remove(os.path.join(target, self.name))

    def _stamp(self, locks: list[PathLike[str]]) -> dict[str, Any] | None:
        """The stamp: every path read, fingerprinted now; None when one changed since the run began."""
        if len(locks) != 1:
            return None  # the one checkout lock lock.hold took, which a replay must find free
        lock = os.fspath(locks[0])
        reads = dict(self.reads)
        for module in list(sys.modules.values()):
            source = getattr(module, "__file__", None)
            if isinstance(source, str):
                reads[("stat", os.path.abspath(source))] = None
        for entry in sys.path:
            reads[("list", os.path.abspath(entry or "."))] = None
        entries = []
        for kind, path in sorted(reads):
            if path == lock or path.startswith(f"{self.directory}{os.sep}"):
                continue  # written by every build (its pid), or the stamps themselves: not inputs
            value, newest = _scanned(path) if kind == "scan" else (_measure(kind, path), 0)
            if max((newest, *_times(value))) >= self.clock:  # type: ignore[operator]
                return None  # changed while this run read it: the verdict may be about the older content
            entries.append([kind, path, value])
        return {"key": self.key, "lock": lock, "entries": entries, "output": "".join(self.output)}


_ACTIVE: list[Recording] = []


def record(argv: list[str]) -> Recording:
    """Start recording this process's run of `argv` (before doit is imported), removing its old stamp."""
    directory = stamp_dir() if _streams_open() else None
    recording = Recording(argv, directory)
    if directory is not None:
        _remove(os.path.join(directory, recording.name))
    if recording.spoiled is None:
        _ACTIVE[:] = [recording]
        _start_watching(recording)
        _capture_output(recording)
    return recording


def observe(event: str) -> None:
    """The reporter's word on the run: "up-to-date" for a task skipped, "complete" at the end; anything
    else ("a task ran", "a task failed", "waited for the checkout's lock") means the run was no no-op."""
    if not _ACTIVE:
        return
    recording = _ACTIVE[0]
    if event == "up-to-date":
        recording.uptodate = True
    elif event == "complete":
        recording.completed = True
    else:
        recording.spoil(event)


def _touch_clock(directory: str) -> int | None:
    """The file system's time now (a just-touched file's mtime_ns): what a later change's times are not below."""
    try:
        descriptor = os.open(os.path.join(directory, CLOCK), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.utime(descriptor)
            return os.fstat(descriptor).st_mtime_ns
        finally:
            os.close(descriptor)
    except OSError:
        return None


def _write(path: str, stamp: dict[str, Any]) -> None:
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f".{name}.{os.getpid()}")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8", errors="surrogateescape") as stream:
            json.dump(stamp, stream)
        os.replace(temporary, path)
    except OSError:
        _remove(temporary)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


# Watching what a run reads: os.stat/lstat/access wrapped, audit events for opens, listings and new processes.

_ORIGINAL: dict[str, Any] = {}
_SUPPORT_SETS = ("supports_dir_fd", "supports_fd", "supports_follow_symlinks", "supports_effective_ids")


def _audit(event: str, arguments: tuple[Any, ...]) -> None:
    if not _ACTIVE or not _ORIGINAL:
        return
    try:
        _audited(_ACTIVE[0], event, arguments)
    except _DOUBT:  # never the run's failure: only no stamp
        _ACTIVE[0].spoil(f"audit event {event} could not be noted")


def _audited(recording: Recording, event: str, arguments: tuple[Any, ...]) -> None:
    if event == "open":
        _note_open(recording, arguments[0])
    elif event == "os.listdir":
        recording.note("list", arguments[0] if arguments[0] is not None else ".")
    elif event == "os.scandir":
        recording.note("scan", arguments[0] if arguments[0] is not None else ".")
    elif event == "sqlite3.connect":
        database = os.fsdecode(arguments[0])
        for suffix in ("", "-journal", "-wal", "-shm"):
            recording.note("stat", database + suffix)
    elif event in _SPAWNING:
        recording.spoil(f"{event} started another program")


def _note_open(recording: Recording, path: Any) -> None:
    if isinstance(path, str) and f"{os.sep}__pycache__{os.sep}" in path:
        return  # compiled code: its source is noted from sys.modules
    recording.note("stat", path)


def _watched(name: str, function: Any) -> Any:
    def watched(path: Any, *arguments: Any, **options: Any) -> Any:
        if _ACTIVE and _ORIGINAL:
            follow = options.get("follow_symlinks", True) and name != "lstat"
            _ACTIVE[0].note("stat" if follow else "lstat", path, options.get("dir_fd"))
        return function(path, *arguments, **options)

    watched.__name__ = name
    return watched


_HOOKED: list[bool] = []


def _start_watching(recording: Recording) -> None:
    import shutil  # noqa: F401  # decides at import whether rmtree may use os.stat's dir_fd: with the real one

    if not _HOOKED:
        sys.addaudithook(_audit)  # cannot be removed: idle once _ORIGINAL is empty
        _HOOKED.append(True)
    for name in ("stat", "lstat", "access"):
        original = getattr(os, name)
        wrapper = _watched(name, original)
        _ORIGINAL[name] = original
        setattr(os, name, wrapper)
        for support in _SUPPORT_SETS:  # `os.stat in os.supports_dir_fd` keeps its answer
            members = getattr(os, support)
            if original in members:
                members.add(wrapper)


def _stop_watching() -> None:
    for name, original in _ORIGINAL.items():
        wrapper = getattr(os, name)
        setattr(os, name, original)
        for support in _SUPPORT_SETS:
            getattr(os, support).discard(wrapper)
    _ORIGINAL.clear()


def _capture_output(recording: Recording) -> None:
    """Keep what the run writes to stdout (the lines to replay); anything on stderr spoils the recording."""
    stdout_write, stderr_write = sys.stdout.write, sys.stderr.write

    def on_stdout(text: str) -> int:
        if recording.spoiled is None:
            recording.output.append(text)
        return stdout_write(text)

    def on_stderr(text: str) -> int:
        if text:
            recording.spoil("something was written to stderr")
        return stderr_write(text)

    sys.stdout.write = on_stdout  # type: ignore[method-assign]
    sys.stderr.write = on_stderr  # type: ignore[method-assign]
