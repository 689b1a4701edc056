"""Debian's real Xen in a QEMU VM, in the background: boot it, and drive its own livepatch loader.

The VM runs what baseline/runtime/NAME.toml pins (vm_runtime.py): the hypervisor, a Debian
dom0 kernel and our initramfs, whose init (data/vm-init) answers requests on a virtio-serial
port (an emulated UART under TCG moved about 2 KB/s). QEMU joins that port to a Unix socket in
work/run/ (hypervisor.sock, as minixen's); Xen's console (com1) goes to work/run/hypervisor.log. Requests are framed
(`REQ id verb ...` / `RSP id rc`, output in base64, `END id`), one at a time under a lock, so a
command interrupted half-way only leaves answers with ids nobody waits for.

Python API (what tests and other code use):

    vm = XenVM.boot(project, "xen-4.17")       # or XenVM.attach(project): the one running
    verdict = vm.upload("NAME", payload_bytes) # then vm.apply / vm.revert / vm.unload ("NAME")
    verdict = vm.try_payload("NAME", payload_bytes)  # all four, cleaning up after a refusal
    verdict = vm.prove("NAME", payload_bytes, load_probes(path))  # the same, probes between
    verdict.ok, verdict.reason, verdict.console      # the hypervisor's own lines about it
    vm.run("cat /sys/hypervisor/version/extra")      # any dom0 command: Answer(lines, rc)
    vm.shutdown()

A refusal is a Verdict, not an exception: the hypervisor said no, which is an answer. Errors of
the machinery (QEMU died, the channel broke, the build-id is not the baseline's) raise
HypervisorError.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import PayloadRejected
from ..files import sha256_bytes
from ..project import Project
from ..target.baseline import load_baseline
from .channel import (
    PROVE_STAGE,
    SOCKET_PATH_MAX,
    Answer,
    HypervisorError,
    RunDir,
    RunningImage,
    _alive,
    check_payload_name,
)
from .probes import Probe, check_phase
from .vm_runtime import BootFiles, boot_files, load_runtime

KIND = "xen-vm"
QEMU = "qemu-system-x86_64"
REQUEST_TIMEOUT = 600.0
PING_INTERVAL = 3.0
SHUTDOWN_TIMEOUT = 60.0
KVM_TRIAL = 90.0
# xen-livepatch's exit codes (tools/misc/xen-livepatch.c): EXIT_FAILURE, and EXIT_TIMEOUT for
# EAGAIN/EBUSY ("retry"), e.g. when Xen's rendezvous timed out.
LIVEPATCH_RETRY = 2
CONSOLE_MARK = "--- xsplice: console ---"
Log = Callable[[str], None]


def boot_timeout() -> float:
    """Seconds a boot may take: TCG on 2 busy cores took 56-84 s; XSPLICE_VM_BOOT_TIMEOUT overrides."""
    return float(os.environ.get("XSPLICE_VM_BOOT_TIMEOUT", "900"))


@dataclass(frozen=True)
class Verdict:
    """What the real hypervisor said to one livepatch action on one payload.

    `ok` is true when the action completed; otherwise `reason` is one line (the action, the
    tool's error and the hypervisor's own line about the payload). `console` holds the lines Xen
    printed during the action (`(XEN) livepatch: ...`), `tool` what xen-livepatch printed.
    """

    name: str
    action: str
    ok: bool
    reason: str = ""
    console: tuple[str, ...] = ()
    tool: tuple[str, ...] = ()
    exit_code: int = 0

    @property
    def livepatch_lines(self) -> tuple[str, ...]:
        """The console lines about livepatching (the loader's refusals among them)."""
        return tuple(line for line in self.console if "livepatch" in line or self.name in line)


@dataclass(frozen=True)
class Loaded:
    """One row of `xen-livepatch list`: a payload the hypervisor holds, its state and last error."""

    name: str
    state: str
    error: str = ""


class HypervisorCrashed(HypervisorError):
    """Xen panicked (its console says so) while serving a request: the VM is gone."""

    def __init__(self, message: str, console: list[str]) -> None:
        super().__init__(message)
        self.console = console


@dataclass
class Agent:
    """The framed request channel to dom0's init, through QEMU's socket for its virtio-serial port."""

    run_dir: RunDir
    timeouts: dict[str, float] = field(default_factory=dict)

    def exchange(self, verb: str, *words: str, body: bytes = b"", timeout: float = REQUEST_TIMEOUT) -> Answer:
        """One request and its answer, under work/run/agent.lock (one client at a time)."""
        with self.run_dir.agent_lock.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with self._connect() as sock:
                request_id = secrets.token_hex(4)
                sock.sendall(" ".join(("REQ", request_id, verb, *words)).encode() + b"\n" + body)
                answer = _read_answer(sock, request_id, time.monotonic() + timeout)
        if answer is None:
            raise HypervisorError(f"dom0 did not answer {verb!r} within {timeout:.0f} s; see {self.run_dir.log}")
        return answer

    def ping(self, timeout: float) -> bool:
        """True when dom0's init answers within `timeout` (False while it is still booting)."""
        with self._connect() as sock:
            request_id = secrets.token_hex(4)
            sock.sendall(f"REQ {request_id} ping\n".encode())
            return _read_answer(sock, request_id, time.monotonic() + timeout) is not None

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + 10
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.run_dir.socket))
                return sock
            except OSError as error:
                sock.close()
                if time.monotonic() > deadline:
                    raise HypervisorError(f"{self.run_dir.socket}: cannot reach the VM: "
                                          f"{error.strerror or error}") from None
                time.sleep(0.1)


