"""elf.reader on hostile files: every forged field of a real gcc object refused in one line, in bounded
time and memory (the cases of the hostile-input issue, and what the fuzzer found)."""

from __future__ import annotations

import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from xsplice_build.diff.engine import diff_elves
from xsplice_build.diff.profile import XEN_X86_64
from xsplice_build.elf.constants import SHN_XINDEX, SHT_NOBITS, SHT_NULL, SHT_REL, SHT_SYMTAB
from xsplice_build.elf.model import ElfFile
from xsplice_build.elf.reader import read_elf
from xsplice_build.elf.structs import EHDR, RELA, SHDR, SYM
from xsplice_build.errors import ElfError

SOURCE = """
static int counter_of_calls;
static const char *names[] = { "a", "b" };
int f(int x) { return x + ++counter_of_calls; }
const char *g(int i) { return names[i & 1]; }
"""
# Offsets of Elf64_Shdr fields within one header.
SH_NAME, SH_TYPE, SH_OFFSET, SH_SIZE, SH_LINK, SH_INFO, SH_ALIGN = 0, 4, 24, 32, 40, 44, 48
U64_MAX = (1 << 64) - 1


@pytest.fixture(scope="module")
def real_object(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real gcc object built as the pipeline builds minixen's (split sections, -fpic)."""
    directory = tmp_path_factory.mktemp("object")
    (directory / "f.c").write_text(SOURCE)
    subprocess.run(["gcc", "-O2", "-fpic", "-ffunction-sections", "-fdata-sections", "-c", "f.c", "-o", "f.o"],
                   cwd=directory, check=True)
    return (directory / "f.o").read_bytes()


def _elf(data: bytes) -> ElfFile:
    return read_elf(data, "f.o")


def _index(data: bytes, predicate: Callable[[object], bool]) -> int:
    return next(s.index for s in _elf(data).sections if predicate(s))


def _set_header(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def _set_section(data: bytes, index: int, field: int, fmt: str, value: int) -> bytes:
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    return _set_header(data, shoff + index * SHDR.size + field, fmt, value)


def _rela_of_text(data: bytes) -> int:
    return _index(data, lambda s: s.type == 4 and s.name.startswith(".rela.text"))


def _refusal(data: bytes) -> str:
    with pytest.raises(ElfError) as error:
        _elf(data)
    message = str(error.value)
    assert message.startswith("f.o: ") and "\n" not in message
    return message


def test_the_real_object_reads(real_object: bytes) -> None:
    elf = _elf(real_object)
    assert {"f", "g"} <= {s.name for s in elf.symbols}


def test_truncated_at_every_byte_is_refused_in_one_line(real_object: bytes) -> None:
    for length in range(len(real_object)):
        _refusal(real_object[:length])


def _symtab_strtab(data: bytes) -> int:
    return _elf(data).sections[_index(data, lambda s: s.type == SHT_SYMTAB)].link


CASES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "not-elf": (lambda d: b"\0" * len(d), "not an ELF file (no \\x7fELF magic)"),
    "empty": (lambda d: b"", "not an ELF file"),
    "32-bit": (lambda d: _set_header(d, 4, "<B", 1), "ELF class 1 is not ELFCLASS64"),
    "big-endian": (lambda d: _set_header(d, 5, "<B", 2), "ELF data encoding 2 is not little-endian"),
    "aarch64": (lambda d: _set_header(d, 18, "<H", 183), "e_machine 183 is not EM_X86_64"),
    "bad-version": (lambda d: _set_header(d, 20, "<I", 2), "ELF version 2 is not EV_CURRENT"),
    "shoff-past-end": (lambda d: _set_header(d, 0x28, "<Q", len(d)), "lies outside the file"),
    "shoff-overflows-64-bits": (lambda d: _set_header(d, 0x28, "<Q", U64_MAX - 8), "lies outside the file"),
    "shnum-zero": (lambda d: _set_header(d, 0x3C, "<H", 0), "e_shnum is 0 with a section table"),
    "shnum-zero-no-table": (lambda d: _set_header(_set_header(d, 0x3C, "<H", 0), 0x28, "<Q", 0),
                            "no section headers (e_shnum is 0)"),
    "shnum-beyond-table": (lambda d: _set_header(d, 0x3C, "<H", 0xFFFF), "(65535 entries) lies outside the file"),
    "shentsize": (lambda d: _set_header(d, 0x3A, "<H", 40), "e_shentsize 40 is not 64"),
    "shstrndx-xindex": (lambda d: _set_header(d, 0x3E, "<H", SHN_XINDEX), "e_shstrndx is SHN_XINDEX"),
    "shstrndx-beyond": (lambda d: _set_header(d, 0x3E, "<H", 500), "e_shstrndx 500 is not a section"),
    "shstrndx-not-strtab": (lambda d: _set_header(d, 0x3E, "<H", 1), "named by e_shstrndx is not a string table"),
    "section-offset-past-end": (lambda d: _set_section(d, 1, SH_OFFSET, "<Q", len(d) + 1),
                                "lies past the end of the file"),
    "section-size-past-end": (lambda d: _set_section(d, 1, SH_SIZE, "<Q", len(d)), "lies past the end of the file"),
    "section-size-overflows-64-bits": (lambda d: _set_section(d, 1, SH_SIZE, "<Q", U64_MAX),
                                       "lies past the end of the file"),
    "section-offset-overflows-64-bits": (lambda d: _set_section(d, 1, SH_OFFSET, "<Q", U64_MAX),
                                         "lies past the end of the file"),
    "section-name-past-strtab": (lambda d: _set_section(d, 1, SH_NAME, "<I", 0xFFFFFFF0),
                                 "name of section [1]: offset 4294967280 is past its string table"),
    "sh-link-nowhere": (lambda d: _set_section(d, 1, SH_LINK, "<I", 999), "sh_link 999 is past the"),
    "symtab-link-not-strtab": (lambda d: _set_section(d, _index(d, lambda s: s.type == SHT_SYMTAB), SH_LINK, "<I",
                                                      1), "sh_link 1 is not a string table"),
    "rela-info-nowhere": (lambda d: _set_section(d, _rela_of_text(d), SH_INFO, "<I", 999),
                          "sh_info 999 names no section"),
    "rela-link-not-symtab": (lambda d: _set_section(d, _rela_of_text(d), SH_LINK, "<I", 1),
                             "sh_link 1 is not the symbol table"),
    "rela-entsize": (lambda d: _set_section(d, _rela_of_text(d), SH_SIZE, "<Q", RELA.size + 1),
                     "do not describe 24-byte relocations"),
    "rel-not-rela": (lambda d: _set_section(d, _rela_of_text(d), SH_TYPE, "<I", SHT_REL),
                     "SHT_REL relocations are not supported"),
    "two-relocation-sections-for-one": (lambda d: _second_rela_for_same_target(d), "already has relocations"),
    "relocation-symbol-out-of-range": (lambda d: _patch_first_rela(d, 8, "<Q", (5000 << 32) | 2),
                                       "names symbol 5000, past the"),
    "relocation-offset-outside-section": (lambda d: _patch_first_rela(d, 0, "<Q", 0x7FFFFFFF),
                                          "at offset 0x7fffffff lies outside section"),
    "relocation-offset-overflows-64-bits": (lambda d: _patch_first_rela(d, 0, "<Q", U64_MAX - 1),
                                            "lies outside section"),
    "symbol-section-out-of-range": (lambda d: _patch_symbol(d, 1, 6, "<H", 0xFE00), "section index 65024 is past"),
    "symbol-xindex": (lambda d: _patch_symbol(d, 1, 6, "<H", SHN_XINDEX), "SHN_XINDEX is not supported"),
    "symbol-name-past-strtab": (lambda d: _patch_symbol(d, 1, 0, "<I", 0xFFFFFF), "past its string table"),
    "symtab-entsize": (lambda d: _set_section(d, _index(d, lambda s: s.type == SHT_SYMTAB), SH_SIZE, "<Q",
                                              SYM.size + 1), "do not describe 24-byte symbols"),
    "two-symbol-tables": (lambda d: _set_section(d, 1, SH_TYPE, "<I", SHT_SYMTAB), "symbol tables"),
    "strtab-without-final-nul": (lambda d: _unterminate(d, _symtab_strtab(d)), "must start and end with a NUL byte"),
    "shstrtab-without-final-nul": (lambda d: _unterminate(d, struct.unpack_from("<H", d, 0x3E)[0]),
                                   "(.shstrtab): a string table must start and end with a NUL byte"),
    "nobits-with-relocations": (lambda d: _set_section(d, _elf(d).sections[_rela_of_text(d)].info, SH_TYPE, "<I",
                                                       SHT_NOBITS), "which holds no bytes in the file"),
    "null-with-relocations": (lambda d: _set_section(d, _elf(d).sections[_rela_of_text(d)].info, SH_TYPE, "<I",
                                                     SHT_NULL), "which holds no bytes in the file"),
    "overlapping-sections": (lambda d: _overlap(d), "overlaps section"),
    "section-over-the-header-table": (lambda d: _set_section(d, _index(d, lambda s: s.name == ".text.f"), SH_OFFSET,
                                                             "<Q",
                                                             struct.unpack_from("<Q", d, 0x28)[0]),
                                      "overlaps"),
    "alignment-not-power-of-two": (lambda d: _set_section(d, 1, SH_ALIGN, "<Q", 24), "is not a power of two"),
    "alignment-forged-huge": (lambda d: _set_section(d, 1, SH_ALIGN, "<Q", 1 << 62), "is larger than 0x200000"),
    "program-headers-outside": (lambda d: _set_header(_set_header(d, 0x38, "<H", 3), 0x20, "<Q", U64_MAX - 4),
                                "program header table at"),
}


def _first_rela(data: bytes) -> int:
    return _elf(data).sections[_rela_of_text(data)].offset


def _patch_first_rela(data: bytes, field: int, fmt: str, value: int) -> bytes:
    return _set_header(data, _first_rela(data) + field, fmt, value)


def _patch_symbol(data: bytes, number: int, field: int, fmt: str, value: int) -> bytes:
    symtab = _elf(data).sections[_index(data, lambda s: s.type == SHT_SYMTAB)]
    return _set_header(data, symtab.offset + number * SYM.size + field, fmt, value)


def _unterminate(data: bytes, index: int) -> bytes:
    section = _elf(data).sections[index]
    return _set_header(data, section.offset + section.size - 1, "<B", ord("A"))


def _overlap(data: bytes) -> bytes:
    """Point the second text section's bytes into the first's."""
    texts = [s for s in _elf(data).sections if s.name.startswith(".text.") and s.size > 4]
    return _set_section(data, texts[1].index, SH_OFFSET, "<Q", texts[0].offset + 2)


def _second_rela_for_same_target(data: bytes) -> bytes:
    relas = [s for s in _elf(data).sections if s.type == 4 and s.name.startswith(".rela.text")]
    return _set_section(data, relas[1].index, SH_INFO, "<I", relas[0].info)


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_forged_field_is_refused_in_one_line(real_object: bytes, case: str) -> None:
    forge, message = CASES[case]
    assert message in _refusal(forge(real_object))


def test_a_forged_nobits_size_allocates_nothing(real_object: bytes) -> None:
    """SHT_NOBITS may claim any size; the reader holds no bytes for it, and the diff walks none."""
    bss = _index(real_object, lambda s: s.type == SHT_NOBITS)
    forged = _set_section(real_object, bss, SH_SIZE, "<Q", 1 << 62)
    tracemalloc.start()
    try:
        elf = _elf(forged)
        diff_elves(_elf(real_object), elf, "f.o", XEN_X86_64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elf.sections[bss].size == 1 << 62 and elf.sections[bss].data == b""
    assert peak < 16 << 20


def test_a_nobits_special_section_of_forged_size_does_not_hang(real_object: bytes) -> None:
    """Found by the fuzzer's review: the special-section walk went by sh_size, not the bytes held."""
    text = _index(real_object, lambda s: s.name == ".text.f")
    bss = max((s for s in _elf(real_object).sections if s.type == SHT_NOBITS), key=lambda s: len(s.name))
    renamed = _rename_section(real_object, bss.index, ".bug_frames.0")
    forged = _set_section(renamed, _index(renamed, lambda s: s.name == ".bug_frames.0"), SH_SIZE, "<Q", 1 << 62)
    diff = diff_elves(_elf(real_object), _elf(forged), "f.o", XEN_X86_64)
    assert diff.original.sections[text].name == ".text.f"


def _rename_section(data: bytes, index: int, name: str) -> bytes:
    """Give section `index` the name `name`: an existing string of .shstrtab, or its own name overwritten."""
    elf = _elf(data)
    shstrtab = elf.sections[struct.unpack_from("<H", data, 0x3E)[0]]
    offset = shstrtab.data.find(name.encode() + b"\0")
    if offset < 0:
        # Overwrite the section's own name in place when it is long enough (".bss.counter" is).
        own = elf.sections[index]
        start = shstrtab.data.index(own.name.encode() + b"\0")
        assert len(own.name) >= len(name)
        out = bytearray(data)
        padded = name.encode() + b"\0" * (len(own.name) - len(name) + 1)
        out[shstrtab.offset + start:shstrtab.offset + start + len(padded)] = padded
        return bytes(out)
    return _set_section(data, index, SH_NAME, "<I", offset)


def test_the_overlap_sort_never_compares_sections(real_object: bytes) -> None:
    """Found by the fuzzer: two sections at the same offset and size made sorted() compare Section objects."""
    texts = [s for s in _elf(real_object).sections if s.name.startswith(".text.")]
    forged = _set_section(real_object, texts[1].index, SH_OFFSET, "<Q", texts[0].offset)
    forged = _set_section(forged, texts[1].index, SH_SIZE, "<Q", texts[0].size)
    assert "overlaps" in _refusal(forged)


def test_header_sizes_are_what_the_cases_assume() -> None:
    assert (EHDR.size, SHDR.size) == (64, 64)


def test_names_with_control_or_undecodable_bytes_are_escaped_in_the_refusal(real_object: bytes,
                                                                            tmp_path: Path) -> None:
    """Found by the fuzzer (a section name that is not UTF-8 crashed the diff): names are the file's
    bytes, and a message shows them escaped, never as terminal control sequences."""
    elf = _elf(real_object)
    text = next(s for s in elf.sections if s.name == ".text.f")
    shstrtab = elf.sections[struct.unpack_from("<H", real_object, 0x3E)[0]]
    at = shstrtab.offset + shstrtab.data.index(b".text.f\0")
    forged = bytearray(_set_section(real_object, text.index, SH_ALIGN, "<Q", 24))
    forged[at:at + 7] = b"\x1b[2J\xff.f"
    message = _refusal(bytes(forged))
    assert f"section [{text.index}] \\x1b[2J\\udcff.f: alignment 0x18 is not a power of two" in message
    assert message.isprintable()
    (tmp_path / "f.o").write_bytes(real_object)
    (tmp_path / "forged.o").write_bytes(bytes(forged))
    result = subprocess.run([str(Path(sys.executable).parent / "xsplice-build"), "diff", "f.o", "forged.o"],
                            cwd=tmp_path, capture_output=True, check=False)
    assert result.returncode == 1 and b"\x1b" not in result.stderr and b"Traceback" not in result.stderr
    assert result.stderr.count(b"\n") == 1 and b"\\x1b[2J\\udcff.f" in result.stderr
