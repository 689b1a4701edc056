"""The build stages' sandbox: a tree of their own, no signing key, no home, no network (bubblewrap).

A patch is code that runs: its Makefile rules run during the build, its `asm(".incbin")` and
`#include` read files while compiling. Every stage that builds or reads what a build made
(build-base, build-orig, build-patched with the layout probe and any `prepare` command, and
the diff) therefore runs as a child process under bwrap:

- its own user, PID, network, IPC and UTS namespaces; no capabilities (so no mask can be
  unmounted) and no further user namespaces; a fresh /proc that shows only the sandbox's
  processes (never the signing process), a minimal /dev, an empty /tmp;
- a tree of its own: the system directories, the Python running this tool and the checkout,
  all read-only; nothing else of the machine (no home directories, /run, /var, other checkouts);
- writable only where the stage writes (its own directory under work/);
- the checkout's keys/ and the configured key's directory covered by empty read-only mounts,
  secrets in /etc covered likewise, and an environment of named variables only.

The child computes the stage's result; the parent, once the sandbox and every process in it
has ended, checks the files it names and writes the stage's record. A stage may name the part
that comes next in the same pair (the diff after build-patched): the child then stays, imports
that part once the first has answered (while the parent writes the record), kills every other
process in the sandbox then (what a patch's build left running never sees the next part), and runs
the next part when the next stage asks with the same arguments and the same view of the
machine: one sandbox and one Python start serve both. The parent reads what the second part
made only once the sandbox has ended. What the sandbox does
not isolate is in docs/security.md.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import errors
from ..errors import BuildError, ConfigError, XspliceError
from ..keys import configured_keys
from ..project import Project

BWRAP = "bwrap"
# The opt-out, for machines where no user namespace can be made (some containers). Unsafe: the
# build can then read the signing key; every run says so.
UNSANDBOXED_ENV = "XSPLICE_UNSAFE_NO_SANDBOX"
UNSANDBOXED_WARNING = (f"WARNING: {UNSANDBOXED_ENV}=1: builds run WITHOUT a sandbox; a patch's build can read "
                       "the signing key, the home directory and the network (unsafe: only for trusted patches)")
_NAMESPACES = ("--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
               "--unshare-cgroup-try", "--disable-userns", "--cap-drop", "ALL", "--die-with-parent", "--new-session")
# What a compiler, make, git and Python need of the machine, read-only (merged-/usr symlinks kept as links).
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
# Secrets that live in /etc, covered: host keys, TLS private keys, password hashes.
_ETC_SECRET_DIRS = ("/etc/ssh", "/etc/ssl/private")
_ETC_SECRET_FILES = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-")
# The only variables a stage sees (its build adds the baseline's pinned ones): no tokens, no agent sockets.
# (XSPLICE_TEST_PAUSE/PAUSED: the interruption tests' fault hook, which must reach the stage's process.)
_ENVIRONMENT = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH", "PYTHONHASHSEED",
                "XSPLICE_CCACHE_DIR", "XSPLICE_CCACHE_REMOTE", "XSPLICE_TEST_PAUSE", "XSPLICE_TEST_PAUSED",
                "XSPLICE_NO_REUSE", "XSPLICE_REUSE_VERIFY")


def disabled() -> bool:
    return os.environ.get(UNSANDBOXED_ENV, "") not in ("", "0")


def mode() -> str:
    """How builds are isolated, for task up-to-date checks: a change of mode rebuilds."""
    return f"none ({UNSANDBOXED_ENV}=1)" if disabled() else "bubblewrap"


@dataclass(frozen=True)
class Layout:
    """What the sandbox shows: read-only and writable directories, and what is covered."""

    readable: tuple[Path, ...]
    writable: tuple[Path, ...]
    covered: tuple[Path, ...]
    files: tuple[Path, ...] = ()  # single files outside the checkout, read-only (a supplied base image)


def layout(project: Project, writable: Iterable[Path], files: Iterable[Path] = ()) -> Layout:
    """The directories one stage of `project` sees; refuses a key kept where the sandbox cannot hide it."""
    extra = [path for path in [*_python_dirs(), *_toolchain_dirs(project)]
             if not any(path.resolve().is_relative_to(system) for system in _system_dirs())]
    readable = [project.root, *extra]
    writable = [path.resolve() for path in writable]
    writable += _cache_dirs()
    covered = [project.root / "keys", *_key_dirs(project, [*readable, *writable])]
    shown = tuple(sorted({path.resolve() for path in files if path.resolve().is_file()}))
    return Layout(tuple(_existing(readable)), tuple(writable), tuple(covered), shown)


def bwrap_command(sandbox: Layout, cwd: Path) -> list[str]:
    """bwrap's arguments: later mounts cover earlier ones, so keys are covered last."""
    argv = [BWRAP, *_NAMESPACES]  # the root is an empty tmpfs: only what is bound below exists
    for directory in _SYSTEM:
        path = Path(directory)
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), directory]
        elif path.is_dir():
            argv += ["--ro-bind", directory, directory]
    argv += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for directory in sandbox.readable:
        argv += ["--ro-bind", str(directory), str(directory)]
    for directory in sandbox.writable:
        argv += ["--bind", str(directory), str(directory)]
    for file in sandbox.files:
        argv += ["--ro-bind", str(file), str(file)]
    for directory in (*_ETC_SECRET_DIRS, *(str(path.resolve()) for path in sandbox.covered)):
        # A symlinked keys/ is covered where it leads (a mount cannot go on a link).
        if Path(directory).is_dir():
            argv += ["--tmpfs", directory, "--remount-ro", directory]
    for file in _ETC_SECRET_FILES:
        if Path(file).exists():
            argv += ["--ro-bind", "/dev/null", file]
    return [*argv, "--chdir", str(cwd)]


