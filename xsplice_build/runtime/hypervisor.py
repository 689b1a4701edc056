"""A running base image (minixen) in the background: booting it, and its request interface.

(A real-Xen baseline runs in a VM instead: vm/xen_vm.py; both share vm/channel.py's work/run/ layout.)

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
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import ConfigError
from ..pipeline.runner import run_targets
from ..project import Project
from ..records import BaseRecord, Records
from ..vm.channel import (
    MINIXEN,
    SOCKET_PATH_MAX,
    HypervisorError,
    RunDir,
    RunningImage,
    _alive,
)

BOOT_TIMEOUT = 10.0


def trusted_certificate(project: Project | None = None) -> Path:
    """The certificate payloads must verify against: XSPLICE_TRUSTED_CERT (any directory), else the checkout's
    development one (`project`, default: the checkout around the current directory)."""
    configured = os.environ.get("XSPLICE_TRUSTED_CERT")
    if configured:
        return Path(configured)
    return (project or Project.find()).root / "keys" / "development" / "signing_cert.pem"


def build_base(project: Project, baseline: str) -> BaseRecord:
    """The baseline's base image, built through the pipeline when needed; its build-base record."""
    from ..target.baseline import load_baseline

    baseline = load_baseline(project, baseline).name  # "unknown baseline 'X'" before any build
    announce = lambda text: print(f"xen-xsplice: {text}", file=sys.stderr)  # noqa: E731
    result = run_targets(project, [f"build-base:{baseline}"], echo=False, announce=announce)
    record_path = Records(project, baseline).build_base
    if result.code != 0 or not record_path.is_file():
        reason = next(iter(result.failed.values()), f"doit exited {result.code}")
        raise HypervisorError(f"baseline {baseline}: building the base image failed: {reason}")
    return BaseRecord.read(record_path)


def boot(project: Project, baseline: str) -> tuple[int, BaseRecord]:
    """Start the baseline's base image in the background; (pid, its build-base record)."""
    run = RunDir.of(project)
    running = run.pid()
    if running is not None:
        raise HypervisorError(f"an image is already running (pid {running}); `xen-xsplice shutdown` it first")
    record = build_base(project, baseline)
    image = project.root / record.image
    run.path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if len(str(run.socket)) > SOCKET_PATH_MAX:
        raise ConfigError(f"{run.socket}: socket path longer than {SOCKET_PATH_MAX} bytes; use a shorter checkout "
                          "path")
    run.socket.unlink(missing_ok=True)
    with run.log.open("wb") as log:
        process = subprocess.Popen([str(image), "--socket", str(run.socket)], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=log, start_new_session=True, cwd=project.root)
    run.pid_file.write_text(f"{process.pid}\n")
    run.write_running(RunningImage(kind=MINIXEN, baseline=baseline, pid=process.pid, build_id=record.build_id,
                                   image=record.image))
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
