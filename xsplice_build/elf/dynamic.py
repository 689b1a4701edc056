"""What a dynamically linked program needs to run: its interpreter (PT_INTERP) and libraries (DT_NEEDED)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ElfError
from . import reader
from .constants import DT_NEEDED, DT_NULL, PT_INTERP, SHT_DYNAMIC
from .structs import DYN


@dataclass(frozen=True)
class Dependencies:
    interpreter: str | None
    needed: tuple[str, ...]


def dependencies(data: bytes, name: str) -> Dependencies:
    """The interpreter path and the DT_NEEDED sonames of the executable or library `data`."""
    # Only headers and sections: a linked program's relocations are not the relocatable kind read_elf checks.
    _kind, _machine, _entry, phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx = reader._header(data, name)
    raw_sections = reader._section_headers(data, name, shoff, shentsize, shnum)
    names = reader._section_names(data, name, raw_sections, shstrndx)
    sections = [reader._section(data, name, index, raw, names[index]) for index, raw in enumerate(raw_sections)]
    interpreter = None
    for p_type, _flags, offset, _vaddr, _paddr, filesz, _memsz, _align in reader._program_headers(
            data, name, phoff, phentsize, phnum):
        if p_type == PT_INTERP:
            if offset + filesz > len(data):
                raise ElfError(f"{name}: PT_INTERP lies past the end of the file")
            interpreter = data[offset:offset + filesz].split(b"\0", 1)[0].decode("ascii", "replace")
    dynamic = next((s for s in sections if s.type == SHT_DYNAMIC), None)
    if dynamic is None:
        return Dependencies(interpreter, ())
    if dynamic.link >= len(sections):
        raise ElfError(f"{name}: .dynamic: sh_link {dynamic.link} names no section")
    strings = sections[dynamic.link].data
    needed = []
    for tag, value in DYN.iter_unpack(dynamic.data[:len(dynamic.data) - len(dynamic.data) % DYN.size]):
        if tag == DT_NULL:
            break
        if tag == DT_NEEDED:
            if value >= len(strings):
                raise ElfError(f"{name}: DT_NEEDED name at {value:#x} lies outside .dynstr")
            needed.append(strings[value:strings.index(b"\0", value)].decode("ascii", "replace"))
    return Dependencies(interpreter, tuple(needed))
