"""Hostile names, paths and objects: each case of the issue refused in one line, by the real tools.

Names and paths are data: a payload name never becomes a request of its own, a special file is
never read as an input nor replaced as an output. The user's mistakes and the machine's limits
(a full disk, a read-only directory, a closed stdout, Ctrl-C) end in one line, never a
traceback. `xsplice-build diff` refuses, naming the structure, the objects it would misread.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, REPO, Checkout, copy_checkout, minixen_running, one_line_failure, xen_xsplice

from xsplice_build.elf.reader import read_elf
from xsplice_build.elf.structs import SHDR
from xsplice_build.errors import ConfigError
from xsplice_build.files import ELF_LIMIT
from xsplice_build.project import Project
from xsplice_build.vm.channel import PAYLOAD_NAME_SIZE, HypervisorError, RunDir, check_payload_name

FAULTS = REPO / "tests" / "fault_injection"
SOURCE = """
static int calls;
int victim(int x) { return x * 3 + 1 + ++calls; }
int other(int x) { return x - 2; }
"""
PATCHED = SOURCE.replace("x * 3 + 1", "x * 5 + 7")
# Offsets of Elf64_Shdr fields within one header, and of Elf64_Sym fields within one symbol.
SH_TYPE, SH_FLAGS, SH_OFFSET, SH_INFO = 4, 8, 24, 44
ST_VALUE, ST_SIZE = 8, 16


def run(*argv: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 120, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, check=False,
                          timeout=timeout, env={**os.environ, **(env or {})}, **kwargs)  # type: ignore[call-overload]


def refusal(result: subprocess.CompletedProcess[str], program: str = "xsplice-build") -> str:
    """The one line a refused console script printed on stderr (and nothing resembling a traceback)."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{program}: ")
    return lines[0]


# --- objects made by gcc, then forged ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """orig.o and patched.o (victim changed), built as the pipeline builds objects, and a linked ET_EXEC."""
    directory = tmp_path_factory.mktemp("objects")
    for name, text in (("orig", SOURCE), ("patched", PATCHED)):
        (directory / f"{name}.c").write_text(text)
        subprocess.run(["gcc", "-O2", "-fpic", "-ffunction-sections", "-fdata-sections", "-c", f"{name}.c", "-o",
                        f"{name}.o"], cwd=directory, check=True)
    subprocess.run(["gcc", "-no-pie", "-nostdlib", "-Wl,-evictim", "-o", "patched.exe", "patched.o"], cwd=directory,
                   check=True)
    return directory


def _section_field(data: bytes, index: int, field: int, fmt: str, value: int) -> bytes:
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    out = bytearray(data)
    struct.pack_into(fmt, out, shoff + index * SHDR.size + field, value)
    return bytes(out)


def _section(data: bytes, name: str) -> int:
    return next(s.index for s in read_elf(data, "x.o").sections if s.name == name)


def _symbol_field(data: bytes, name: str, field: int, value: int) -> bytes:
    elf = read_elf(data, "x.o")
    symtab = elf.sections[elf.symtab_index or 0]
    symbol = next(s for s in elf.symbols if s.name == name)
    out = bytearray(data)
    struct.pack_into("<Q", out, symtab.offset + symbol.index * 24 + field, value)
    return bytes(out)


def _forged(objects: Path, name: str, data: bytes) -> Path:
    path = objects / f"{name}.o"
    path.write_bytes(data)
    return path


def _diff_refusal(objects: Path, original: Path, patched: Path, *extra: str) -> str:
    return refusal(run(BIN / "xsplice-build", "diff", original, patched, *extra))


def test_the_unforged_pair_diffs(objects: Path) -> None:
    result = run(BIN / "xsplice-build", "diff", objects / "orig.o", objects / "patched.o")
    assert result.returncode == 0, result.stderr
    assert "changed victim" in result.stdout


