"""Xen's livepatch payload ABI: the section names the loader looks up and struct livepatch_func.

struct livepatch_func (xen/include/public/sysctl.h, LIVEPATCH_PAYLOAD_VERSION 2 in Xen 4.17):
    const char *name; void *new_addr; void *old_addr; uint32_t new_size; uint32_t old_size;
    uint8_t version; uint8_t _pad[39]; livepatch_expectation_t expect;   -- 104 bytes on x86_64
The layout is data, so a baseline whose headers (or DWARF) say otherwise can supply its own;
every writer and reader of an entry (payload stage, verify, tests) packs and unpacks it here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Sections the loader finds by name (xen/include/xen/livepatch_elf.h, xen/common/livepatch.c).
# It takes the first section of a name, so a payload carries each of these at most once.
FUNCS = ".livepatch.funcs"
DEPENDS = ".livepatch.depends"
XEN_DEPENDS = ".livepatch.xen_depends"
BUILD_ID = ".note.gnu.build-id"
HOOKS_PREFIX = ".livepatch.hooks."
# Ours: the names .livepatch.funcs entries point at (the loader only follows the pointers).
STRINGS = ".livepatch.strings"
# check_special_sections: each present, non-empty, once.
REQUIRED = (DEPENDS, XEN_DEPENDS, BUILD_ID)
# Alternatives (prepare_payload): entries, and the one section their replacements must lie in.
ALT_INSTRUCTIONS = ".altinstructions"
ALT_REPLACEMENT = ".altinstr_replacement"
# struct alt_instr { s32 orig_offset, repl_offset; u16 cpuid; u8 orig_len, repl_len, pad_len, priv; }
# __packed (xen/arch/x86/include/asm/alternative.h); each offset is relative to its own field.
ALT_INSTR = struct.Struct("<iiHBBBB")
# _apply_alternatives (xen/arch/x86/alternative.c) BUG()s, a hypervisor crash, on an entry whose
# replacement is longer than the site, a site over MAX_PATCH_LEN, or a feature past NCAPINTS words
# (4.17: FEATURESET_NR_ENTRIES 19 + X86_NR_SYNTH 1 + X86_NR_BUG 1). ALT_FLAG_NOT inverts the test.
ALT_MAX_PATCH_LEN = 255 - 1
ALT_FLAG_NOT = 1 << 15
ALT_FEATURES = 21 * 32
MODINFO = ".modinfo"
BUG_FRAMES = tuple(f".bug_frames.{number}" for number in range(4))
EX_TABLE = ".ex_table"
# Every table prepare_payload takes at its load address: left unallocated, Xen 4.17 would use NULL.
_READ_BY_LOADER = frozenset({FUNCS, *REQUIRED, *BUG_FRAMES, ALT_INSTRUCTIONS, ALT_REPLACEMENT, EX_TABLE,
                             MODINFO})


def loader_reads(section_name: str) -> bool:
    """Whether the loader finds this section by name and reads it once loaded."""
    return section_name in _READ_BY_LOADER or section_name.startswith(HOOKS_PREFIX)

# xen/include/xen/livepatch.h: the largest upload, and the largest NOBITS section, the loader takes.
MAX_PAYLOAD_SIZE = 2 << 20
# xen/common/livepatch_elf.c livepatch_header_check: "Arbitrary boundary limit" (e_shnum >= 1024 refused).
MAX_SECTIONS = 1024


@dataclass(frozen=True)
class FuncEntry:
    """One struct livepatch_func, as the loader reads it once relocated."""

    name: int  # address of the NUL-terminated name
    new_addr: int
    old_addr: int
    new_size: int
    old_size: int
    version: int


@dataclass(frozen=True)
class FuncLayout:
    size: int
    version: int
    name: int
    new_addr: int
    old_addr: int
    new_size: int
    old_size: int
    version_offset: int

    def pack(self, old_addr: int, new_size: int, old_size: int, version: int | None = None) -> bytes:
        """One entry with the fields the loader reads; name and new_addr are left to relocations."""
        entry = bytearray(self.size)
        struct.pack_into("<Q", entry, self.old_addr, old_addr)
        struct.pack_into("<I", entry, self.new_size, new_size)
        struct.pack_into("<I", entry, self.old_size, old_size)
        entry[self.version_offset] = self.version if version is None else version
        return bytes(entry)

    def unpack(self, data: bytes | bytearray, offset: int = 0) -> FuncEntry:
        """The entry at `offset` of a .livepatch.funcs section's bytes."""
        (name,) = struct.unpack_from("<Q", data, offset + self.name)
        (new_addr,) = struct.unpack_from("<Q", data, offset + self.new_addr)
        (old_addr,) = struct.unpack_from("<Q", data, offset + self.old_addr)
        (new_size,) = struct.unpack_from("<I", data, offset + self.new_size)
        (old_size,) = struct.unpack_from("<I", data, offset + self.old_size)
        return FuncEntry(name, new_addr, old_addr, new_size, old_size, data[offset + self.version_offset])

    def replace(self, data: bytes | bytearray, offset: int, **fields: int) -> bytes:
        """`data` with the named fields of the entry at `offset` rewritten (old_addr, old_size, version ...)."""
        out = bytearray(data)
        entry = self.unpack(data, offset)
        values = {**entry.__dict__, **fields}
        for field, fmt in (("name", "<Q"), ("new_addr", "<Q"), ("old_addr", "<Q"), ("new_size", "<I"),
                           ("old_size", "<I")):
            struct.pack_into(fmt, out, offset + getattr(self, field), values[field])
        out[offset + self.version_offset] = values["version"]
        return bytes(out)


XEN_4_17_FUNC = FuncLayout(size=104, version=2, name=0, new_addr=8, old_addr=16, new_size=24, old_size=28,
                           version_offset=32)
