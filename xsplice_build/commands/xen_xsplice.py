"""`xen-xsplice`: the tools side of the xSplice design (upload, list, check, apply, revert, unload).

    xen-xsplice boot BASELINE          start the baseline's image in the background: minixen as a
                                       process, a real-Xen baseline (baseline/runtime/NAME.toml) in a VM
    xen-xsplice info                   the running image's version lines (xen_extra : ...)
    xen-xsplice upload NAME PATH [--cert CERT]
    xen-xsplice list | check NAME | apply NAME | revert NAME | unload NAME | replace NAME | shutdown
    xen-xsplice prove PATCH [PATH]     upload, probe, apply, probe, revert, probe, unload
                                       (a stacked PATCH: its stack applied first, in order, and
                                       reverted after it; a cumulative A+B: A applied, then replaced)

Stacking (Xen's rules, checked here before the image is asked): a payload is applied only on
top of the payload its .livepatch.depends names (the one applied last, or the image itself
when none is), and only the payload applied last is reverted. `replace` applies a payload
built against the image itself, reverting every applied payload first (Xen's REPLACE).

Every refusal is one line on stderr and a non-zero exit; the running image is untouched. With
real Xen, the hypervisor's own console lines about the payload are printed first (stdout).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..console import run_command
from ..elf.livepatch import DEPENDS, XEN_DEPENDS
from ..elf.notes import parse_build_id_note
from ..elf.reader import read_elf
from ..errors import PayloadRejected
from ..patches import BuildSpec, build_spec
from ..project import Project, check_name
from ..runtime import hypervisor
from ..stages import sign
from ..vm.channel import (
    STATE_APPLIED,
    STATE_CHECKED,
    STATE_NAMES,
    Answer,
    Connection,
    HypervisorError,
    RunDir,
    check_payload_name,
)
from ..vm.probes import Probe, check_phase, load_probes, probe_file
from ..vm.vm_runtime import has_runtime
from ..vm.xen_vm import KIND, Verdict, XenVM

# The states an action may start from (Xen's livepatch state machine), shown as "ok are".
ALLOWED = {"check": STATE_CHECKED | STATE_APPLIED, "apply": STATE_CHECKED, "revert": STATE_APPLIED,
           "unload": STATE_CHECKED, "replace": STATE_CHECKED}


class Target(Protocol):
    """What the commands drive: minixen's socket, or real Xen's xen-livepatch in a VM's dom0."""

    def build_id(self) -> str: ...
    def info(self) -> list[str]: ...
    def upload(self, name: str, payload: bytes) -> None: ...
    def payloads(self) -> list[tuple[str, str]]: ...
    def state(self, name: str) -> tuple[int, int, str]: ...
    def act(self, name: str, action: str) -> None: ...
    def request(self, line: str) -> Answer: ...


class MinixenTarget:
    """minixen's loader through its request socket."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def build_id(self) -> str:
        return _checked(self.connection.request("info"), "info").value("build_id")

    def info(self) -> list[str]:
        return _checked(self.connection.request("info"), "info").lines

    def upload(self, name: str, payload: bytes) -> None:
        _checked(self.connection.request(f"livepatch upload {name} {len(payload)}", payload), f"upload {name}")

    def payloads(self) -> list[tuple[str, str]]:
        answer = _checked(self.connection.request("livepatch list"), "list")
        return [tuple(value.split()[:2]) for value in answer.values("payload")]  # type: ignore[misc]

    def state(self, name: str) -> tuple[int, int, str]:
        check_payload_name(name)
        answer = _checked(self.connection.request(f"livepatch get {name}"), f"get {name}")
        return STATE_NAMES[answer.value("state")], int(answer.value("rc", "0")), answer.value("error")

    def act(self, name: str, action: str) -> None:
        _checked(self.connection.request(f"livepatch {action} {name}"), f"{action} {name}")
        if action != "unload":
            # Xen's actions complete asynchronously: the image patches at its quiescent point.
            _after, rc, error = self.state(name)
            if rc:
                raise PayloadRejected(f"{name}: {action} failed (rc {rc}): {error}")

    def request(self, line: str) -> Answer:
        return self.connection.request(line)


class XenTarget:
    """Real Xen's own loader, through Xen's own xen-livepatch in the VM's dom0 (xen_vm.py)."""

    def __init__(self, vm: XenVM) -> None:
        self.vm = vm

    def build_id(self) -> str:
        return self.vm.build_id

    def info(self) -> list[str]:
        answer = self.vm.run("xl info")
        if answer.rc:
            raise HypervisorError(f"xl info failed in dom0: {answer.text.strip()}")
        return answer.lines

    def upload(self, name: str, payload: bytes) -> None:
        _accepted(self.vm.upload(name, payload))

    def payloads(self) -> list[tuple[str, str]]:
        return [(row.name, row.state) for row in self.vm.loaded()]

    def state(self, name: str) -> tuple[int, int, str]:
        for row in self.vm.loaded():
            if row.name == name:
                if row.state not in STATE_NAMES:
                    raise PayloadRejected(f"{name}: the hypervisor reports state {row.state!r}")
                return STATE_NAMES[row.state], -1 if row.error else 0, row.error
        raise PayloadRejected(f"get {name}: refused by the running image: no payload of that name is loaded")

    def act(self, name: str, action: str) -> None:
        _accepted(self.vm.livepatch(action, name))

    def request(self, line: str) -> Answer:
        return self.vm.request(line)