@dataclass(frozen=True)
class Part:
    """A sandboxed part by name ("xsplice_build.sandboxed_diff:diff_objects"), its arguments and what it needs
    to write and read; a stage names the part that follows it this way (by name: the first stage's code is
    not the second's)."""

    name: str
    arguments: dict[str, str]
    writable: tuple[Path, ...]
    files: tuple[Path, ...] = ()

    @staticmethod
    def of(part: Callable[..., Any], arguments: dict[str, str], writable: Iterable[Path],
           files: Iterable[Path] = ()) -> Part:
        return Part(f"{part.__module__}:{part.__name__}", arguments, tuple(writable), tuple(files))


@dataclass(frozen=True)
class _Kept:
    """A running sandbox; once its first part answered, it waits to run the next one (or to be told to end)."""

    process: subprocess.Popen[str]
    stderr: Any  # a temporary file: a chatty part never blocks on a pipe nobody reads


_KEPT: dict[tuple[str, str, Layout], _Kept] = {}
_KEPT_LOCK = threading.Lock()
_KEPT_MAX = 2  # sandboxes waiting at once (each an idle Python); one more ends the oldest, whose diff then starts anew
ANSWER = "xsplice-sandbox-answer "  # the line that carries a part's result, after whatever the part printed


def run_stage(project: Project, part: Callable[..., Any], arguments: dict[str, str], writable: list[Path],
              files: Iterable[Path] = (), then: Part | None = None,
              meanwhile: Callable[[], None] | None = None) -> Any:
    """Run `part` (a function of a sandboxed_* module) on `project` in a sandbox; returns what it returns.
    `files` are files outside the checkout it may read (a base image the user supplied). With `then`, the
    sandbox stays after answering, to run that part when a later call asks for it (see the module's text).
    `meanwhile` runs in a thread of this process once the sandbox is started (this thread only waits then:
    started earlier, it would hold the interpreter while this one starts the sandbox); joined before return."""
    for directory in [*writable, *(then.writable if then else ())]:
        directory.mkdir(parents=True, exist_ok=True)
    if not (project.root / "keys").is_symlink():
        (project.root / "keys").mkdir(mode=0o700, exist_ok=True)  # covered even if a key appears mid-build
    if disabled():
        return part(project, **arguments)
    _check_available()
    this = Part.of(part, arguments, writable, files)
    kept = _take_kept(_key(project, this))
    if kept is not None:
        return _finish(kept, this.name, ask=True)
    shown = layout(project, [*writable, *(then.writable if then else ())], [*files, *(then.files if then else ())])
    child = [sys.executable, "-m", __name__, this.name, str(project.root), json.dumps(arguments)]
    if then is not None:
        child += [then.name, json.dumps(then.arguments)]
    argv = [*bwrap_command(shown, project.root), "--", *child]
    stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed when the sandbox has ended: _finish, _stop)
    process = subprocess.Popen(argv, env=_environment(), stdin=subprocess.PIPE if then else subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=stderr, text=True)
    helper = threading.Thread(target=meanwhile, daemon=True) if meanwhile else None
    if helper is not None:
        helper.start()
    try:
        return _first_answer(project, _Kept(process, stderr), this.name, then)
    finally:
        if helper is not None:
            helper.join()


def _first_answer(project: Project, running: _Kept, name: str, then: Part | None) -> Any:
    """The started sandbox's answer; kept for `then` when it gave a result."""
    if then is None:
        return _finish(running, name, ask=False)
    answer = _read_answer(running)
    if answer is None or "result" not in answer:  # a refusal or a failure: no next part
        return _finish(running, name, ask=False, answer=answer)
    key = _key(project, then)
    with _KEPT_LOCK:
        ended = [_KEPT.pop(key)] if key in _KEPT else []
        _KEPT[key] = running
        while len(_KEPT) > _KEPT_MAX:  # the oldest first: a run that builds many pairs before their diffs
            ended.append(_KEPT.pop(next(iter(_KEPT))))
    for each in ended:
        _stop(each)
    return answer["result"]


