"""An object's bytes with the relocations of its DWARF sections applied, so DWARF reads without them.

In a relocatable object every string reference of .debug_info (DW_FORM_strp) is a
relocation against .debug_str: unapplied, all names read as the first string. pyelftools
applies them itself, one relocation at a time through its construct parser, which is most
of the time a type table of a real hypervisor's unit takes; applying them here first,
from the already parsed relocations, leaves pyelftools only the DWARF to decode.
"""

from __future__ import annotations

from .constants import ET_REL, R_X86_64_32, R_X86_64_64
from .model import ElfFile

_WIDTHS = {R_X86_64_32: 4, R_X86_64_64: 8}


def with_debug_relocations(data: bytes, elf: ElfFile) -> bytes:
    """`data` (the bytes `elf` was read from) with every .debug_* relocation of an ET_REL applied (S + A)."""
    if elf.kind != ET_REL:
        return data
    patched = bytearray(data)
    for section in elf.sections:
        if not section.name.startswith(".debug_") or not section.relocations:
            continue
        for rela in section.relocations:
            width = _WIDTHS.get(rela.type)
            if width is None:
                continue
            value = (elf.symbols[rela.symbol].value + rela.addend) & ((1 << 8 * width) - 1)
            at = section.offset + rela.offset
            patched[at:at + width] = value.to_bytes(width, "little")
    return bytes(patched)
