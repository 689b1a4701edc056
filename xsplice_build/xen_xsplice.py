"""`xen-xsplice`: the tools side of the xSplice design (upload, list, check, apply, revert, unload).

    xen-xsplice boot BASELINE          start the baseline's base image in the background
    xen-xsplice info                   the running image's version lines (xen_extra : ...)
    xen-xsplice upload NAME PATH [--cert CERT]
    xen-xsplice list | check NAME | apply NAME | revert NAME | unload NAME | shutdown
    xen-xsplice prove PATCH [PATH]     upload, probe, apply, probe, revert, probe, unload

Every refusal is one line on stderr and a non-zero exit; the running image is untouched.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import hypervisor, sign
from .console import run_command
from .elf.livepatch import DEPENDS, XEN_DEPENDS
from .elf.notes import parse_build_id_note
from .elf.reader import read_elf
from .errors import PayloadRejected
from .hypervisor import (
    STATE_APPLIED,
    STATE_CHECKED,
    STATE_NAMES,
    Connection,
    HypervisorError,
    RunDir,
    check_payload_name,
)
from .probes import check_phase, load_probes, probe_file
from .project import Project, check_name

# The states an action may start from (Xen's livepatch state machine), shown as "ok are".
ALLOWED = {"check": STATE_CHECKED | STATE_APPLIED, "apply": STATE_CHECKED, "revert": STATE_APPLIED,
           "unload": STATE_CHECKED}


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    return run_command("xen-xsplice", lambda: arguments.run(Project.find(), arguments))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xen-xsplice", description="drive live patching of a running image")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    boot = commands.add_parser("boot", help="start a baseline's base image in the background")
    boot.add_argument("baseline")
    boot.set_defaults(run=_boot)
    commands.add_parser("info", help="the running image's version").set_defaults(run=_info)
    upload = commands.add_parser("upload", help="verify a signed payload and load it (state CHECKED)")
    upload.add_argument("name")
    upload.add_argument("path", type=Path)
    upload.add_argument("--cert", type=Path, help="trusted certificate (default: XSPLICE_TRUSTED_CERT, else the "
                                                  "development certificate)")
    upload.set_defaults(run=_upload)
    commands.add_parser("list", help="every loaded payload and its state").set_defaults(run=_list)
    for action in ("check", "apply", "revert", "unload"):
        command = commands.add_parser(action, help=f"{action} a loaded payload")
        command.add_argument("name")
        command.set_defaults(run=_check if action == "check" else _action, action=action)
    prove = commands.add_parser("prove", help="apply and revert a patch's payload, checking its probes each time")
    prove.add_argument("patch")
    prove.add_argument("path", type=Path, nargs="?", help="the signed payload (default: out/BASELINE/PATCH/)")
    prove.add_argument("--cert", type=Path, help="trusted certificate")
    prove.set_defaults(run=_prove)
    commands.add_parser("shutdown", help="stop the running image").set_defaults(run=_shutdown)
    return parser


def _boot(project: Project, arguments: argparse.Namespace) -> None:
    pid, record = hypervisor.boot(project, arguments.baseline)
    print(f"{arguments.baseline}: booted {record['image']} (pid {pid}, build-id {record['build_id']}); "
          f"socket {RunDir.of(project).socket.relative_to(project.root)}")


def _info(project: Project, arguments: argparse.Namespace) -> None:
    with RunDir.of(project).connect() as connection:
        answer = _checked(connection.request("info"), "info")
    print("\n".join(answer.lines))


def _upload(project: Project, arguments: argparse.Namespace) -> None:
    check_payload_name(arguments.name)
    certificate = arguments.cert or hypervisor.trusted_certificate(project)
    with RunDir.of(project).connect() as connection:
        upload(connection, arguments.name, arguments.path, certificate)


def upload(connection: Connection, name: str, path: Path, certificate: Path) -> None:
    """Verify the signature and the build-id dependency here, then hand the unsigned payload over."""
    check_payload_name(name)
    payload = sign.verify_file(path, certificate)
    _check_build_id(connection, payload, str(path))
    print(f"Uploading {path} ({path.stat().st_size} bytes)")
    _checked(connection.request(f"livepatch upload {name} {len(payload)}", payload), f"upload {name}")


def _check_build_id(connection: Connection, payload: bytes, name: str) -> None:
    """The payload must depend on the running image: refuse before sending it."""
    elf = read_elf(payload, name)
    section = elf.section_named(XEN_DEPENDS) or elf.section_named(DEPENDS)
    if section is None:
        raise PayloadRejected(f"{name}: no {XEN_DEPENDS}: not a livepatch payload")
    wanted = parse_build_id_note(section.data, f"{name}: {section.name}").hex()
    running = _checked(connection.request("info"), "info").value("build_id")
    if wanted != running:
        raise PayloadRejected(f"{name}: built for build-id {wanted}, the running image is {running}; "
                              "rebuild it against the running image")


def _list(project: Project, arguments: argparse.Namespace) -> None:
    with RunDir.of(project).connect() as connection:
        answer = _checked(connection.request("livepatch list"), "list")
    print(f" {'ID':<39}| status")
    print(f"{'-' * 40}+{'-' * 12}")
    for value in answer.values("payload"):
        name, state, _rc = value.split()
        print(f"{name:<40}| {state}")


def _state(connection: Connection, name: str) -> tuple[int, int, str]:
    check_payload_name(name)
    answer = _checked(connection.request(f"livepatch get {name}"), f"get {name}")
    rc = int(answer.value("rc", "0"))
    return STATE_NAMES[answer.value("state")], rc, answer.value("error")


def _check(project: Project, arguments: argparse.Namespace) -> None:
    check_payload_name(arguments.name)
    with RunDir.of(project).connect() as connection:
        state, rc, error = _state(connection, arguments.name)
    outcome = "completed!" if rc == 0 else f"failed: {error or f'rc {rc}'}"
    print(f"{arguments.name}: State is {state:#x}, ok are {ALLOWED['check']:#x}. Commencing check:{outcome}")
    if rc:
        raise PayloadRejected(f"{arguments.name}: last action failed (rc {rc}): {error}")


def _action(project: Project, arguments: argparse.Namespace) -> None:
    check_payload_name(arguments.name)
    with RunDir.of(project).connect() as connection:
        perform(connection, arguments.name, arguments.action)


def perform(connection: Connection, name: str, action: str) -> None:
    """apply, revert or unload `name`, from a state that allows it; wait for the outcome."""
    state, _rc, _error = _state(connection, name)
    if not state & ALLOWED[action]:
        raise PayloadRejected(f"{name}: State is {state:#x}, ok are {ALLOWED[action]:#x}: cannot {action} "
                              f"a payload that is {_state_name(state)}")
    _checked(connection.request(f"livepatch {action} {name}"), f"{action} {name}")
    if action != "unload":
        # Xen's actions complete asynchronously: the image patches at its quiescent point.
        _after, rc, error = _state(connection, name)
        if rc:
            raise PayloadRejected(f"{name}: {action} failed (rc {rc}): {error}")
    print(f"{name}: State is {state:#x}, ok are {ALLOWED[action]:#x}. Commencing {action}:completed!")


def _prove(project: Project, arguments: argparse.Namespace) -> None:
    run = RunDir.of(project)
    pid = run.pid()
    baseline = json.loads(run.record.read_text())["baseline"] if pid and run.record.is_file() else None
    if baseline is None:
        raise HypervisorError("no image is running; start one with `xen-xsplice boot minixen`")
    patch = check_payload_name(check_name("patch", arguments.patch))
    path = arguments.path or project.patch_out(baseline, patch) / f"{patch}.livepatch"
    probes = load_probes(probe_file(project, patch, baseline))
    with run.connect() as connection:
        check_phase(connection, probes, "before", patch)
        upload(connection, patch, path, arguments.cert or hypervisor.trusted_certificate(project))
        try:
            perform(connection, patch, "apply")
            try:
                check_phase(connection, probes, "applied", patch)
            finally:
                perform(connection, patch, "revert")
            check_phase(connection, probes, "reverted", patch)
        finally:
            perform(connection, patch, "unload")
    if run.pid() != pid:
        raise HypervisorError(f"{patch}: the image restarted during the proof (pid {pid} -> {run.pid()})")
    print(f"{patch}: proven on {baseline} (pid {pid}): {len(probes)} probe(s) before, applied and reverted")


def _state_name(state: int) -> str:
    return {STATE_CHECKED: "CHECKED", STATE_APPLIED: "APPLIED"}.get(state, f"state {state}")


def _shutdown(project: Project, arguments: argparse.Namespace) -> None:
    pid = hypervisor.shutdown(project)
    print(f"shut down (pid {pid})")


def _checked(answer: hypervisor.Answer, what: str) -> hypervisor.Answer:
    if answer.rc:
        raise PayloadRejected(f"{what}: refused by the running image (rc {answer.rc}): {answer.error}")
    return answer


if __name__ == "__main__":
    sys.exit(main())