def _key(project: Project, part: Part) -> tuple[str, str, Layout]:
    return part.name, json.dumps(part.arguments, sort_keys=True), layout(project, part.writable, part.files)


def _take_kept(key: tuple[str, str, Layout]) -> _Kept | None:
    with _KEPT_LOCK:
        kept = _KEPT.pop(key, None)
    if kept is not None and kept.process.poll() is not None:  # it ended meanwhile: start afresh
        _stop(kept)
        return None
    return kept


def _read_answer(running: _Kept) -> dict[str, Any] | None:
    assert running.process.stdout is not None
    for line in running.process.stdout:
        if line.startswith(ANSWER):
            try:
                answer = json.loads(line[len(ANSWER):])
            except ValueError:
                return None
            return answer if isinstance(answer, dict) else None
    return None


def _finish(running: _Kept, name: str, ask: bool, answer: dict[str, Any] | None = None) -> Any:
    """Ask for the next part (`ask`) or read the only answer; wait until the sandbox has ended; return."""
    process = running.process
    try:
        if ask:
            assert process.stdin is not None
            process.stdin.write("run\n")
            process.stdin.flush()
        if ask or answer is None:
            answer = _read_answer(running)
        if process.stdin is not None:
            process.stdin.close()
        assert process.stdout is not None
        process.stdout.read()
    except (BrokenPipeError, OSError):
        answer = None
    process.wait()
    running.stderr.seek(0)
    stderr = running.stderr.read()
    running.stderr.close()
    return _answer(name, process.returncode, answer, stderr)


def _stop(kept: _Kept) -> None:
    """End a kept sandbox nobody asked again: it exits when its input closes."""
    try:
        if kept.process.stdin is not None:
            kept.process.stdin.close()
    except OSError:
        pass
    try:
        kept.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        kept.process.kill()
        kept.process.wait()
    kept.stderr.close()


@atexit.register
def _stop_all_kept() -> None:
    with _KEPT_LOCK:
        kept = list(_KEPT.values())
        _KEPT.clear()
    for each in kept:
        _stop(each)


def owned_file(path: Path, directory: Path, what: str) -> Path:
    """`path` if it is a regular file inside `directory` (no symlink out of it), for the parent to read."""
    if path.is_symlink() or not path.resolve().is_relative_to(directory.resolve()) or not path.is_file():
        raise BuildError(f"{path}: the {what} is not a regular file inside {directory} (a symlink or special "
                         "file made by the build); refusing to read it outside the sandbox")
    return path


@functools.cache
def _probe() -> str | None:
    """Why no sandbox can be made here, or None (asked once per process)."""
    try:
        result = subprocess.run([BWRAP, *_NAMESPACES, "--ro-bind", "/", "/", "--", "true"], capture_output=True,
                                text=True, check=False, stdin=subprocess.DEVNULL)
    except OSError as error:
        return f"{BWRAP}: {error.strerror}"
    return None if result.returncode == 0 else (result.stderr.strip().splitlines() or ["exit status"])[-1]


def _check_available() -> None:
    problem = _probe()
    if problem is not None:
        raise BuildError(f"the build sandbox cannot be created ({problem}): install bubblewrap (./setup) and allow "
                         f"user namespaces; {UNSANDBOXED_ENV}=1 builds without it, which lets a patch read the "
                         "signing key")


def _answer(name: str, returncode: int, answer: dict[str, Any] | None, stderr: str) -> Any:
    if returncode == 0 and isinstance(answer, dict) and "result" in answer:
        return answer["result"]
    if returncode == 0 and isinstance(answer, dict) and "error" in answer:
        raise _rebuilt_error(answer["error"])
    if stderr.startswith("bwrap:"):
        raise BuildError(f"the build sandbox failed: {stderr.strip().splitlines()[0]}")
    # Not a refusal: a bug, or the child killed. Keep what it printed, as a traceback would be kept.
    raise RuntimeError(f"sandboxed {name} exited {returncode}:\n{stderr[-4000:]}")


def _rebuilt_error(error: dict[str, Any]) -> XspliceError:
    """The child's refusal, same class and line (the class decides the exit status)."""
    kind = getattr(errors, str(error.get("class")), None)
    if not (isinstance(kind, type) and issubclass(kind, XspliceError)):
        kind = XspliceError
    rebuilt = kind.__new__(kind)
    Exception.__init__(rebuilt, errors.printable(str(error.get("message"))))
    if isinstance(rebuilt, errors.Unpatchable):
        rebuilt.refusals = [str(refusal) for refusal in error.get("refusals", [])]
    return rebuilt


