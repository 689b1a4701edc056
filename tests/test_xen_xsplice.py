"""`xen-xsplice` against a real minixen process: the console session, proofs, refusals, the bytes that run."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Checkout, minixen_running, ok, refused, xen_xsplice
from payload_edits import CASES, Case, Good, other_build_id, resign, unsigned_payload

from xsplice_build.elf.reader import read_elf
from xsplice_build.patches import patch_names
from xsplice_build.project import Project
from xsplice_build.runtime.verify import link_payload
from xsplice_build.target.image import BaseImage
from xsplice_build.vm.channel import Connection, RunDir
from xsplice_build.vm.probes import probe_file


@pytest.fixture(scope="module")
def running(built_once: Checkout, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checkout]:
    """A copy of the built checkout with minixen booted in the background (a child of this process)."""
    yield from minixen_running(built_once, tmp_path_factory.mktemp("running") / "c")


def _pid(checkout: Checkout) -> int:
    pid = RunDir.of(Project(checkout.root)).pid()
    assert pid is not None
    return pid


def _untouched(checkout: Checkout, pid: int) -> None:
    """Still the same process, nothing loaded, answering as the unpatched image does."""
    assert _pid(checkout) == pid
    assert "regression-test" not in ok(xen_xsplice(checkout, "list"))
    assert "xen_extra : -unstable" in ok(xen_xsplice(checkout, "info")).splitlines()


def test_the_console_session_of_the_readme(built: Checkout) -> None:
    payload = "out/minixen/regression-test/regression-test.livepatch"
    assert "booted work/minixen/base/tree/xen-syms" in ok(xen_xsplice(built, "boot", "minixen"))
    try:
        run = RunDir.of(Project(built.root))
        assert stat.S_IMODE(run.socket.stat().st_mode) == 0o600
        pid = _pid(built)
        assert "xen_extra : -unstable" in ok(xen_xsplice(built, "info")).splitlines()
        assert ok(xen_xsplice(built, "upload", "regression-test", payload)).startswith(f"Uploading {payload} (")
        assert ok(xen_xsplice(built, "list")).splitlines()[2].split() == ["regression-test", "|", "CHECKED"]
        assert "State is 0x1" in ok(xen_xsplice(built, "check", "regression-test"))
        assert ok(xen_xsplice(built, "apply", "regression-test")).endswith("Commencing apply:completed!\n")
        assert "xen_extra : -Hello_World" in ok(xen_xsplice(built, "info")).splitlines()
        assert "APPLIED" in ok(xen_xsplice(built, "list"))
        assert "cannot unload a payload that is APPLIED" in refused(xen_xsplice(built, "unload", "regression-test"))
        ok(xen_xsplice(built, "revert", "regression-test"))
        assert "xen_extra : -unstable" in ok(xen_xsplice(built, "info")).splitlines()
        ok(xen_xsplice(built, "unload", "regression-test"))
        assert _pid(built) == pid
    finally:
        ok(xen_xsplice(built, "shutdown"))
    assert not run.socket.exists() and RunDir.of(Project(built.root)).pid() is None
    assert "no image is running" in refused(xen_xsplice(built, "info"))


def test_every_patch_with_a_probe_is_proven_without_restart(running: Checkout) -> None:
    project = Project(running.root)
    proven = [patch for patch in patch_names(project) if probe_file(project, patch, "minixen").is_file()]
    assert {"XSA-131", "regression-test"} <= set(proven)
    pid = _pid(running)
    for patch in proven:
        if not (running.out(patch) / f"{patch}.livepatch").is_file():
            running.doit("build-patch", patch)
        assert f"{patch}: proven on minixen (pid {pid})" in ok(xen_xsplice(running, "prove", patch))
    _untouched(running, pid)


def test_the_bytes_that_execute_are_the_payloads(running: Checkout) -> None:
    """Through /proc/PID/mem: the payload's relocated text at new_addr, a jmp to it, the old bytes back."""
    pid = _pid(running)
    path = running.out("XSA-131") / "XSA-131.livepatch"
    image = BaseImage.load(running.work("minixen", "base", "tree", "xen-syms"))
    ok(xen_xsplice(running, "upload", "XSA-131", str(path)))
    try:
        ok(xen_xsplice(running, "apply", "XSA-131"))
        with RunDir.of(Project(running.root)).connect() as connection:
            answer = connection.request("livepatch get XSA-131")
        loaded = dict(item.split("=") for item in answer.value("sections").split())
        func = dict(item.split("=") for item in answer.value("func").split()[1:])
        new, old = int(func["new"], 16), int(func["old"], 16)
        linked = link_payload(unsigned_payload(path), "XSA-131", image, base=int(loaded[".text.do_domctl"], 16))
        assert {linked.elf.sections[i].name: a for i, a in linked.addresses.items()} == \
            {name: int(address, 16) for name, address in loaded.items()}
        text = linked.section_bytes(".text.do_domctl")
        with open(f"/proc/{pid}/mem", "rb") as memory:
            memory.seek(new)
            assert memory.read(len(text)) == text
            memory.seek(old)
            head = memory.read(9)
        assert head[:4] == image.read(old, 4) == b"\xf3\x0f\x1e\xfa"  # ENDBR64 stays first
        assert head[4] == 0xE9 and old + 9 + int.from_bytes(head[5:9], "little", signed=True) == new
        ok(xen_xsplice(running, "revert", "XSA-131"))
        with open(f"/proc/{pid}/mem", "rb") as memory:
            memory.seek(old)
            assert memory.read(func_size := int(func["old_size"])) == image.read(old, func_size)
    finally:
        xen_xsplice(running, "revert", "XSA-131")
        ok(xen_xsplice(running, "unload", "XSA-131"))
    assert _pid(running) == pid


