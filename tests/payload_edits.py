"""Hostile edits of a real payload, each breaking one rule of Xen's loader, for the verifier and minixen.

Each edit takes the unsigned payload and returns a changed copy; EDITS pairs it with what the
offline verifier and the running loader each say when they refuse it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from xsplice_build import sign
from xsplice_build.elf.constants import ET_EXEC, R_X86_64_32, SHF_ALLOC, SHF_WRITE, SHT_RELA
from xsplice_build.elf.livepatch import XEN_4_17_FUNC
from xsplice_build.elf.reader import read_elf
from xsplice_build.elf.structs import EHDR, NHDR, RELA, SHDR, SYM, read_field, write_field

# Every record is edited through its one declaration (elf.structs, elf.livepatch): nothing here retypes a layout.
FUNC = XEN_4_17_FUNC


def _section_header_offset(data: bytes, index: int) -> int:
    return read_field(EHDR, data, 0, "e_shoff") + index * SHDR.size


def _edit_section_header(data: bytes, index: int, field: str, change: Callable[[int], int]) -> bytes:
    out = bytearray(data)
    at = _section_header_offset(data, index)
    write_field(SHDR, out, at, field, change(read_field(SHDR, data, at, field)))
    return bytes(out)


def other_build_id(data: bytes) -> bytes:
    """Depend on an image that is not the one running (flip every byte of both build-ids)."""
    out = bytearray(data)
    elf = read_elf(data, "payload")
    for name in (".livepatch.depends", ".livepatch.xen_depends"):
        section = elf.section_named(name)
        # The note's descriptor follows its header and its 4-byte aligned name ("GNU\0").
        descriptor = section.offset + NHDR.size + (read_field(NHDR, data, section.offset, "n_namesz") + 3) // 4 * 4
        for offset in range(descriptor, section.offset + section.size):
            out[offset] ^= 0xFF
    return bytes(out)


def writable_text(data: bytes) -> bytes:
    text = next(s for s in read_elf(data, "payload").sections if s.is_text)
    return _edit_section_header(data, text.index, "sh_flags", lambda flags: flags | SHF_WRITE)


def unknown_symbol(data: bytes) -> bytes:
    """Rename the first undefined symbol (same length) so the image has no such name."""
    out = bytearray(data)
    elf = read_elf(data, "payload")
    symbol = next(s for s in elf.symbols[1:] if s.is_undefined)
    strtab = elf.sections[elf.sections[elf.symtab_index].link]
    st_name = read_field(SYM, data, elf.sections[elf.symtab_index].offset + symbol.index * SYM.size, "st_name")
    out[strtab.offset + st_name] = ord("Q")
    return bytes(out)


def _first_text_relocation(data: bytes) -> tuple[int, int]:
    """(file offset of the first relocation against text, its r_info)."""
    elf = read_elf(data, "payload")
    target = next(s for s in elf.sections if s.is_text and s.relocations)
    rela = elf.sections[target.rela_section]
    return rela.offset, read_field(RELA, data, rela.offset, "r_info")


def unsupported_relocation(data: bytes) -> bytes:
    out = bytearray(data)
    offset, info = _first_text_relocation(data)
    write_field(RELA, out, offset, "r_info", (info >> 32 << 32) | R_X86_64_32)  # ELF64_R_INFO(sym, type)
    return bytes(out)


def overflowing_relocation(data: bytes) -> bytes:
    out = bytearray(data)
    offset, _ = _first_text_relocation(data)
    write_field(RELA, out, offset, "r_addend", 1 << 40)
    return bytes(out)


def _funcs_field(data: bytes, field: int) -> int:
    return read_elf(data, "payload").section_named(".livepatch.funcs").offset + field


def wrong_old_size(data: bytes) -> bytes:
    out = bytearray(data)
    at = _funcs_field(data, FUNC.old_size)
    struct.pack_into("<I", out, at, struct.unpack_from("<I", data, at)[0] + 1)  # old_size: a uint32_t
    return bytes(out)


def wrong_version(data: bytes) -> bytes:
    out = bytearray(data)
    out[_funcs_field(data, FUNC.version_offset)] = FUNC.version - 1
    return bytes(out)


def unallocated_depends(data: bytes) -> bytes:
    section = read_elf(data, "payload").section_named(".livepatch.depends")
    return _edit_section_header(data, section.index, "sh_flags", lambda flags: flags & ~SHF_ALLOC)


def relocations_for_section_zero(data: bytes) -> bytes:
    rela = next(s for s in read_elf(data, "payload").sections if s.type == SHT_RELA)
    return _edit_section_header(data, rela.index, "sh_info", lambda _info: 0)


def not_relocatable(data: bytes) -> bytes:
    out = bytearray(data)
    write_field(EHDR, out, 0, "e_type", ET_EXEC)
    return bytes(out)


def special_section_twice(data: bytes) -> bytes:
    """Name .livepatch.xen_depends .livepatch.depends: the loader looks special sections up by name."""
    elf = read_elf(data, "payload")
    shstrndx = read_field(EHDR, data, 0, "e_shstrndx")
    name = elf.sections[shstrndx].data.index(b".livepatch.depends\0")
    return _edit_section_header(data, elf.section_named(".livepatch.xen_depends").index, "sh_name", lambda _: name)


@dataclass(frozen=True)
class Edit:
    name: str
    apply: Callable[[bytes], bytes]
    verifier_says: str
    loader_says: str


EDITS = [
    Edit("other-build-id", other_build_id, "built for another image", "build-id failed"),
    Edit("writable-text", writable_text, "writable and executable", "writable and executable"),
    Edit("unknown-symbol", unknown_symbol, "is not in the base image", "unknown symbol"),
    Edit("unsupported-relocation", unsupported_relocation, "not a relocation Xen's x86 loader accepts",
         "unhandled relocation type 10"),
    Edit("overflowing-relocation", overflowing_relocation, "overflows", "overflow in relocation"),
    Edit("wrong-old-size", wrong_old_size, "do not match the image", "do not match the running image"),
    Edit("wrong-version", wrong_version, "version 1, the loader expects 2", "wrong version (1)"),
    Edit("not-relocatable", not_relocatable, "is not ET_REL", "invalid ELF payload"),
    Edit("unallocated-depends", unallocated_depends, "must be allocated", "must be allocated"),
    Edit("relocations-for-section-0", relocations_for_section_zero, "sh_info 0 names no section",
         "sh_info 0 names no section"),
    Edit("special-section-twice", special_section_twice, ".livepatch.depends: was seen 2 times",
         "was seen more than once"),
]


def resign(unsigned: bytes, keys_dir: Path) -> bytes:
    """Sign with the checkout's development key, so only the edit itself can be at fault."""
    key, certificate, _ = sign.load_keys(sign.SigningKeys(keys_dir / "signing_key.pem",
                                                          keys_dir / "signing_cert.pem", development=True))
    return sign.sign(unsigned, key, certificate)


def unsigned_payload(path: Path) -> bytes:
    return sign.split(path.read_bytes(), path.name)[0]