@pytest.mark.parametrize("target", ["itself", ".symtab"])
def test_a_relocation_section_applying_to_itself_or_the_symbol_table_is_refused(objects: Path, target: str) -> None:
    data = (objects / "patched.o").read_bytes()
    rela = _section(data, ".rela.text.victim")
    forged = _section_field(data, rela, SH_INFO, "<I", rela if target == "itself" else _section(data, ".symtab"))
    line = _diff_refusal(objects, objects / "orig.o", _forged(objects, f"rela-{target}", forged))
    assert ".rela.text.victim" in line and "relocations cannot apply" in line
    assert ("names itself" if target == "itself" else ".symtab") in line


@pytest.mark.parametrize(("field", "value"), [(ST_VALUE, 0x1000), (ST_SIZE, 1 << 63)])
def test_a_function_symbol_outside_its_section_is_refused(objects: Path, field: int, value: int) -> None:
    forged = _symbol_field((objects / "patched.o").read_bytes(), "victim", field, value)
    line = _diff_refusal(objects, objects / "orig.o", _forged(objects, f"symbol-{field}", forged))
    assert "'victim'" in line and "lies outside section" in line and ".text.victim" in line


def test_a_section_over_the_elf_header_is_refused(objects: Path) -> None:
    data = (objects / "patched.o").read_bytes()
    forged = _section_field(data, _section(data, ".text.victim"), SH_OFFSET, "<Q", 0)
    line = _diff_refusal(objects, objects / "orig.o", _forged(objects, "over-header", forged))
    assert "the ELF header" in line and ".text.victim" in line


def test_a_linked_executable_is_refused(objects: Path) -> None:
    line = _diff_refusal(objects, objects / "orig.o", objects / "patched.exe")
    assert "patched.exe" in line and "ET_EXEC" in line and "not ET_REL" in line


@pytest.mark.parametrize(("field", "fmt", "value", "words"), [
    (SH_FLAGS, "<Q", 0x6 | 0x800, "SHF_COMPRESSED"),  # ALLOC | EXECINSTR | COMPRESSED
    (SH_TYPE, "<I", 0x6FFF0000, "type 0x6fff0000"),
], ids=["compressed", "unknown-type"])
def test_compressed_or_unknown_sections_are_not_taken_for_code(objects: Path, field: int, fmt: str, value: int,
                                                               words: str) -> None:
    # other() has no relocations: nothing else about its section is wrong.
    data = (objects / "patched.o").read_bytes()
    forged = _section_field(data, _section(data, ".text.other"), field, fmt, value)
    line = _diff_refusal(objects, objects / "orig.o", _forged(objects, f"section-{value}", forged))
    assert words in line and ".text.other" in line


def test_a_bad_original_is_named_as_the_original(objects: Path) -> None:
    data = (objects / "orig.o").read_bytes()
    bad = _forged(objects, "bad-orig", _section_field(data, _section(data, ".text.victim"), SH_OFFSET, "<Q", 0))
    line = _diff_refusal(objects, bad, objects / "patched.o")
    assert line.startswith(f"xsplice-build: {bad}: ") and "patched.o" not in line


def test_control_characters_in_names_never_reach_the_terminal(objects: Path) -> None:
    # The same function renamed in both objects (its symbol and its section) to hold ESC, BEL and a newline.
    renamed = {}
    for name in ("orig", "patched"):
        data = (objects / f"{name}.o").read_bytes()
        assert data.count(b"victim\0") >= 2
        renamed[name] = _forged(objects, f"{name}-renamed", data.replace(b"victim\0", b"v\x1b\x07\nim\0"))
    for options in ((), ("--explain",), ("--json",)):
        result = run(BIN / "xsplice-build", "diff", renamed["orig"], renamed["patched"], *options)
        assert result.returncode == 0, result.stderr
        output = result.stdout + result.stderr
        assert "\x1b" not in output and "\x07" not in output, options
        assert "\\x1b" in output or "\\u001b" in output, options
        assert not any(line.endswith("v\\x1b\\x07") or line.startswith("im") for line in output.splitlines())


