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
from xsplice_build.elf.constants import R_X86_64_32
from xsplice_build.elf.reader import read_elf
from xsplice_build.elf.structs import RELA, SHDR, SYM

FUNCS_OLD_SIZE, FUNCS_VERSION = 28, 32


def _section_header_offset(data: bytes, index: int) -> int:
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    return shoff + index * SHDR.size


def other_build_id(data: bytes) -> bytes:
    """Depend on an image that is not the one running (flip every byte of both build-ids)."""
    out = bytearray(data)
    elf = read_elf(data, "payload")
    for name in (".livepatch.depends", ".livepatch.xen_depends"):
        section = elf.section_named(name)
        for offset in range(section.offset + 16, section.offset + section.size):
            out[offset] ^= 0xFF
    return bytes(out)


def writable_text(data: bytes) -> bytes:
    out = bytearray(data)
    text = next(s for s in read_elf(data, "payload").sections if s.is_text)
    flags_at = _section_header_offset(data, text.index) + 8
    struct.pack_into("<Q", out, flags_at, text.flags | 0x1)
    return bytes(out)


def unknown_symbol(data: bytes) -> bytes:
    """Rename the first undefined symbol (same length) so the image has no such name."""
    out = bytearray(data)
    elf = read_elf(data, "payload")
    symbol = next(s for s in elf.symbols[1:] if s.is_undefined)
    strtab = elf.sections[elf.sections[elf.symtab_index].link]
    (st_name,) = struct.unpack_from("<I", data, elf.sections[elf.symtab_index].offset + symbol.index * SYM.size)
    out[strtab.offset + st_name] = ord("Q")
    return bytes(out)


def _first_text_relocation(data: bytes) -> tuple[int, int]:
    """(file offset of the first relocation against text, its r_info)."""
    elf = read_elf(data, "payload")
    target = next(s for s in elf.sections if s.is_text and s.relocations)
    rela = elf.sections[target.rela_section]
    _, info, _ = RELA.unpack_from(data, rela.offset)
    return rela.offset, info


def unsupported_relocation(data: bytes) -> bytes:
    out = bytearray(data)
    offset, info = _first_text_relocation(data)
    struct.pack_into("<Q", out, offset + 8, (info & ~0xFFFFFFFF) | R_X86_64_32)
    return bytes(out)


def overflowing_relocation(data: bytes) -> bytes:
    out = bytearray(data)
    offset, _ = _first_text_relocation(data)
    struct.pack_into("<q", out, offset + 16, 1 << 40)
    return bytes(out)


def _funcs_field(data: bytes, field: int) -> int:
    return read_elf(data, "payload").section_named(".livepatch.funcs").offset + field


def wrong_old_size(data: bytes) -> bytes:
    out = bytearray(data)
    at = _funcs_field(data, FUNCS_OLD_SIZE)
    struct.pack_into("<I", out, at, struct.unpack_from("<I", data, at)[0] + 1)
    return bytes(out)


def wrong_version(data: bytes) -> bytes:
    out = bytearray(data)
    out[_funcs_field(data, FUNCS_VERSION)] = 1
    return bytes(out)


def unallocated_depends(data: bytes) -> bytes:
    out = bytearray(data)
    section = read_elf(data, "payload").section_named(".livepatch.depends")
    flags_at = _section_header_offset(data, section.index) + 8
    struct.pack_into("<Q", out, flags_at, section.flags & ~0x2)
    return bytes(out)


def relocations_for_section_zero(data: bytes) -> bytes:
    out = bytearray(data)
    rela = next(s for s in read_elf(data, "payload").sections if s.type == 4)
    struct.pack_into("<I", out, _section_header_offset(data, rela.index) + 44, 0)
    return bytes(out)


def not_relocatable(data: bytes) -> bytes:
    return data[:16] + struct.pack("<H", 2) + data[18:]


def special_section_twice(data: bytes) -> bytes:
    """Name .livepatch.xen_depends .livepatch.depends: the loader looks special sections up by name."""
    elf = read_elf(data, "payload")
    (shstrndx,) = struct.unpack_from("<H", data, 0x3E)
    out = bytearray(data)
    struct.pack_into("<I", out, _section_header_offset(data, elf.section_named(".livepatch.xen_depends").index),
                     elf.sections[shstrndx].data.index(b".livepatch.depends\0"))
    return bytes(out)


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