def test_a_payload_for_another_build_id_is_refused(running: Checkout, tmp_path: Path) -> None:
    pid = _pid(running)
    source = running.out("regression-test") / "regression-test.livepatch"
    payload = tmp_path / "other.livepatch"
    payload.write_bytes(resign(other_build_id(unsigned_payload(source)), running.root / "keys" / "development"))
    assert "built for build-id" in refused(xen_xsplice(running, "upload", "regression-test", str(payload)))
    _untouched(running, pid)


def test_a_flipped_byte_is_refused(running: Checkout, tmp_path: Path) -> None:
    pid = _pid(running)
    signed = bytearray((running.out("regression-test") / "regression-test.livepatch").read_bytes())
    signed[0x50] ^= 0x10
    payload = tmp_path / "flipped.livepatch"
    payload.write_bytes(bytes(signed))
    assert "signature does not verify" in refused(xen_xsplice(running, "upload", "regression-test", str(payload)))
    _untouched(running, pid)


def test_an_unsigned_payload_is_refused(running: Checkout, tmp_path: Path) -> None:
    pid = _pid(running)
    payload = tmp_path / "unsigned.livepatch"
    payload.write_bytes(unsigned_payload(running.out("regression-test") / "regression-test.livepatch"))
    assert "unsigned" in refused(xen_xsplice(running, "upload", "regression-test", str(payload)))
    _untouched(running, pid)


def test_apply_of_an_unknown_name_is_refused(running: Checkout) -> None:
    pid = _pid(running)
    assert "no payload of that name is loaded" in refused(xen_xsplice(running, "apply", "no-such-patch"))
    _untouched(running, pid)


def _good(checkout: Checkout) -> Good:
    return Good(unsigned_payload(checkout.out("XSA-131") / "XSA-131.livepatch"),
                BaseImage.load(checkout.work("minixen", "base", "tree", "xen-syms")))


