"""Reading and writing ELF: our writer's output satisfies the reference tools, our reader refuses junk."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from xsplice_build.elf.constants import (
    R_X86_64_PC32,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHT_PROGBITS,
    STB_GLOBAL,
    STB_LOCAL,
    STT_FUNC,
    STT_NOTYPE,
)
from xsplice_build.elf.reader import read_elf
from xsplice_build.elf.writer import OutRela, OutSection, OutSymbol, section_symbol, write_relocatable
from xsplice_build.errors import ElfError


def _sample() -> bytes:
    text = OutSection(".text.f", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, b"\xe8\0\0\0\0\xc3", 16)
    external = OutSymbol("g", STT_NOTYPE, STB_GLOBAL)
    text.relocations.append(OutRela(1, R_X86_64_PC32, external, -4))
    function = OutSymbol("f", STT_FUNC, STB_GLOBAL, text, 0, 6)
    local = OutSymbol("helper", STT_FUNC, STB_LOCAL, text, 5, 1)
    return write_relocatable([text], [function, section_symbol(text), local, external])


def test_written_objects_pass_elflint_and_link(tmp_path: Path) -> None:
    path = tmp_path / "sample.o"
    path.write_bytes(_sample())
    subprocess.run(["eu-elflint", "--gnu-ld", "--strict", str(path)], check=True, capture_output=True)
    dump = subprocess.run(["objdump", "-dr", str(path)], check=True, capture_output=True, text=True).stdout
    assert "R_X86_64_PC32\tg-0x4" in dump
    subprocess.run(["ld", "-r", "-o", str(tmp_path / "linked.o"), str(path)], check=True)


def test_reader_reads_what_the_writer_wrote() -> None:
    elf = read_elf(_sample(), "sample")
    names = [s.name for s in elf.symbols]
    # Locals first, as the gABI requires, whatever order they were given in.
    assert names == ["", "", "helper", "f", "g"]
    text = elf.section_named(".text.f")
    assert text is not None and [(r.offset, r.type, elf.symbols[r.symbol].name) for r in text.relocations] == \
        [(1, R_X86_64_PC32, "g")]


def test_writing_is_deterministic_across_processes_and_hash_seeds() -> None:
    # Two calls in one process share one hash seed and one set/dict order: only separate processes with
    # different PYTHONHASHSEED values can show an order that leaks into the bytes.
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from test_elf import _sample; "
              "sys.stdout.buffer.write(_sample())")
    outputs = {subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent)], check=True,
                              capture_output=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
               for seed in ("0", "1", "4242")}
    assert len(outputs) == 1 and next(iter(outputs)).startswith(b"\x7fELF")


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: b"MZ" + d[2:], "not an ELF file"),
    (lambda d: d[:40], "truncated ELF header"),
    (lambda d: d[:4] + b"\x01" + d[5:], "is not ELFCLASS64"),
    (lambda d: d[:5] + b"\x02" + d[6:], "is not little-endian"),
    (lambda d: d[:18] + struct.pack("<H", 3) + d[20:], "is not EM_X86_64"),
    (lambda d: d[:-10], "lies outside the file"),
])
def test_reader_refuses_broken_files_in_one_line(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ElfError) as error:
        read_elf(mutate(_sample()), "broken.o")
    assert message in str(error.value) and str(error.value).startswith("broken.o: ")
    assert "\n" not in str(error.value)


def test_reader_parses_a_real_object_like_readelf(tmp_path: Path) -> None:
    source = tmp_path / "f.c"
    source.write_text("static int counter;\nint f(int x) { return x + ++counter; }\n")
    subprocess.run(["gcc", "-O2", "-fpic", "-ffunction-sections", "-fdata-sections", "-c", str(source), "-o",
                    str(tmp_path / "f.o")], check=True)
    elf = read_elf((tmp_path / "f.o").read_bytes(), "f.o")
    readelf = subprocess.run(["readelf", "-SW", str(tmp_path / "f.o")], check=True, capture_output=True,
                             text=True).stdout
    for section in elf.sections[1:]:
        assert section.name in readelf
    counter = next(s for s in elf.symbols if s.name == "counter")
    assert counter.xen_name == "f.c#counter"
    assert shutil.which("eu-elflint")


def test_an_addend_past_64_bits_wraps_as_the_linker_computes_it() -> None:
    """Found by the fuzzer: a forged symbol value made symbol + addend leave r_addend's range."""
    text = OutSection(".text.f", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, b"\xe8\0\0\0\0\xc3", 16)
    external = OutSymbol("g", STT_NOTYPE, STB_GLOBAL)
    text.relocations.append(OutRela(1, R_X86_64_PC32, external, (1 << 64) - 4))
    elf = read_elf(write_relocatable([text], [section_symbol(text), external]), "wrapped")
    assert elf.section_named(".text.f").relocations[0].addend == -4