def _read_answer(sock: socket.socket, request_id: str, deadline: float) -> Answer | None:
    """Read lines until `END id`; lines of other ids (answers nobody waits for) are skipped."""
    buffer = b""
    rc: int | None = None
    encoded: list[bytes] = []
    while True:
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            words = line.strip().split()
            if len(words) == 3 and words[0] == b"RSP" and words[1].decode(errors="replace") == request_id:
                rc, encoded = int(words[2]), []
            elif rc is not None and words == [b"END", request_id.encode()]:
                text = base64.b64decode(b"".join(encoded)).decode("utf-8", "replace")
                return Answer(lines=text.splitlines(), rc=rc)
            elif rc is not None:
                encoded.append(line.strip())
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sock.settimeout(min(remaining, 1.0))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError as error:
            raise HypervisorError(f"lost the VM's channel: {error.strerror or error}") from None
        if not chunk:
            raise HypervisorError("the VM closed its channel (QEMU exited?)")
        buffer += chunk


class XenVM:
    """A real hypervisor running in QEMU in the background, its state in work/run/."""

    def __init__(self, project: Project, running: RunningImage) -> None:
        self.project = project
        self.run_dir = RunDir.of(project)
        self.running = running
        self.agent = Agent(self.run_dir)

    @property
    def baseline(self) -> str:
        return self.running.baseline

    @property
    def build_id(self) -> str:
        return self.running.build_id

    @property
    def pid(self) -> int:
        return self.running.pid

    def _record(self, **changes: Any) -> None:
        self.running = replace(self.running, **changes)
        self.run_dir.write_running(self.running)

    # --- life cycle -------------------------------------------------------------------------

    @classmethod
    def boot(cls, project: Project, baseline: str, log: Log = lambda text: None) -> XenVM:
        """Start `baseline`'s hypervisor in QEMU, wait for dom0, check its build-id is the baseline's."""
        run = RunDir.of(project)
        running = run.pid()
        if running is not None:
            raise HypervisorError(f"an image is already running (pid {running}); `xen-xsplice shutdown` it first")
        expected = load_baseline(project, baseline).build.expected_build_id
        files = boot_files(project, load_runtime(project, baseline), log)
        run.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if len(str(run.socket)) > SOCKET_PATH_MAX:
            raise HypervisorError(f"{run.socket}: socket path longer than {SOCKET_PATH_MAX} bytes; use a shorter "
                                  "checkout path")
        started = time.monotonic()
        vm = None
        for accel in _accelerators():
            vm = cls._start(project, baseline, files, accel)
            log(f"booting {baseline} in QEMU ({accel}, pid {vm.pid})")
            if vm._wait_ready(KVM_TRIAL if accel == "kvm" else boot_timeout()):
                break
            vm._kill()
            if accel != "kvm":
                raise HypervisorError(f"{baseline}: dom0 did not come up within {boot_timeout():.0f} s "
                                      f"({vm._last_words()}); see {run.log}")
        assert vm is not None
        running_id = vm.run("od -An -tx1 /sys/hypervisor/properties/buildid | tr -d ' \\n'").text.strip()
        if expected and running_id != expected:
            vm.shutdown()
            raise HypervisorError(f"{baseline}: the hypervisor booted with build-id {running_id}, the baseline "
                                  f"expects {expected}; refusing it (baseline/runtime/{baseline}.toml must pin the "
                                  f"hypervisor package whose image baseline/{baseline}.toml's expected_build_id names)")
        vm.run("xl dmesg -c > /dev/null")
        vm._record(build_id=running_id, boot_seconds=round(time.monotonic() - started, 1))
        return vm

    @classmethod
    def _start(cls, project: Project, baseline: str, files: BootFiles, accel: str) -> XenVM:
        run = RunDir.of(project)
        run.socket.unlink(missing_ok=True)
        argv = qemu_command(files, run, accel)
        with run.qemu_log.open("wb") as qemu_log:
            try:
                process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=qemu_log,
                                           start_new_session=True, cwd=project.root)
            except OSError as error:
                raise HypervisorError(f"cannot run {QEMU}: {error.strerror or error} (./setup --xen installs "
                                      "qemu-system-x86)") from None
        run.pid_file.write_text(f"{process.pid}\n")
        vm = cls(project, RunningImage(kind=KIND, baseline=baseline, pid=process.pid, accel=accel))
        run.write_running(vm.running)
        vm._process = process
        return vm

    @classmethod
    def attach(cls, project: Project) -> XenVM:
        """The VM `xen-xsplice boot` left running in the background."""
        run = RunDir.of(project)
        running = run.running()
        if running is None or running.kind != KIND or not running.build_id:
            raise HypervisorError("no real-Xen VM is running; start one with `xen-xsplice boot xen-4.17`")
        if not _alive(running.pid):
            raise HypervisorError(f"the VM (pid {running.pid}) is gone; see {run.log}")
        return cls(project, running)

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(self.pid) or "KVM internal error" in _tail(self.run_dir.qemu_log):
                return False
            if self.run_dir.socket.exists():
                try:
                    if self.agent.ping(PING_INTERVAL):
                        return True
                except HypervisorError:
                    time.sleep(PING_INTERVAL)
            else:
                time.sleep(0.2)
        return False

    def shutdown(self) -> int:
        """Power dom0 off (Xen then stops and QEMU exits); force QEMU down if it does not. Returns its pid."""
        with contextlib.suppress(HypervisorError):
            self.agent.exchange("poweroff", timeout=20)
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT
        while _alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        self._kill()
        return self.pid

    def _kill(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not _alive(self.pid):
                break
            os.kill(self.pid, sig)
            deadline = time.monotonic() + 5
            while _alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        process = getattr(self, "_process", None)
        if process is not None:
            process.wait()
        for path in (self.run_dir.pid_file, self.run_dir.record, self.run_dir.socket):
            path.unlink(missing_ok=True)

    def _last_words(self) -> str:
        lines = [line for line in _tail(self.run_dir.log).splitlines() if line.strip()]
        qemu = [line for line in _tail(self.run_dir.qemu_log).splitlines() if line.strip()]
        return (qemu[-1:] or lines[-1:] or ["no console output"])[0]

    # --- requests ---------------------------------------------------------------------------

    def run(self, command: str, timeout: float = REQUEST_TIMEOUT) -> Answer:
        """Run `command` with dom0's sh; its output lines and exit code."""
        encoded = base64.b64encode(command.encode()).decode()
        try:
            return self.agent.exchange("sh", encoded, timeout=timeout)
        except HypervisorError:
            self._raise_if_crashed()
            raise

    def _raise_if_crashed(self) -> None:
        """Turn a lost channel into the hypervisor's own panic message, when its console has one."""
        lines = _tail(self.run_dir.log, 65536).splitlines()
        panics = [number for number, line in enumerate(lines) if "Panic on CPU" in line]
        if not panics:
            return
        start = max((n for n, line in enumerate(lines[:panics[-1]]) if "----[ Xen-" in line), default=panics[-1])
        report = lines[start:]
        what = " ".join(line.removeprefix("(XEN) ").strip() for line in lines[panics[-1] + 1:panics[-1] + 3])
        where = next((line.split("] R ", 1)[1].strip() for line in report if "] R " in line), "")
        self._kill()
        raise HypervisorCrashed(f"the hypervisor panicked: {what.strip('* ')} in {where or 'an unknown place'}; "
                                f"see {self.run_dir.log}", report)

    def request(self, line: str) -> Answer:
        """A probe's request (probes.py): a dom0 command line."""
        return self.run(line)

    def put(self, name: str, payload: bytes) -> None:
        """Copy `payload` to dom0's /payloads/NAME, checked there by its sha256."""
        check_payload_name(name)
        encoded = base64.b64encode(payload)
        answer = self.agent.exchange("put", name, str(len(encoded)), sha256_bytes(payload), body=encoded)
        if answer.rc:
            raise HypervisorError(f"{name}: copying the payload into dom0 failed: {answer.text.strip()}")

    def livepatch(self, action: str, name: str) -> Verdict:
        """`xen-livepatch ACTION NAME` in dom0 (one retry when it says "retry"), with Xen's console lines."""
        check_payload_name(name)
        argument = f" /payloads/{name}" if action == "upload" else ""
        command = (f"xen-livepatch {action} {name}{argument}; rc=$?; echo '{CONSOLE_MARK}'; xl dmesg -c; "
                   "exit $rc")
        answer = self.run(command)
        if answer.rc == LIVEPATCH_RETRY and action != "upload":
            answer = self.run(command)
        return _verdict(name, action, answer)

    def upload(self, name: str, payload: bytes) -> Verdict:
        self.put(name, payload)
        verdict = self.livepatch("upload", name)
        self.run(f"rm -f /payloads/{name}")
        return verdict

    def apply(self, name: str) -> Verdict:
        return self.livepatch("apply", name)

    def revert(self, name: str) -> Verdict:
        return self.livepatch("revert", name)

    def unload(self, name: str) -> Verdict:
        return self.livepatch("unload", name)

    def loaded(self) -> list[Loaded]:
        """`xen-livepatch list`, one Loaded per payload the hypervisor holds."""
        answer = self.run("xen-livepatch list")
        if answer.rc:
            raise HypervisorError(f"xen-livepatch list failed: {answer.text.strip()}")
        rows = []
        for line in answer.lines[2:] if len(answer.lines) > 1 else []:
            name, status, *_metadata = [*line.split("|"), ""]
            state, _, error = status.strip().partition(" ")
            rows.append(Loaded(name.strip(), state, error.strip(" ()")))
        return rows

    def console(self) -> list[str]:
        """Xen's console lines since the last read (`xl dmesg -c`)."""
        return self.run("xl dmesg -c").lines

    def try_payload(self, name: str, payload: bytes) -> Verdict:
        """Upload, apply, revert, unload; the first refusal is the verdict, and nothing stays loaded."""
        return self.prove(name, payload, [])

    def prove(self, name: str, payload: bytes, probes: list[Probe]) -> Verdict:
        """Probes before; upload, apply; probes applied; revert; probes reverted; unload.

        The first refusal (the hypervisor's, or a probe's unexpected answer) is the verdict, and
        the payload is reverted and unloaded after it: the hypervisor is left as it was found.
        """
        console: list[str] = []
        steps: list[tuple[str, Callable[[], Verdict | None]]] = [
            ("probe before", lambda: check_phase(self, probes, "before", name)),
            ("upload", lambda: self.upload(name, payload)), ("apply", lambda: self.apply(name)),
            ("probe applied", lambda: check_phase(self, probes, "applied", name)),
            ("revert", lambda: self.revert(name)),
            ("probe reverted", lambda: check_phase(self, probes, "reverted", name)),
            ("unload", lambda: self.unload(name))]
        for action, step in steps:
            try:
                verdict = step()
            except PayloadRejected as error:
                verdict = Verdict(name, action, False, error.message)
            if verdict is None:
                continue
            console.extend(verdict.console)
            if not verdict.ok:
                self.clean(name)
                return Verdict(name, action, False, verdict.reason, tuple(console), verdict.tool, verdict.exit_code)
        return Verdict(name, "unload", True, console=tuple(console))

    def clean(self, name: str) -> None:
        """Revert and unload `name` if the hypervisor holds it (after a failure half-way)."""
        for row in self.loaded():
            if row.name == name:
                if row.state == "APPLIED":
                    self.revert(name)
                self.unload(name)


def _verdict(name: str, action: str, answer: Answer) -> Verdict:
    lines = answer.lines
    cut = lines.index(CONSOLE_MARK) if CONSOLE_MARK in lines else len(lines)
    tool, console = tuple(lines[:cut]), tuple(line for line in lines[cut + 1:] if line.strip())
    if answer.rc == 0:
        return Verdict(name, action, True, console=console, tool=tool)
    verdict = Verdict(name, action, False, console=console, tool=tool, exit_code=answer.rc)
    said = next((line for line in tool if line.startswith("Error ")), None) or " ".join(tool).strip()
    hypervisor = " | ".join(line.removeprefix("(XEN) ").strip() for line in verdict.livepatch_lines)
    reason = f"{action} {name}: refused by Xen ({said or f'xen-livepatch exit {answer.rc}'})"
    return Verdict(name, action, False, f"{reason}: {hypervisor}" if hypervisor else reason, console, tool,
                   answer.rc)


def qemu_command(files: BootFiles, run: RunDir, accel: str) -> list[str]:
    """QEMU booting Xen by multiboot (dom0 kernel and initramfs as modules), one vCPU.

    One vCPU: with two under TCG a revert once timed out in Xen's rendezvous. com1 (Xen's console)
    goes to a file; a virtio-serial port named xsplice.agent, the request channel, to a Unix socket.
    """
    for path in (files.hypervisor, files.kernel, files.initrd):
        if "," in str(path):
            raise HypervisorError(f"{path}: QEMU cannot take a path with a comma as a multiboot module")
    cpu = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
    return [QEMU, *cpu, "-m", "2048", "-smp", "1", "-machine", "pc", "-display", "none", "-monitor", "none",
            "-no-reboot", "-nodefaults", "-vga", "none",
            "-serial", f"file:{run.log}",
            "-device", "virtio-serial-pci", "-chardev", f"socket,id=agent,path={run.socket},server=on,wait=off",
            "-device", "virtserialport,chardev=agent,name=xsplice.agent",
            "-kernel", str(files.hypervisor), "-append", files.xen_command_line,
            "-initrd", f"{files.kernel} {files.kernel_command_line},{files.initrd}"]


def _accelerators() -> list[str]:
    """XSPLICE_VM_ACCEL=kvm|tcg|auto (default): auto tries KVM when /dev/kvm is usable, then TCG."""
    wanted = os.environ.get("XSPLICE_VM_ACCEL", "auto")
    if wanted in ("kvm", "tcg"):
        return [wanted]
    return ["kvm", "tcg"] if os.access("/dev/kvm", os.R_OK | os.W_OK) else ["tcg"]


def _tail(path: Path, size: int = 8192) -> str:
    try:
        with path.open("rb") as stream:
            stream.seek(max(0, path.stat().st_size - size))
            return stream.read().decode("utf-8", "replace")
    except OSError:
        return ""


@contextmanager
def for_stage(project: Project, baseline: str, log: Log = lambda text: None) -> Iterator[XenVM]:
    """The VM running `baseline` for the prove stage, booted on first use and shared by every prove.

    Proofs run one at a time (work/run/prove.lock): Xen stacks payloads, so two at once would
    refuse each other. A VM the stage booted is marked as such; `stop_stage_vm` ends it.
    """
    run = RunDir.of(project)
    run.path.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (run.path / "prove.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        running = run.running()
        if running is None:
            vm = XenVM.boot(project, baseline, log)
            vm._record(owner=PROVE_STAGE)
        elif running.kind == KIND and running.baseline == baseline:
            vm = XenVM.attach(project)
        else:
            raise HypervisorError(f"{running.baseline} is running (pid {running.pid}), not {baseline}; "
                                  "`xen-xsplice shutdown` it first")
        held = [row.name for row in vm.loaded()]
        if held:
            raise HypervisorError(f"the running hypervisor holds {', '.join(held)}; a proof needs it bare "
                                  "(revert and unload them first)")
        yield vm


def stop_stage_vm(root: str) -> None:
    """doit teardown of the prove tasks: shut down the VM the stage booted (never one a user booted)."""
    project = Project(Path(root))
    running = RunDir.of(project).running()
    if running is not None and running.kind == KIND and running.owner == PROVE_STAGE:
        with contextlib.suppress(HypervisorError):
            XenVM.attach(project).shutdown()