# --- special files: never read as inputs, never replaced as outputs -------------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom", "fifo", "directory"])
def test_a_special_file_as_object_payload_image_or_certificate_is_refused(built_once: Checkout, tmp_path: Path,
                                                                          special: str) -> None:
    if special == "fifo":
        os.mkfifo(tmp_path / "fifo")
    path = {"fifo": str(tmp_path / "fifo"), "directory": str(tmp_path)}.get(special, special)
    payload = built_once.out("XSA-131") / "XSA-131.livepatch"
    image = built_once.work("minixen", "base", "tree", "xen-syms")
    orig = built_once.work("minixen", "orig", "tree", "common", "domctl.o")
    cases = {
        "object": ["diff", path, orig],
        "payload": ["verify", path, "--image", image],
        "image": ["verify", payload, "--image", path],
        "certificate": ["verify", payload, "--image", image, "--cert", path],
    }
    for what, argv in cases.items():
        line = refusal(run(BIN / "xsplice-build", *argv, cwd=built_once.root, timeout=30))
        assert f"{path}: " in line and "not a regular file" in line, (what, line)


def test_an_input_larger_than_its_limit_is_refused_without_reading_it(built_once: Checkout, tmp_path: Path) -> None:
    huge = tmp_path / "huge.o"
    with huge.open("wb") as stream:  # sparse: no disk spent
        stream.truncate(ELF_LIMIT + 1)
    orig = built_once.work("minixen", "orig", "tree", "common", "domctl.o")
    line = refusal(run(BIN / "xsplice-build", "diff", orig, huge, timeout=30))
    assert f"{huge}: {ELF_LIMIT + 1} bytes, more than the {ELF_LIMIT}" in line


@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "directory"])
def test_a_special_file_as_signing_key_manifest_or_toml_is_refused(built: Checkout, tmp_path: Path,
                                                                  special: str) -> None:
    if special == "fifo":
        os.mkfifo(tmp_path / "fifo")
    path = {"fifo": str(tmp_path / "fifo"), "directory": str(tmp_path)}.get(special, special)
    built.doit("forget", "sign:minixen/XSA-131")
    keys = built.root / "keys" / "development"
    signing = built.doit("build-patch", "XSA-131", check=False, timeout=120,
                         env={"XSPLICE_SIGNING_KEY": path, "XSPLICE_SIGNING_CERT": str(keys / "signing_cert.pem")})
    assert f"{path}: " in one_line_failure(signing) and "the signing key must be a file" in signing.stdout
    if special != "directory":  # a directory is a release's, whose manifest.json it holds
        audit = built.doit("audit", "--manifest", path, check=False, timeout=60)
        assert f"{path}: " in one_line_failure(audit) and "not a regular file" in audit.stderr
    lock = built.root / "toolchain.lock"
    lock.unlink()
    lock.symlink_to(path)
    loading = built.doit("build-patch", "XSA-131", check=False, timeout=60)
    assert f"{lock}: " in one_line_failure(loading) and "not a regular file" in loading.stdout + loading.stderr


@pytest.mark.parametrize("target", ["/dev/null", "/dev/full", "directory", "symlink"])
def test_diff_output_replaces_only_a_regular_file(objects: Path, tmp_path: Path, target: str) -> None:
    link = tmp_path / "link.o"
    link.symlink_to(tmp_path / "elsewhere.o")
    path = {"directory": str(tmp_path), "symlink": str(link)}.get(target, target)
    before = os.lstat(path)
    line = refusal(run(BIN / "xsplice-build", "diff", objects / "orig.o", objects / "patched.o", "-o", path))
    assert f"{path}: is a " in line and "refusing to replace it" in line
    after = os.lstat(path)
    assert (stat.S_IFMT(after.st_mode), after.st_ino) == (stat.S_IFMT(before.st_mode), before.st_ino)
    assert not (tmp_path / "elsewhere.o").exists()


