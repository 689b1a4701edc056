"""A running base image (minixen) in the background: booting it, and its request interface.

(A real-Xen baseline runs in a VM instead: xen_vm.py, which shares work/run/ as laid out here.)

minixen answers requests, one line each, with "key : value" lines and a final "= rc";
`livepatch upload NAME SIZE` is followed by SIZE bytes of payload. In the background it
listens on a Unix socket (mode 0600) under work/run/, with its pid and console log there.

The framing cannot be confused by what a request carries: a request line holds printable
ASCII only (no newline to end it early, no NUL) and fits the image's line buffer; an upload's
size is its line's last word, and payload names follow Xen's rules (check_payload_name) before
anything is sent. The image enforces the same framing and ends a connection that breaks it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, XspliceError
from .files import write_json
from .project import Project
from .records import BaseRecord, Records
from .runner import run_targets

STATE_CHECKED = 1
STATE_APPLIED = 2
STATE_NAMES = {"CHECKED": STATE_CHECKED, "APPLIED": STATE_APPLIED}
SOCKET_PATH_MAX = 107
BOOT_TIMEOUT = 10.0
# minixen's request buffer (arch/x86/setup.c) holds 4096 bytes, the newline included.
REQUEST_MAX = 4095
# Xen: XEN_LIVEPATCH_NAME_SIZE is 128, the NUL included (get_name() in common/livepatch.c); the
# characters are those livepatch-build gives payload names.
PAYLOAD_NAME_SIZE = 128
_PAYLOAD_NAME_RE = re.compile(rf"[A-Za-z0-9_-]{{1,{PAYLOAD_NAME_SIZE - 1}}}")
_REQUEST_RE = re.compile(rf"[\x20-\x7e]{{1,{REQUEST_MAX}}}")


class HypervisorError(XspliceError):
    """The running image is missing, refused a request, or cannot be started."""


def check_payload_name(name: str) -> str:
    """`name` if Xen would take it as a payload name, else a one-line refusal (nothing is sent)."""
    if not _PAYLOAD_NAME_RE.fullmatch(name):
        raise ConfigError(f"payload name {name!r} is not allowed: Xen takes 1 to {PAYLOAD_NAME_SIZE - 1} characters "
                          "of A-Z a-z 0-9 _ - (XEN_LIVEPATCH_NAME_SIZE, as livepatch-build names payloads)")
    return name


@dataclass
class Answer:
    """One answer: its "key : value" lines in order, and its return code."""

    lines: list[str]
    rc: int
    fields: list[tuple[str, str]] = field(default_factory=list)

    def values(self, key: str) -> list[str]:
        return [value for name, value in self.fields if name == key]

    def value(self, key: str, default: str = "") -> str:
        found = self.values(key)
        return found[0] if found else default

    @property
    def error(self) -> str:
        return self.value("error", f"refused with rc {self.rc}")

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def parse_answer(lines: list[str]) -> Answer:
    *body, last = lines
    fields = [tuple(part.strip() for part in line.split(" : ", 1)) for line in body if " : " in line]
    return Answer(lines=body, rc=int(last[2:]), fields=fields)  # type: ignore[arg-type]


class Connection:
    """One toolstack connection: requests in order, each answer read to its "= rc" line."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.stream = sock.makefile("rb")

    def request(self, line: str, body: bytes = b"") -> Answer:
        if not _REQUEST_RE.fullmatch(line):
            raise HypervisorError(f"request {line[:80]!r} not sent: a request is 1 to {REQUEST_MAX} printable ASCII "
                                  "characters (no newline, NUL or other control character)")
        try:
            self.sock.sendall(line.encode() + b"\n" + body)
            lines = []
            while True:
                raw = self.stream.readline()
                if not raw:
                    raise HypervisorError(f"the running image closed the connection during {line.split()[0]!r}")
                text = raw.decode("utf-8", "replace").rstrip("\n")
                lines.append(text)
                if text.startswith("= "):
                    return parse_answer(lines)
        except OSError as error:
            raise HypervisorError(f"lost the running image during {line.split()[0]!r}: {error}") from None

    def close(self) -> None:
        self.stream.close()
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class RunDir:
    """work/run/: where the background image keeps its socket, pid, log and what it is."""

    path: Path

    @classmethod
    def of(cls, project: Project) -> RunDir:
        return cls(project.work_dir / "run")

    @property
    def socket(self) -> Path:
        return self.path / "hypervisor.sock"

    @property
    def pid_file(self) -> Path:
        return self.path / "hypervisor.pid"

    @property
    def log(self) -> Path:
        return self.path / "hypervisor.log"

    @property
    def record(self) -> Path:
        return self.path / "hypervisor.json"

    @property
    def qemu_log(self) -> Path:
        """QEMU's own messages, when the image is a real hypervisor in a VM (xen_vm.py)."""
        return self.path / "qemu.log"

    @property
    def agent_lock(self) -> Path:
        """Held by whoever talks to the VM's dom0, one request at a time."""
        return self.path / "agent.lock"

    def pid(self) -> int | None:
        """The pid of the running image, or None when none runs (a stale pid file is ignored)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def connect(self) -> Connection:
        pid = self.pid()
        if pid is None:
            raise HypervisorError("no image is running; start one with `xen-xsplice boot minixen`")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.socket))
        except OSError as error:
            sock.close()
            raise HypervisorError(f"{self.socket}: cannot connect to the running image (pid {pid}): "
                                  f"{error.strerror or error}") from None
        return Connection(sock)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def trusted_certificate(project: Project | None = None) -> Path:
    """The certificate payloads must verify against: XSPLICE_TRUSTED_CERT (any directory), else the checkout's
    development one (`project`, default: the checkout around the current directory)."""
    configured = os.environ.get("XSPLICE_TRUSTED_CERT")
    if configured:
        return Path(configured)
    return (project or Project.find()).root / "keys" / "development" / "signing_cert.pem"


def build_base(project: Project, baseline: str) -> dict:
    """The baseline's base image, built through the pipeline when needed; its build-base record."""
    from .baseline import load_baseline

    baseline = load_baseline(project, baseline).name  # "unknown baseline 'X'" before any build
    announce = lambda text: print(f"xen-xsplice: {text}", file=sys.stderr)  # noqa: E731
    result = run_targets(project, [f"build-base:{baseline}"], echo=False, announce=announce)
    record_path = Records(project, baseline).build_base
    if result.code != 0 or not record_path.is_file():
        reason = next(iter(result.failed.values()), f"doit exited {result.code}")
        raise HypervisorError(f"baseline {baseline}: building the base image failed: {reason}")
    return BaseRecord.read(record_path).to_json()