def _accepted(verdict: Verdict) -> None:
    """A refusal of the real hypervisor: its console lines on stdout, then the one-line refusal."""
    if not verdict.ok:
        for line in verdict.console:
            print(line)
        raise PayloadRejected(verdict.reason)


@contextmanager
def connected(project: Project) -> Iterator[Target]:
    """The running image as a Target: the VM when a real-Xen baseline runs, else minixen's socket."""
    running = RunDir.of(project).running()
    if running is not None and running.kind == KIND:
        yield XenTarget(XenVM.attach(project))
        return
    with RunDir.of(project).connect() as connection:
        yield MinixenTarget(connection)


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    return run_command("xen-xsplice", lambda: arguments.run(Project.find(), arguments))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xen-xsplice", description="drive live patching of a running image")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    boot = commands.add_parser("boot", help="start a baseline's image in the background (real Xen: in a VM)")
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
    for action in ("check", "apply", "revert", "unload", "replace"):
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
    baseline = check_name("baseline", arguments.baseline)
    if has_runtime(project, baseline):
        vm = XenVM.boot(project, baseline, lambda text: print(f"xen-xsplice: {text}", file=sys.stderr))
        print(f"{baseline}: booted Debian's hypervisor in QEMU ({vm.running.accel}, pid {vm.pid}, build-id "
              f"{vm.build_id}) in {vm.running.boot_seconds} s; console {vm.run_dir.log.relative_to(project.root)}")
        return
    pid, record = hypervisor.boot(project, baseline)
    print(f"{baseline}: booted {record.image} (pid {pid}, build-id {record.build_id}); "
          f"socket {RunDir.of(project).socket.relative_to(project.root)}")


def _info(project: Project, arguments: argparse.Namespace) -> None:
    with connected(project) as target:
        print("\n".join(target.info()))


def _upload(project: Project, arguments: argparse.Namespace) -> None:
    check_payload_name(arguments.name)
    certificate = arguments.cert or hypervisor.trusted_certificate(project)
    with connected(project) as target:
        upload(target, arguments.name, arguments.path, certificate)


def upload(target: Target, name: str, path: Path, certificate: Path) -> None:
    """Verify the signature and the build-id dependency here, then hand the unsigned payload over."""
    check_payload_name(name)
    payload = sign.verify_file(path, certificate)
    _check_build_id(target, payload, str(path))
    print(f"Uploading {path} ({path.stat().st_size} bytes)")
    target.upload(name, payload)


def _check_build_id(target: Target, payload: bytes, name: str) -> None:
    """The payload must depend on the running image: refuse before sending it."""
    elf = read_elf(payload, name)
    section = elf.section_named(XEN_DEPENDS) or elf.section_named(DEPENDS)
    if section is None:
        raise PayloadRejected(f"{name}: no {XEN_DEPENDS}: not a livepatch payload")
    wanted = parse_build_id_note(section.data, f"{name}: {section.name}").hex()
    running = target.build_id()
    if wanted != running:
        raise PayloadRejected(f"{name}: built for build-id {wanted}, the running image is {running}; "
                              "rebuild it against the running image")