def test_a_directory_where_the_payload_goes_is_refused(built: Checkout) -> None:
    payload = built.out("XSA-131") / "XSA-131.livepatch"
    payload.unlink()
    payload.mkdir()
    built.doit("forget", "sign:minixen/XSA-131")
    line = one_line_failure(built.doit("build-patch", "XSA-131", check=False))
    assert f"{payload}: is a directory; refusing to replace it" in line
    assert payload.is_dir()


def test_a_file_where_the_release_goes_is_refused(built: Checkout) -> None:
    (built.root / "out" / "release").write_text("not a release\n")
    result = built.doit("nightly", "--baseline", "minixen", check=False, timeout=600)
    assert "out/release: is not a directory this tool made" in one_line_failure(result)
    assert (built.root / "out" / "release").read_text() == "not a release\n"


# --- tracebacks that are one-line refusals ---------------------------------------------------------------------


def test_a_directory_as_signing_key_is_one_line(built: Checkout, tmp_path: Path) -> None:
    built.doit("forget", "sign:minixen/XSA-131")
    keys = built.root / "keys" / "development"
    env = {"XSPLICE_SIGNING_KEY": str(tmp_path), "XSPLICE_SIGNING_CERT": str(keys / "signing_cert.pem")}
    result = built.doit("build-patch", "XSA-131", check=False, env=env)
    assert f"{tmp_path}: a directory, not a regular file; the signing key must be a file" in one_line_failure(result)


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points a test made (tmpfs, read-only binds); unmounted whatever happens."""
    made: list[Path] = []
    yield made
    for point in reversed(made):
        subprocess.run(["umount", str(point)], check=False)


def _mount(mounts: list[Path], *argv: str) -> None:
    result = subprocess.run(["mount", *argv], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here ({result.stderr.strip()}): needs root or a user namespace")
    mounts.append(Path(argv[-1]))


def _read_only(mounts: list[Path], path: Path) -> None:
    _mount(mounts, "--bind", str(path), str(path))
    _mount(mounts, "-o", "remount,bind,ro", str(path))


def test_a_read_only_out_is_one_line(built: Checkout, mounts: list[Path]) -> None:
    _read_only(mounts, built.root / "out")
    built.doit("forget", "sign:minixen/XSA-131")
    line = one_line_failure(built.doit("build-patch", "XSA-131", check=False))
    assert "XSA-131.livepatch: cannot write: Read-only file system" in line


def test_a_read_only_dependency_database_is_one_line(built: Checkout, mounts: list[Path]) -> None:
    # A stage must run for the database to be written: a no-op run leaves it alone (nothing to record).
    built.doit("forget", "sign:minixen/XSA-131")
    _read_only(mounts, built.work(".doit.db"))
    line = one_line_failure(built.doit("build-patch", "XSA-131", check=False))
    assert ".doit.db: doit's dependency database cannot be written (attempt to write a readonly database)" in line


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(objects: Path, tmp_path: Path,
                                                                 mounts: list[Path]) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount(mounts, "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk))
    with (disk / "filler").open("wb") as stream, pytest.raises(OSError):
        while True:
            stream.write(b"\0" * 65536)
            stream.flush()
    line = refusal(run(BIN / "xsplice-build", "diff", objects / "orig.o", objects / "patched.o", "-o",
                       disk / "extract.o"))
    assert f"{disk / 'extract.o'}: cannot write: No space left on device" in line
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_a_full_disk_under_a_build_is_one_line(built_once: Checkout, tmp_path: Path, mounts: list[Path]) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount(mounts, "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk))
    checkout = copy_checkout(disk / "c", built_once.root, with_state=True)
    checkout.doit("forget", "diff:minixen/XSA-131", "payload:minixen/XSA-131", "sign:minixen/XSA-131")
    # Unbuffered: a buffered writer keeps what a partial write left, and its close fails on it again.
    with (disk / "filler").open("wb", buffering=0) as stream, pytest.raises(OSError):
        while True:
            stream.write(b"\0" * 65536)
    result = checkout.doit("build-patch", "XSA-131", check=False)
    assert str(disk / "c") in one_line_failure(result)  # whichever write met the full disk first, named


def test_a_build_command_that_does_not_exist_is_one_line(built: Checkout) -> None:
    definition = built.root / "baseline" / "minixen.toml"
    definition.write_text(definition.read_text().replace('command = ["make"', 'command = ["no-such-make"'))
    line = one_line_failure(built.doit("build-patch", "XSA-131", check=False))
    assert "[build] command 'no-such-make' cannot run: No such file or directory" in line


@pytest.mark.parametrize("word", ["{nosuch}", "{", "{0}", "}", "{jobs:{x}}"])
def test_a_bad_placeholder_in_a_build_command_is_one_line(checkout: Checkout, word: str) -> None:
    definition = checkout.root / "baseline" / "minixen.toml"
    definition.write_text(definition.read_text().replace('command = ["make"', f'command = ["make", "{word}"'))
    line = one_line_failure(checkout.doit("build-patch", "XSA-131", check=False))
    assert f"[build] command word 1 {word!r}" in line


def test_toml_and_json_nested_100000_deep_are_one_line(checkout: Checkout, tmp_path: Path) -> None:
    (checkout.root / "baseline" / "deep.toml").write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    line = one_line_failure(checkout.doit("build-patch", "--baseline", "deep", "XSA-131", check=False))
    assert "deep.toml: not valid TOML: arrays or tables nested too deeply" in line
    manifest = tmp_path / "manifest.json"
    manifest.write_text("[" * 100_000 + "]" * 100_000)
    line = one_line_failure(checkout.doit("audit", "--manifest", str(manifest), check=False))
    assert f"{manifest}: unreadable release manifest (nested too deeply)" in line


def test_a_damaged_dependency_database_says_what_to_delete(built: Checkout) -> None:
    built.work(".doit.db").write_bytes(b"not a database" * 100)
    line = one_line_failure(built.doit("build-patch", "XSA-131", check=False))
    assert f"doit's dependency database is damaged; delete it (rm {built.work('.doit.db')})" in line
    built.work(".doit.db").unlink()
    built.doit("build-patch", "XSA-131")


def test_an_empty_patch_name_is_one_line(checkout: Checkout) -> None:
    assert "patch name '' is not allowed" in one_line_failure(checkout.doit("build-patch", "", check=False))


def test_a_reader_that_goes_away_is_one_line(built_once: Checkout) -> None:
    orig = built_once.work("minixen", "orig", "tree", "common", "domctl.o")
    patched = built_once.work("minixen", "patches", "XSA-131", "objects", "common", "domctl.o.XSPLICE")
    # The reader is gone before anything is written (as `| head -1` is once it has its line): every write fails.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([str(BIN / "xsplice-build"), "diff", str(orig), str(patched), "--json"],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, check=False, timeout=60)
    finally:
        os.close(write_end)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["xsplice-build: standard output was closed by its reader (broken pipe); "
                                          "the output is incomplete"]


def test_a_closed_stdout_is_one_line_and_nothing_runs(objects: Path, tmp_path: Path) -> None:
    output = tmp_path / "extract.o"
    result = subprocess.run(f"exec >&- ; exec {BIN / 'xsplice-build'} diff {objects / 'orig.o'} "
                            f"{objects / 'patched.o'} -o {output}", shell=True, capture_output=False,
                            stderr=subprocess.PIPE, text=True, check=False, timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["xsplice-build: standard output closed; redirect to a file or /dev/null "
                                          "instead of closing"]
    assert not output.exists()


def test_a_closed_stdout_stops_a_build_before_it_starts(checkout: Checkout) -> None:
    result = subprocess.run(f"exec >&- ; exec {BIN / 'doit'} build-patch XSA-131", shell=True, cwd=checkout.root,
                            stderr=subprocess.PIPE, text=True, check=False, timeout=60,
                            env={**os.environ, "XSPLICE_ROOT": str(checkout.root)})
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["xsplice: error: standard output closed; redirect to a file or /dev/null "
                                          "instead of closing"]
    assert not (checkout.root / "work").exists()


def _sigint_at_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupted(argv: list[str], cwd: Path, pause: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run argv frozen at the os.replace whose destination ends with `pause`, then press Ctrl-C (SIGINT)."""
    marker = tmp_path / "paused"
    env = {**os.environ, "PYTHONPATH": str(FAULTS), "XSPLICE_TEST_PAUSE": f"replace:{pause}",
           "XSPLICE_TEST_PAUSED": str(marker), "XSPLICE_ROOT": str(cwd)}
    # A terminal's Ctrl-C finds SIGINT at its default; a run started in the background by a non-interactive shell
    # (`pytest &` in a script) inherits it ignored, and Python then never raises KeyboardInterrupt: restore it.
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_sigint_at_default)
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), process.communicate()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def test_ctrl_c_is_one_line_exit_130_and_nothing_half_written(objects: Path, tmp_path: Path) -> None:
    output = tmp_path / "out" / "extract.o"
    result = _interrupted([str(BIN / "xsplice-build"), "diff", str(objects / "orig.o"), str(objects / "patched.o"),
                           "-o", str(output)], tmp_path, "extract.o", tmp_path)
    assert result.returncode == 130
    assert result.stderr.splitlines() == ["xsplice-build: interrupted; nothing was half-written (outputs are "
                                          "replaced whole or not at all)"]
    assert list(output.parent.iterdir()) == []


