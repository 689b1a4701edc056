"""The audit's ELF comparison: identical files, real differences by section and symbol, leaked build paths."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import Checkout

from xsplice_build.elf.compare import PATH_LEAK, REAL_DIFFERENCE, compare_elf

SOURCE = "int answer(int x)\n{\n    return x * 42;\n}\n"


def _compile(directory: Path, flags: list[str]) -> bytes:
    directory.mkdir(parents=True)
    (directory / "answer.c").write_text(SOURCE)
    subprocess.run(["gcc", "-O2", "-g", "-c", "answer.c", "-o", "answer.o", *flags], cwd=directory, check=True)
    return (directory / "answer.o").read_bytes()


def test_identical_payloads_compare_equal(built_once: Checkout) -> None:
    data = (built_once.work("minixen", "patches", "XSA-131") / "XSA-131.livepatch.unsigned").read_bytes()
    assert compare_elf(data, data).identical


def test_two_baselines_payloads_differ_in_the_build_id_sections(built_once: Checkout) -> None:
    first = (built_once.work("minixen", "patches", "XSA-131") / "XSA-131.livepatch.unsigned").read_bytes()
    second = (built_once.work("minixen", "patches", "regression-test") /
              "regression-test.livepatch.unsigned").read_bytes()
    comparison = compare_elf(first, second, "xsa", "hello")
    assert comparison.cause == REAL_DIFFERENCE
    text = "\n".join(comparison.differences)
    assert "section .text.do_domctl: only in xsa" in text
    assert "section .text.xen_extra_version: only in hello" in text
    assert "symbol do_domctl: only in xsa" in text
    assert "section .note.gnu.build-id: 20 byte(s) differ" in text


def test_a_changed_instruction_is_named_with_the_function_holding_it(tmp_path: Path) -> None:
    before = _compile(tmp_path / "a", ["-ffile-prefix-map=" + str(tmp_path / "a") + "=."])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "answer.c").write_text(SOURCE.replace("42", "43"))
    subprocess.run(["gcc", "-O2", "-g", "-c", "answer.c", "-o", "answer.o", f"-ffile-prefix-map={tmp_path / 'b'}=."],
                   cwd=tmp_path / "b", check=True)
    comparison = compare_elf(before, (tmp_path / "b" / "answer.o").read_bytes())
    assert comparison.cause == REAL_DIFFERENCE
    assert any(line.startswith("section .text: ") and "in answer" in line for line in comparison.differences)


def test_a_build_directory_in_the_bytes_is_called_a_path_leak(tmp_path: Path) -> None:
    # Without -ffile-prefix-map gcc records the build directory in the debug info.
    first = _compile(tmp_path / "one", [])
    second = _compile(tmp_path / "another", [])
    comparison = compare_elf(first, second, "one", "another")
    assert comparison.cause == PATH_LEAK
    assert any(str(tmp_path / "another") in path for path in comparison.leaked_paths)
    # With the map the wrapper adds, the same two builds are identical.
    mapped = [_compile(tmp_path / name, [f"-ffile-prefix-map={tmp_path / name}=."]) for name in ("x", "y")]
    assert compare_elf(*mapped).identical


def test_a_file_that_is_not_elf_is_named_not_comparable() -> None:
    comparison = compare_elf(b"\x7fELF" + b"\0" * 10, b"not elf at all", "left", "right")
    assert not comparison.identical
    assert comparison.differences[0].startswith("not comparable as ELF: left: truncated ELF header")