def _list(project: Project, arguments: argparse.Namespace) -> None:
    with connected(project) as target:
        payloads = target.payloads()
    print(f" {'ID':<39}| status")
    print(f"{'-' * 40}+{'-' * 12}")
    for name, state in payloads:
        print(f"{name:<40}| {state}")


def _check(project: Project, arguments: argparse.Namespace) -> None:
    check_payload_name(arguments.name)
    with connected(project) as target:
        state, rc, error = target.state(arguments.name)
    outcome = "completed!" if rc == 0 else f"failed: {error or f'rc {rc}'}"
    print(f"{arguments.name}: State is {state:#x}, ok are {ALLOWED['check']:#x}. Commencing check:{outcome}")
    if rc:
        raise PayloadRejected(f"{arguments.name}: last action failed (rc {rc}): {error}")


def _action(project: Project, arguments: argparse.Namespace) -> None:
    check_payload_name(arguments.name)
    with connected(project) as target:
        perform(target, arguments.name, arguments.action)


def perform(target: Target, name: str, action: str) -> None:
    """apply, revert, unload or replace `name`, from a state that allows it; wait for the outcome."""
    state, _rc, _error = target.state(name)
    if not state & ALLOWED[action]:
        raise PayloadRejected(f"{name}: State is {state:#x}, ok are {ALLOWED[action]:#x}: cannot {action} "
                              f"a payload that is {_state_name(state)}")
    _check_order(target, name, action)
    target.act(name, action)
    print(f"{name}: State is {state:#x}, ok are {ALLOWED[action]:#x}. Commencing {action}:completed!")


@dataclass(frozen=True)
class Loaded:
    """A loaded payload as the image reports it: its build-ids and where it is in the applied stack."""

    name: str
    build_id: str
    depends: str
    applied_order: int


def _loaded(target: Target) -> list[Loaded]:
    """What minixen's list and get say of each loaded payload (Xen's xen-livepatch list says less)."""
    found = []
    for name, _state in target.payloads():
        if not isinstance(target, MinixenTarget):
            found.append(Loaded(name, "", "", 0))
            continue
        answer = _checked(target.request(f"livepatch get {name}"), f"get {name}")
        found.append(Loaded(name, answer.value("build_id"), answer.value("depends"),
                            int(answer.value("applied_order", "0") or 0)))
    return found


def _check_order(target: Target, name: str, action: str) -> None:
    """Xen's stacking rules, refused here in words: apply on top of what it depends on, revert the last first.

    Real Xen's xen-livepatch does not report what a payload depends on or the order they were applied in:
    there Xen's own refusal (build_id_dep, "can't revert") is the answer.
    """
    if action not in ("apply", "revert", "replace") or not isinstance(target, MinixenTarget):
        return
    loaded = _loaded(target)
    this = next(item for item in loaded if item.name == name)
    applied = sorted((item for item in loaded if item.applied_order), key=lambda item: item.applied_order)
    top = applied[-1] if applied else None
    if action == "revert":
        if top is not None and top.name != name:
            raise PayloadRejected(f"{name}: {top.name} is applied on top of it; revert {top.name} first (Xen "
                                  "reverts only the payload applied last)")
        return
    image = target.build_id()
    wanted = image if action == "replace" or top is None else top.build_id
    if this.depends == wanted:
        return
    if action == "replace":
        raise PayloadRejected(f"{name}: goes on top of build-id {this.depends}, but a replacement must be built "
                              f"against the image itself ({image})")
    below = next((item.name for item in loaded if item.build_id == this.depends), None)
    needed = "the image itself" if this.depends == image else below or f"the payload with build-id {this.depends}"
    last = top.name if top else "nothing"
    raise PayloadRejected(f"{name}: goes on top of {needed}, but {last} is applied last; apply the advisories "
                          "in their order (revert down to the one it goes on, or apply the ones before it)")