def test_ctrl_c_during_a_build_is_one_line_and_the_next_run_gives_the_same_payload(built: Checkout,
                                                                                   tmp_path: Path) -> None:
    payload = built.out("XSA-131") / "XSA-131.livepatch"
    expected = payload.read_bytes()
    built.doit("forget", "diff:minixen/XSA-131", "payload:minixen/XSA-131", "sign:minixen/XSA-131")
    payload.unlink()
    built.work("minixen", "patches", "XSA-131", "payload.json").unlink()  # so that it is written again
    result = _interrupted([str(BIN / "doit"), "build-patch", "XSA-131"], built.root, "payload.json", tmp_path)
    assert result.returncode == 130, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.splitlines()[-1].startswith("xsplice: interrupted;")
    assert not list(built.work("minixen", "patches", "XSA-131").glob(".*.tmp"))
    built.doit("build-patch", "XSA-131")
    assert payload.read_bytes() == expected


# --- payload names and the request protocol --------------------------------------------------------------------


def test_payload_names_follow_xens_rules() -> None:
    longest = "a" * (PAYLOAD_NAME_SIZE - 1)
    assert check_payload_name(longest) == longest
    for name in ("XSA-131", "regression-test", "a_b"):
        assert check_payload_name(name) == name
    for name in ("", "a" * PAYLOAD_NAME_SIZE, "a b", "x\nquit", "a.b", "a/b", "é", "a\0b"):
        with pytest.raises(ConfigError, match=r"payload name .* is not allowed"):
            check_payload_name(name)


