"""The real-Xen VM's parts that need no VM: the initramfs archive, the runtime pins, the channel's framing."""

from __future__ import annotations

import base64
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

from xsplice_build.elf.dynamic import dependencies
from xsplice_build.errors import ConfigError
from xsplice_build.project import Project
from xsplice_build.vm import cpio
from xsplice_build.vm.channel import Answer
from xsplice_build.vm.vm_runtime import load_runtime, runtime_path
from xsplice_build.vm.xen_vm import CONSOLE_MARK, _read_answer, _verdict


def test_the_archive_is_what_cpio_unpacks_and_the_same_bytes_every_time(tmp_path: Path) -> None:
    entries = [cpio.regular("bin/tool", b"#!/bin/sh\necho hi\n", executable=True), cpio.directory("bin"),
               cpio.regular("etc/xen/xl.conf", b""), cpio.directory("etc"), cpio.directory("etc/xen"),
               cpio.character_device("dev/console", 5, 1), cpio.directory("dev")]
    data = cpio.archive(entries)
    assert data == cpio.archive(list(reversed(entries)))
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=data, capture_output=True, check=True).stdout.decode()
    rows = [line.split() for line in listing.splitlines()]
    assert [row[-1] for row in rows] == ["bin", "bin/tool", "dev", "dev/console", "etc", "etc/xen", "etc/xen/xl.conf"]
    assert rows[1][0] == "-rwxr-xr-x" and rows[3][0] == "crw-------" and {row[2] for row in rows} == {"root"}
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/*"], input=data,
                   cwd=tmp_path, check=True)
    assert (tmp_path / "bin" / "tool").read_bytes() == b"#!/bin/sh\necho hi\n"


def test_a_program_names_its_interpreter_and_libraries(tmp_path: Path) -> None:
    source = tmp_path / "p.c"
    source.write_text("#include <math.h>\nint main(int c, char **v) { return (int)sqrt((double)c); }\n")
    subprocess.run(["gcc", "-o", str(tmp_path / "p"), str(source), "-lm"], check=True)
    found = dependencies((tmp_path / "p").read_bytes(), "p")
    assert found.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert set(found.needed) == {"libm.so.6", "libc.so.6"}


def test_the_bundled_runtime_pins_every_package() -> None:
    runtime = load_runtime(Project(REPO), "xen-4.17")
    names = {package.name for package in runtime.packages}
    assert {"xen-hypervisor-4.17-amd64", "xen-utils-4.17", "libxenmisc4.17", "busybox-static", "libc6"} <= names
    assert all(package.version and len(package.sha256) == 64 for package in runtime.packages)
    assert "smap=0" in runtime.xen_command_line.split()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda text: text.replace('name = "libc6"', 'name = "libc6"\nsize = 1'), "unknown key 'size'"),
    (lambda text: text.replace('sha256 = "ba4f', 'sha256 = "Xa4f'), "64 lowercase hex digits"),
    (lambda text: text.replace('kernel = "boot/', 'kernel = "../boot/'), "must be a path inside the packages"),
])
def test_a_malformed_runtime_is_refused_in_one_line(tmp_path: Path, edit, message: str) -> None:
    project = Project(tmp_path)
    path = runtime_path(project, "xen-4.17")
    path.parent.mkdir(parents=True)
    path.write_text(edit(runtime_path(Project(REPO), "xen-4.17").read_text()))
    with pytest.raises(ConfigError, match=message) as caught:
        load_runtime(project, "xen-4.17")
    assert str(path) in caught.value.message and "\n" not in caught.value.message


def test_the_channel_reads_only_the_answer_to_its_own_request() -> None:
    host, guest = socket.socketpair()
    body = base64.b64encode(b"line one\nline two\n")
    guest.sendall(b"REQ 1234 ping\nRSP 0000 0\nc3RhbGU=\nEND 0000\nnoise\nRSP 1234 3\n" + body[:8] + b"\n"
                  + body[8:] + b"\nEND 1234\n")
    answer = _read_answer(host, "1234", deadline=float("inf"))
    assert answer == Answer(lines=["line one", "line two"], rc=3)
    host.close()
    guest.close()


def test_a_refusal_is_one_line_with_the_hypervisors_words() -> None:
    answer = Answer(lines=["Uploading /payloads/p... failed", "Error 22: Invalid argument", CONSOLE_MARK,
                           "(XEN) livepatch: p: check against hypervisor build-id failed", ""], rc=1)
    verdict = _verdict("p", "upload", answer)
    assert not verdict.ok and verdict.exit_code == 1
    assert verdict.reason == ("upload p: refused by Xen (Error 22: Invalid argument): livepatch: p: check against "
                              "hypervisor build-id failed")
    assert verdict.console == ("(XEN) livepatch: p: check against hypervisor build-id failed",)


def test_the_running_images_record_is_read_only_while_its_process_runs(tmp_path: Path) -> None:
    import json
    import os

    from xsplice_build.vm.channel import MINIXEN, RunDir, RunningImage

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    written = RunningImage(kind="xen-vm", baseline="xen-4.17", pid=os.getpid(), build_id="39a6", accel="tcg",
                           boot_seconds=12.5, owner="prove-stage")
    run.pid_file.write_text(f"{os.getpid()}\n")
    run.write_running(written)
    assert run.running() == written
    # An older minixen record without a kind is minixen's; a damaged one is no running image.
    run.record.write_text(json.dumps({"baseline": "minixen", "pid": os.getpid(), "image": "work/minixen/base/image"}))
    assert run.running() == RunningImage(kind=MINIXEN, baseline="minixen", pid=os.getpid(),
                                         image="work/minixen/base/image")
    for damaged in ('{"pid": 1}', "[]", '{"baseline": "minixen", "pid": 1, "ki', '{"baseline": "m", "pid": "1"}',
                    '{"baseline": "m", "pid": 1, "accel": {}}'):
        run.record.write_text(damaged)
        assert run.running() is None, damaged
    run.record.write_text('{"baseline": "minixen", "pid": 1, "colour": "a field of a later version"}')
    assert run.running() == RunningImage(kind=MINIXEN, baseline="minixen", pid=1)
    run.record.write_text('{"baseline": "minixen", "pid": 1}')
    run.pid_file.write_text("999999999\n")  # no such process: nothing runs, whatever the record says
    assert run.running() is None