def _prove(project: Project, arguments: argparse.Namespace) -> None:
    running = RunDir.of(project).running()
    if running is None:
        raise HypervisorError("no image is running; start one with `xen-xsplice boot BASELINE`")
    baseline, pid = running.baseline, running.pid
    patch = check_payload_name(check_name("patch", arguments.patch))
    spec = build_spec(project, patch, baseline)
    proof = Proof(project, baseline, arguments.cert or hypervisor.trusted_certificate(project))
    path = arguments.path or proof.payload(patch)
    with connected(project) as target:
        try:
            prove = proof.replace if spec.action == "replace" else proof.stacked
            told = prove(target, spec, path)
        finally:
            proof.clean_up(target)
    now = RunDir.of(project).pid()
    if now != pid:
        raise HypervisorError(f"{patch}: the image restarted during the proof (pid {pid} -> {now})")
    print(f"{patch}: proven on {baseline} (pid {pid}): {told}")


class Proof:
    """Payloads applied and reverted in Xen's order, each step checked with the probes that describe it."""

    def __init__(self, project: Project, baseline: str, certificate: Path) -> None:
        self.project, self.baseline, self.certificate = project, baseline, certificate
        self.uploaded: list[str] = []

    def payload(self, name: str) -> Path:
        return self.project.patch_out(self.baseline, name) / f"{name}.livepatch"

    def probes(self, name: str) -> list[Probe]:
        return load_probes(probe_file(self.project, name, self.baseline))

    def put_on(self, target: Target, name: str, path: Path, action: str = "apply",
               probes_of: str | None = None) -> None:
        """Upload and apply (or replace with) `name`, checking the probes before and while applied."""
        probes = self.probes(probes_of or name)
        if action == "apply":
            check_phase(target, probes, "before", name)
        upload(target, name, path, self.certificate)
        self.uploaded.append(name)
        perform(target, name, action)
        check_phase(target, probes, "applied", name)

    def take_off(self, target: Target, name: str, probes_of: str | None = None,
                 phase: str = "reverted") -> None:
        perform(target, name, "revert")
        check_phase(target, self.probes(probes_of or name), phase, name)

    def stacked(self, target: Target, spec: BuildSpec, path: Path) -> str:
        """The stack applied in order, the payload on top, each reverted newest first."""
        for earlier in spec.stack:
            self.put_on(target, earlier, self.payload(earlier))
        self.put_on(target, spec.name, path)
        self.take_off(target, spec.name)
        for earlier in reversed(spec.stack):
            self.take_off(target, earlier)
        steps = [*spec.stack, spec.name]
        return (f"applied {' then '.join(steps)}, reverted in the reverse order; every probe held "
                f"before, applied and reverted")

    def replace(self, target: Target, spec: BuildSpec, path: Path) -> str:
        """The first fix applied alone, then replaced by the cumulative payload; then that reverted."""
        first, last = spec.fixes[0], spec.fixes[-1]
        self.put_on(target, first, self.payload(first))
        self.put_on(target, spec.name, path, action="replace", probes_of=last)
        # REPLACE reverted the first payload: once the replacement is reverted too, nothing is applied.
        self.take_off(target, spec.name, probes_of=first, phase="before")
        return (f"applied {first}, replaced it with {spec.name} (the probes of {last} held), reverted that: "
                f"the probes of {first} before it held again")

    def clean_up(self, target: Target) -> None:
        """Revert what is still applied, newest first, and unload everything this proof uploaded."""
        loaded = {item.name: item for item in _loaded(target)}
        for item in sorted((i for i in loaded.values() if i.name in self.uploaded and i.applied_order),
                           key=lambda i: -i.applied_order):
            perform(target, item.name, "revert")
        for name in reversed(self.uploaded):
            if name in loaded:
                perform(target, name, "unload")
        self.uploaded.clear()


def _state_name(state: int) -> str:
    return {STATE_CHECKED: "CHECKED", STATE_APPLIED: "APPLIED"}.get(state, f"state {state}")


def _shutdown(project: Project, arguments: argparse.Namespace) -> None:
    running = RunDir.of(project).running()
    if running is not None and running.kind == KIND:
        pid = XenVM.attach(project).shutdown()
    else:
        pid = hypervisor.shutdown(project)
    print(f"shut down (pid {pid})")


def _checked(answer: Answer, what: str) -> Answer:
    if answer.rc:
        raise PayloadRejected(f"{what}: refused by the running image (rc {answer.rc}): {answer.error}")
    return answer


if __name__ == "__main__":
    sys.exit(main())