def _environment() -> dict[str, str]:
    kept = {name: os.environ[name] for name in _ENVIRONMENT if name in os.environ}
    return {**kept, "HOME": "/tmp", "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1",
            "PATH": kept.get("PATH", "/usr/bin:/bin")}


def _python_dirs() -> list[Path]:
    """The interpreter, its standard library and site-packages, this package, and PYTHONPATH's entries."""
    package = Path(__file__).resolve().parents[1]
    entries = [Path(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [Path(sys.base_prefix), Path(sys.prefix), Path(sys.executable).parent, package, *entries]


def _toolchain_dirs(project: Project) -> list[Path]:
    """The prefix of each locked tool (gcc finds cc1 and its headers there), when outside /usr."""
    try:
        recorded = json.loads(project.toolchain_state.read_text())["tools"]
        paths = [Path(tool["path"]) for tool in recorded.values()]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [path.parents[1] for path in paths if len(path.parents) > 2]


def _cache_dirs() -> list[Path]:
    """The compile cache the wrapper writes (XSPLICE_CCACHE_DIR, a file: remote): writable by every build."""
    found = []
    for name in ("XSPLICE_CCACHE_DIR", "XSPLICE_CCACHE_REMOTE"):
        value = os.environ.get(name, "")
        value = value.removeprefix("file:") if name == "XSPLICE_CCACHE_REMOTE" else value
        if value.startswith("/"):
            Path(value).mkdir(parents=True, exist_ok=True)
            found.append(Path(value).resolve())
    return found


def _key_dirs(project: Project, shown: list[Path]) -> list[Path]:
    """The configured signing key's directory; refused when covering it would hide what a build needs."""
    keys = configured_keys(project.root)
    if keys.development:
        return []
    directory = keys.key.resolve().parent
    for needed in [*shown, *_system_dirs()]:
        if needed.resolve() == directory or needed.resolve().is_relative_to(directory):
            raise ConfigError(f"XSPLICE_SIGNING_KEY {keys.key}: its directory {directory} holds {needed}, which "
                              "builds need, so the build sandbox cannot hide the key; keep the key in a directory "
                              "of its own")
    return [directory]


def _system_dirs() -> list[Path]:
    return [Path(directory).resolve() for directory in _SYSTEM if Path(directory).exists()]


def _existing(paths: Iterable[Path]) -> list[Path]:
    unique: list[Path] = []
    for path in paths:
        resolved = path.resolve()
        if resolved.is_dir() and resolved not in unique:
            unique.append(resolved)
    return unique


def _sandboxed_part(name: str) -> Callable[..., Any]:
    module, _, function = name.partition(":")
    if not module.startswith(f"{__package__}.sandboxed_"):
        raise ValueError(f"not a sandboxed part: {name}")
    part: Callable[..., Any] = getattr(importlib.import_module(module), function)
    return part


def _run_part(part: Callable[..., Any], root: str, arguments: str) -> bool:
    """Run one part and print its result (or refusal) on the answer line; True when it gave a result."""
    try:
        answer: dict[str, Any] = {"result": part(Project(Path(root)), **json.loads(arguments))}
    except XspliceError as error:
        answer = {"error": {"class": type(error).__name__, "message": error.message,
                            "refusals": getattr(error, "refusals", [])}}
    sys.stdout.write("\n" + ANSWER + json.dumps(answer) + "\n")
    sys.stdout.flush()
    return "result" in answer


def _child(name: str, root: str, arguments: str, then: str = "", then_arguments: str = "") -> int:
    """Inside the sandbox: run the part; with a next part, wait for the parent to ask for it (or end)."""
    if _run_part(_sandboxed_part(name), root, arguments) and then:
        _end_other_processes()
        # Its code loads while the parent writes the first record and doit comes to the next stage (a thread
        # loading it during the first part held the interpreter the first part needed).
        _sandboxed_part(then)
        if sys.stdin.readline().strip() == "run":
            _run_part(_sandboxed_part(then), root, then_arguments)
    return 0


def _end_other_processes() -> None:
    """Kill every other process of this sandbox, so nothing the first part started (a patch's build, which may
    leave a process behind on purpose) outlives it into the next part: the next part then runs as in a fresh
    sandbox. Only as the sandbox's first process (pid 2 under bwrap's pid 1, in a PID namespace of its own),
    where kill(-1) reaches no process outside it."""
    if os.getpid() == 2 and os.getppid() == 1:
        with contextlib.suppress(ProcessLookupError):  # none left
            os.kill(-1, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:6]))
