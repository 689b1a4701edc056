"""A running image's request channel and work/run/ layout, shared by minixen (hypervisor.py) and real Xen (xen_vm.py).

minixen answers requests, one line each, with "key : value" lines and a final "= rc"; the VM's
dom0 answers with output lines and an exit code: both are an Answer. The framing cannot be
confused by what a request carries: a request line holds printable ASCII only and fits the
image's line buffer; payload names follow Xen's rules (check_payload_name) before anything is sent.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, XspliceError
from ..files import write_json
from ..project import Project

STATE_CHECKED = 1
STATE_APPLIED = 2
STATE_NAMES = {"CHECKED": STATE_CHECKED, "APPLIED": STATE_APPLIED}
SOCKET_PATH_MAX = 107
# minixen's request buffer (arch/x86/setup.c) holds 4096 bytes, the newline included.
REQUEST_MAX = 4095
# Xen: XEN_LIVEPATCH_NAME_SIZE is 128, the NUL included (get_name() in common/livepatch.c); the
# characters are those livepatch-build gives payload names.
PAYLOAD_NAME_SIZE = 128
# Xen's get_name() takes any bytes; these are livepatch-build's, and + for a cumulative payload (A+B).
_PAYLOAD_NAME_RE = re.compile(rf"[A-Za-z0-9_+-]{{1,{PAYLOAD_NAME_SIZE - 1}}}")
_REQUEST_RE = re.compile(rf"[\x20-\x7e]{{1,{REQUEST_MAX}}}")


class HypervisorError(XspliceError):
    """The running image is missing, refused a request, or cannot be started."""


def check_payload_name(name: str) -> str:
    """`name` if Xen would take it as a payload name, else a one-line refusal (nothing is sent)."""
    if not _PAYLOAD_NAME_RE.fullmatch(name):
        raise ConfigError(f"payload name {name!r} is not allowed: Xen takes 1 to {PAYLOAD_NAME_SIZE - 1} characters "
                          "of A-Z a-z 0-9 _ - + (XEN_LIVEPATCH_NAME_SIZE, as livepatch-build names payloads, "
                          "and A+B for a cumulative one)")
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
class RunningImage:
    """work/run/hypervisor.json: what runs in the background, minixen's image or a real hypervisor in QEMU."""

    kind: str  # MINIXEN, or xen_vm.KIND
    baseline: str
    pid: int
    build_id: str = ""  # a VM's: read from the running hypervisor once dom0 is up
    image: str = ""  # minixen: the image, relative to the checkout
    accel: str = ""  # a VM: kvm or tcg
    boot_seconds: float = 0.0
    owner: str = ""  # PROVE_STAGE when the prove stage booted it (and so stops it)

    @classmethod
    def from_json(cls, content: Any) -> RunningImage | None:
        """The record, or None when it is not one (damaged, or another version's): nothing is taken as running."""
        if not isinstance(content, dict) or not {"baseline", "pid"} <= content.keys():
            return None
        known = {"kind": MINIXEN, **{key: value for key, value in content.items() if key in _RUNNING_TYPES}}
        if not all(isinstance(value, _RUNNING_TYPES[key]) and not isinstance(value, bool)
                   for key, value in known.items()):
            return None
        return cls(**known)


MINIXEN = "minixen"
PROVE_STAGE = "prove-stage"
_RUNNING_TYPES: dict[str, type | tuple[type, ...]] = {
    "kind": str, "baseline": str, "pid": int, "build_id": str, "image": str, "accel": str,
    "boot_seconds": (int, float), "owner": str}


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

    def running(self) -> RunningImage | None:
        """The record of the image running now, or None (none runs, or its record is unreadable)."""
        if self.pid() is None or not self.record.is_file():
            return None
        try:
            return RunningImage.from_json(json.loads(self.record.read_text()))
        except (OSError, ValueError):
            return None

    def write_running(self, running: RunningImage) -> None:
        write_json(self.record, asdict(running))

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