@pytest.fixture(scope="module")
def running(built_once: Checkout, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checkout]:
    """A copy of the built checkout with minixen booted in the background."""
    yield from minixen_running(built_once, tmp_path_factory.mktemp("running") / "c")


def _alive_and_empty(checkout: Checkout, pid: int) -> None:
    """The same image still runs, answers, and holds no payload."""
    assert RunDir.of(Project(checkout.root)).pid() == pid
    assert "xen_extra : -unstable" in xen_xsplice(checkout, "info").stdout
    listing = xen_xsplice(checkout, "list")
    assert listing.returncode == 0 and listing.stdout.splitlines()[2:] == []


@pytest.mark.parametrize("name", ["x\nquit", "a b", "a" * PAYLOAD_NAME_SIZE, "x.y", "x\x1b[2J"])
def test_a_name_that_is_not_xens_is_refused_before_it_reaches_the_image(running: Checkout, name: str) -> None:
    pid = RunDir.of(Project(running.root)).pid()
    assert pid is not None
    payload = running.out("XSA-131") / "XSA-131.livepatch"
    for argv in (("check", name), ("apply", name), ("revert", name), ("unload", name), ("upload", name, str(payload))):
        line = refusal(xen_xsplice(running, *argv), "xen-xsplice")
        assert "payload name" in line and "is not allowed" in line and "\x1b" not in line
    _alive_and_empty(running, pid)