def _minixen_verdict(connection: Connection, payload: bytes) -> tuple[str, str]:
    """Straight to the loader, past the tool's checks. Accepted means it also applies, serves a
    request through the patched dispatcher (XSA-131's fix refuses 64 vCPUs), reverts and unloads."""
    answer = connection.request(f"livepatch upload parity {len(payload)}", payload)
    if answer.rc:
        return "refused", answer.error
    steps = []
    for action, max_vcpus_rc in (("apply", -22), ("revert", 0)):
        steps.append(connection.request(f"livepatch {action} parity").rc)
        steps.append(int(connection.request("livepatch get parity").value("rc", "0")))
        steps.append(connection.request("domctl max_vcpus 0 64").rc - max_vcpus_rc)
    steps.append(connection.request("livepatch unload parity").rc)
    assert steps == [0] * len(steps), steps
    return "accepted", ""


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_minixen_judges_each_parity_case_as_the_table_says(running: Checkout, case: Case) -> None:
    """Every case of the parity table against the running loader; it never crashes nor changes."""
    pid = _pid(running)
    payload = case.make(_good(running))
    with RunDir.of(Project(running.root)).connect() as connection:
        outcome, error = _minixen_verdict(connection, payload)
        assert connection.request("livepatch list").values("payload") == []
    assert outcome == case.minixen.outcome, error
    assert case.minixen.says in error
    _untouched(running, pid)


def test_a_warn_in_patched_code_reports_its_line(running: Checkout, tmp_path: Path) -> None:
    """The bug-frame handler searches the payload's .bug_frames (Xen's virtual regions)."""
    original = running.root / "baseline" / "sources" / "minixen" / "common" / "version.c"
    for side in ("a", "b"):
        (tmp_path / side / "common").mkdir(parents=True)
    (tmp_path / "a" / "common" / "version.c").write_text(original.read_text())
    edited = original.read_text().replace("const char *xen_changeset(void)\n{\n",
                                          "const char *xen_changeset(void)\n{\n    WARN();\n")
    (tmp_path / "b" / "common" / "version.c").write_text(edited)
    line = edited.splitlines().index("    WARN();") + 1
    diff = subprocess.run(["git", "diff", "--no-index", "--no-prefix", "a/common/version.c", "b/common/version.c"],
                          cwd=tmp_path, capture_output=True, text=True, check=False).stdout
    patch = running.root / "patches" / "warn-test" / "minixen.patch"
    patch.parent.mkdir()
    patch.write_text(diff)
    running.doit("build-patch", "warn-test")
    pid = _pid(running)
    ok(xen_xsplice(running, "upload", "warn-test", str(running.out("warn-test") / "warn-test.livepatch")))
    ok(xen_xsplice(running, "apply", "warn-test"))
    try:
        assert "xen_changeset : minixen" in ok(xen_xsplice(running, "info"))
        log = RunDir.of(Project(running.root)).log.read_text()
        assert f"(XEN) Xen WARN at common/version.c:{line}" in log.splitlines()
    finally:
        ok(xen_xsplice(running, "revert", "warn-test"))
        ok(xen_xsplice(running, "unload", "warn-test"))
        patch.unlink()
        patch.parent.rmdir()
    assert _pid(running) == pid


def test_a_failing_probe_is_refused_and_the_image_left_as_it_was(running: Checkout) -> None:
    pid = _pid(running)
    probe = running.root / "patches" / "regression-test" / "minixen.probe.toml"
    good = probe.read_text()
    probe.write_text(good.replace('applied = ["xen_extra : -Hello_World"', 'applied = ["xen_extra : -Goodbye"'))
    try:
        line = refused(xen_xsplice(running, "prove", "regression-test"))
    finally:
        probe.write_text(good)
    assert "probe 'info' applied: expected 'xen_extra : -Goodbye'" in line
    _untouched(running, pid)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def test_the_image_listens_only_on_a_unix_socket_its_owner_may_use(running: Checkout) -> None:
    pid = _pid(running)
    inodes = _socket_inodes(pid)
    assert inodes, "the running image holds no socket"
    for table in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if path.exists():
            listed = {line.split()[9] for line in path.read_text().splitlines()[1:] if len(line.split()) > 9}
            assert not inodes & listed, f"the image has an inet socket in {table}"
    unix = {line.split()[6] for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]
            if len(line.split()) > 6}
    assert inodes <= unix
    socket_path = RunDir.of(Project(running.root)).socket
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600 and socket_path.stat().st_uid == os.getuid()