def boot(project: Project, baseline: str) -> tuple[int, dict]:
    """Start the baseline's base image in the background; (pid, its build-base record)."""
    run = RunDir.of(project)
    running = run.pid()
    if running is not None:
        raise HypervisorError(f"an image is already running (pid {running}); `xen-xsplice shutdown` it first")
    record = build_base(project, baseline)
    image = project.root / record["image"]
    run.path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if len(str(run.socket)) > SOCKET_PATH_MAX:
        raise ConfigError(f"{run.socket}: socket path longer than {SOCKET_PATH_MAX} bytes; use a shorter checkout "
                          "path")
    run.socket.unlink(missing_ok=True)
    with run.log.open("wb") as log:
        process = subprocess.Popen([str(image), "--socket", str(run.socket)], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=log, start_new_session=True, cwd=project.root)
    run.pid_file.write_text(f"{process.pid}\n")
    write_json(run.record, {"baseline": baseline, "image": record["image"], "build_id": record["build_id"],
                            "pid": process.pid})
    _wait_for_socket(run, process)
    return process.pid, record


def _wait_for_socket(run: RunDir, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise HypervisorError(f"the image exited during boot (status {process.returncode}); see {run.log}")
        if run.socket.exists():
            try:
                run.connect().close()
                return
            except HypervisorError:
                pass
        time.sleep(0.02)
    process.kill()
    raise HypervisorError(f"the image did not open {run.socket} within {BOOT_TIMEOUT:.0f} s; see {run.log}")


def shutdown(project: Project) -> int:
    """Ask the running image to stop ("quit"), wait for it, tidy work/run/; returns its pid."""
    run = RunDir.of(project)
    pid = run.pid()
    with run.connect() as connection:
        connection.request("quit")
    deadline = time.monotonic() + BOOT_TIMEOUT
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    run.pid_file.unlink(missing_ok=True)
    run.record.unlink(missing_ok=True)
    return pid