def _exchange(running: Checkout, data: bytes) -> bytes:
    """Send raw bytes on a connection of the image's own and read until it closes or goes quiet."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(RunDir.of(Project(running.root)).socket))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_a_name_with_spaces_cannot_make_payload_bytes_requests(running: Checkout) -> None:
    pid = RunDir.of(Project(running.root)).pid()
    body = b"quit\nlivepatch upload evil 4\nABCD"  # what a payload's bytes could spell
    answer = _exchange(running, b"livepatch upload a b %d\n" % len(body) + body + b"livepatch list\ninfo\n")
    lines = answer.decode().splitlines()
    assert lines[:2] == ["error : bad payload name 'a b' (1-127 of A-Z a-z 0-9 - _ +)", "= -22"]
    assert lines[2] == "= 0"  # the list: empty; the body was never read as requests
    assert "xen_extra : -unstable" in lines
    assert pid is not None
    _alive_and_empty(running, pid)


@pytest.mark.parametrize(("frame", "reason"), [
    (b"livepatch get a\0quit\n", "a request holds a NUL byte"),
    (b"a" * 5000 + b"quit\n", "a request is longer than 4095 bytes"),
    (b"livepatch upload a b\nquit\n", "livepatch upload: the last word must be the payload's size in bytes"),
    (b"livepatch upload a 12x\nquit\n", "livepatch upload: the last word must be the payload's size in bytes"),
], ids=["nul", "overlong", "no-size", "bad-size"])
def test_a_request_that_breaks_the_framing_ends_the_connection(running: Checkout, frame: bytes, reason: str) -> None:
    pid = RunDir.of(Project(running.root)).pid()
    answer = _exchange(running, frame + b"info\n")
    assert answer.decode().splitlines() == [f"error : {reason}; closing the connection", "= -22"]
    assert pid is not None
    _alive_and_empty(running, pid)


def test_the_client_never_sends_a_line_the_framing_would_split(running: Checkout) -> None:
    with RunDir.of(Project(running.root)).connect() as connection:
        for line in ("livepatch get x\nquit", "info\0", "a" * 4096, ""):
            with pytest.raises(HypervisorError, match="not sent"):
                connection.request(line)
        assert connection.request("info").rc == 0


# --- what the loader target found ----------------------------------------------------------------------------


def test_verify_refuses_a_special_section_of_type_null(built_once: Checkout) -> None:
    """The loader fuzz target's find: .livepatch.funcs as SHT_NULL (104 bytes, no contents) crashed verify."""
    from payload_edits import unsigned_payload

    from xsplice_build.errors import PayloadRejected
    from xsplice_build.runtime.verify import link_payload, payload_area
    from xsplice_build.target.image import BaseImage

    data = unsigned_payload(built_once.out("regression-test") / "regression-test.livepatch")
    # As found: its relocation section's type mutated too (to one nothing reads), so only verify's own rule is left.
    forged = _section_field(data, _section(data, ".rela.livepatch.funcs"), SH_TYPE, "<I", 0x4000)
    forged = _section_field(forged, _section(data, ".livepatch.funcs"), SH_TYPE, "<I", 0)
    image = BaseImage.load(built_once.work("minixen", "base", "tree", "xen-syms"))
    with pytest.raises(PayloadRejected, match=r"\.livepatch\.funcs: must be allocated, with contents"):
        link_payload(forged, "null.livepatch", image, base=payload_area(image))
