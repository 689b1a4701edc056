"""Xen's livepatch payload records, laid out as the target's own headers declare them.

struct livepatch_func (xen/include/public/sysctl.h, LIVEPATCH_PAYLOAD_VERSION 2 in Xen 4.17):
    const char *name; void *new_addr; void *old_addr; uint32_t new_size; uint32_t old_size;
    uint8_t version; uint8_t _pad[39]; livepatch_expectation_t expect;   -- 104 bytes on x86_64
The layout is data, so a baseline whose headers (or DWARF) say otherwise can supply its own.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass


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

    def pack(self, old_addr: int, new_size: int, old_size: int) -> bytes:
        """One entry with the fields the loader reads; name and new_addr are left to relocations."""
        entry = bytearray(self.size)
        struct.pack_into("<Q", entry, self.old_addr, old_addr)
        struct.pack_into("<I", entry, self.new_size, new_size)
        struct.pack_into("<I", entry, self.old_size, old_size)
        entry[self.version_offset] = self.version
        return bytes(entry)


XEN_4_17_FUNC = FuncLayout(size=104, version=2, name=0, new_addr=8, old_addr=16, new_size=24, old_size=28,
                           version_offset=32)