def _memory_view(pid: int, address: int, size: int) -> tuple[str, bytes]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    with open(f"/proc/{pid}/mem", "rb") as memory:
        memory.seek(address)
        return maps, memory.read(size)


@pytest.mark.parametrize("case", [case for case in CASES if case.name in ("unsupported-relocation", "wrong-old-size",
                                                                           "other-build-id", "writable-text")],
                         ids=lambda case: case.name)
def test_a_payload_the_loader_refuses_never_touches_the_images_memory(running: Checkout, case: Case) -> None:
    """Straight to the loader, past the tool's checks: refused, and the image's mappings and the text of
    the function the payload would replace are byte for byte as before."""
    pid = _pid(running)
    old = BaseImage.load(running.work("minixen", "base", "tree", "xen-syms")).lookup("do_domctl", "test")
    before = _memory_view(pid, old.value, old.size)
    payload = case.make(_good(running))
    with RunDir.of(Project(running.root)).connect() as connection:
        answer = connection.request(f"livepatch upload XSA-131 {len(payload)}", payload)
    assert answer.rc < 0 and case.minixen.says in answer.error
    maps, text = _memory_view(pid, old.value, old.size)
    assert text == before[1]
    assert _image_maps(maps) == _image_maps(before[0])
    _untouched(running, pid)


def _image_maps(maps: str) -> list[str]:
    """The mappings of the low 2 GiB: the image, its data, and the area payloads are placed in (the
    receive buffer of a request is mapped anywhere the kernel likes, far above)."""
    return [line for line in maps.splitlines() if int(line.split("-", 1)[0], 16) < 0x80000000]


LFENCE, MFENCE = bytes.fromhex("0faee8"), bytes.fromhex("0faef0")


def test_alternatives_of_two_objects_load_and_are_applied_by_the_loader(running: Checkout) -> None:
    """patches/alternatives: two objects' alternatives, one carried .altinstr_replacement. The loader
    checks every replacement against it, then applies them before securing the text: the lfence of
    serialise_barrier() becomes its mfence, block_speculation()'s lfence becomes NOPs."""
    running.doit("build-patch", "alternatives")
    path = running.out("alternatives") / "alternatives.livepatch"
    elf = read_elf(unsigned_payload(path), "alternatives")
    [replacement] = elf.sections_named(".altinstr_replacement")
    assert replacement.data == MFENCE  # domain.o's part; event.o's zero-length part ends it
    pid = _pid(running)
    ok(xen_xsplice(running, "upload", "alternatives", str(path)))
    try:
        with RunDir.of(Project(running.root)).connect() as connection:
            functions = {line.split()[0]: line for line in connection.request("livepatch get alternatives")
                         .values("func")}
        code = {}
        for name, line in functions.items():
            fields = dict(word.split("=", 1) for word in line.split()[1:])
            code[name] = _memory_view(pid, int(fields["new"], 16), int(fields["new_size"]))[1]
        assert set(code) == {"get_domain_by_id", "evtchn_send"}
        assert MFENCE in code["get_domain_by_id"] and LFENCE not in code["get_domain_by_id"]
        assert LFENCE not in code["evtchn_send"]
        ok(xen_xsplice(running, "apply", "alternatives"))
        with RunDir.of(Project(running.root)).connect() as connection:
            assert connection.request("domctl getinfo 0").rc == 0  # through the patched get_domain_by_id
            assert connection.request("evtchn 0 4095").rc < 0  # the patched evtchn_send refuses a bad port
        ok(xen_xsplice(running, "revert", "alternatives"))
    finally:
        xen_xsplice(running, "unload", "alternatives")
    _untouched(running, pid)
