"""The bring-up-only warning: a patched function that runs only when a CPU comes up (or resumes).

A vendor init routine that writes an MSR runs once per CPU, at bring-up: replacing it
changes nothing on the CPUs already online, however valid the payload. Which functions
are such hooks is known only from the running image, so it is read from the base image:
the functions that call the patched one (`call`/`jmp rel32`) and the data that holds its
address (a `struct cpu_dev` table). When every one of them is a bring-up hook of the
target profile, boot-time code, or (a few levels up) a function reached only from those,
the report and the console warn [rule: bring-up-only]. Code that takes the function's
address (`lea`: a callback registered, even by boot code) means it may run any time: no
warning.
"""

from __future__ import annotations

import bisect
import fnmatch
import re
import struct
from collections import defaultdict
from dataclasses import dataclass, field

from ..diff.profile import TargetProfile
from ..elf.constants import SHT_NOBITS
from ..elf.model import ElfFile, Symbol

# call rel32, jmp rel32, and lea rel32(%rip) into any register (ModRM 00 reg 101).
_REFERENCE = re.compile(rb"[\xe8\xe9]|\x8d[\x05\x0d\x15\x1d\x25\x2d\x35\x3d]")
_MAX_DEPTH = 3  # callers of callers followed at most this far up


@dataclass
class Referrers:
    """Who refers to a function in the image: code (by its function) and data (by its object)."""

    functions: set[str] = field(default_factory=set)
    tables: set[str] = field(default_factory=set)
    # Code that takes its address (a callback registered, at boot or not): it may run any time.
    address_takers: set[str] = field(default_factory=set)


class ImageReferences:
    """The base image's code and data, indexed by the addresses they refer to."""

    def __init__(self, image: ElfFile, profile: TargetProfile) -> None:
        self.profile = profile
        self.symbols = sorted((s for s in image.symbols[1:] if s.name and (s.is_function or s.is_object)
                               and not s.is_undefined and not s.is_special_index), key=lambda s: s.value)
        self._starts = [s.value for s in self.symbols]
        self.by_name = {s.xen_name: s for s in self.symbols}
        self.code_refs: dict[int, set[int]] = defaultdict(set)  # target -> addresses of the calls and jumps to it
        self.address_refs: dict[int, set[int]] = defaultdict(set)  # target -> where code takes its address
        self.data: list[tuple[int, bytes]] = []
        init = [s.value for s in image.symbols if s.name in ("_sinittext", "_einittext")]
        self.init_range = (min(init), max(init)) if len(init) == 2 else (0, 0)
        for section in image.sections:
            if not section.is_alloc or section.type == SHT_NOBITS:
                continue
            if section.is_text:
                self._index_code(section.addr, bytes(section.data))
            else:
                self.data.append((section.addr, bytes(section.data)))
            if section.is_text and profile.is_init_section(section.name):
                self.init_range = (section.addr, section.addr + section.size)

    def _index_code(self, base: int, data: bytes) -> None:
        # Every rel32 that may be a call, a jump or an address taken; a false match only adds a referrer
        # that makes the warning less likely, never more.
        for match in _REFERENCE.finditer(data):
            start = match.end()
            if start + 4 <= len(data):
                relative = int.from_bytes(data[start:start + 4], "little", signed=True)
                target = base + start + 4 + relative
                (self.address_refs if len(match.group()) == 2 else self.code_refs)[target].add(base + match.start())

    def containing(self, address: int) -> Symbol | None:
        position = bisect.bisect_right(self._starts, address)
        for symbol in reversed(self.symbols[max(0, position - 8):position]):
            if symbol.value <= address < symbol.value + max(symbol.size, 1):
                return symbol
        return None

    def referrers(self, address: int) -> Referrers:
        found = Referrers()
        for site in self.address_refs.get(address, ()):
            taker = self.containing(site)
            found.address_takers.add(taker.xen_name if taker else f"{site:#x}")
        for site in self.code_refs.get(address, ()):
            caller = self.containing(site)
            if caller is not None and caller.value != address:
                found.functions.add(caller.xen_name)
        pattern = struct.pack("<Q", address)
        for base, data in self.data:
            position = data.find(pattern)
            while position >= 0:
                holder = self.containing(base + position)
                found.tables.add(holder.xen_name if holder else f"{base + position:#x}")
                position = data.find(pattern, position + 1)
        return found

    def is_boot_code(self, name: str) -> bool:
        symbol = self.by_name.get(name)
        return symbol is not None and self.init_range[0] <= symbol.value < self.init_range[1]


def bring_up_warning(references: ImageReferences, name: str) -> str | None:
    """The warning for a patched function (by its base-image name), or None when it also runs later."""
    symbol = references.by_name.get(name)
    if symbol is None:
        return None
    found = references.referrers(symbol.value)
    if not found.functions and not found.tables:
        return None  # no caller in the image at all: nothing says when it runs
    if not _only_bring_up(references, found, _MAX_DEPTH, {name}):
        return None
    via = [f"called from {', '.join(sorted(found.functions))}"] if found.functions else []
    via += [f"pointed at by {', '.join(sorted(found.tables))}"] if found.tables else []
    return (f"{name}: runs only at CPU bring-up, resume or boot ({'; '.join(via)}) [rule: bring-up-only]; the "
            "payload is valid but takes no effect on CPUs already online: add an apply hook that redoes its "
            "work on each online CPU")


def _only_bring_up(references: ImageReferences, found: Referrers, depth: int, seen: set[str]) -> bool:
    if found.address_takers:
        return False
    if not all(_is_hook(references.profile.bring_up_tables, table) for table in found.tables):
        return False
    for caller in found.functions:
        if _is_hook(references.profile.bring_up_functions, caller) or references.is_boot_code(caller):
            continue
        symbol = references.by_name.get(caller)
        if depth == 0 or symbol is None or caller in seen:
            return False
        above = references.referrers(symbol.value)
        if not above.functions and not above.tables:
            return False
        if not _only_bring_up(references, above, depth - 1, seen | {caller}):
            return False
    return True


def _is_hook(patterns: tuple[str, ...], name: str) -> bool:
    plain = name.rsplit("#", 1)[-1]
    return any(fnmatch.fnmatchcase(plain, pattern) for pattern in patterns)
