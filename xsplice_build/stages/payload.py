"""Stage 6, payload: the extracted code plus Xen's livepatch metadata, as one ET_REL.

What Xen 4.17's loader requires (xen/common/livepatch.c): .livepatch.funcs (one
struct livepatch_func per replaced function, writable since the loader fills it in),
.livepatch.depends and .livepatch.xen_depends (the build-id of what this payload
applies on top of, here the hypervisor itself), and the payload's own
.note.gnu.build-id, each allocated so the loader can read it once loaded. Every
name the code uses in the base image must resolve there to exactly one symbol, and
each old function must be the one the original objects were compiled from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..diff.profile import TargetProfile
from ..elf.constants import R_X86_64_64, SHF_ALLOC, SHF_WRITE, SHT_NOTE, SHT_PROGBITS, STB_LOCAL, STT_SECTION
from ..elf.livepatch import (
    BUILD_ID,
    DEPENDS,
    FUNCS,
    MAX_PAYLOAD_SIZE,
    MAX_SECTIONS,
    STRINGS,
    XEN_4_17_FUNC,
    XEN_DEPENDS,
    FuncLayout,
)
from ..elf.model import ElfFile
from ..elf.notes import build_id_note
from ..elf.reader import read_elf
from ..elf.relink import to_output
from ..elf.writer import OutRela, OutSection, OutSymbol, section_symbol, write_relocatable
from ..errors import XspliceError
from ..records import PatchedFunction, PayloadFunction
from ..target.image import BaseImage


@dataclass(frozen=True)
class Stack:
    """What the payloads under a stacked one provide, as Xen's loader sees them once they are loaded.

    `depends` is the build-id of the payload this one goes on top of. `replaced` maps each base
    function an earlier payload replaced to the size of its latest new code (this payload's
    original objects were compiled with it). `added` maps the names the original objects give
    the earlier payloads' new symbols ("file#name" for a static) to (name the loader resolves, size).
    """

    depends: bytes
    replaced: dict[str, int]
    added: dict[str, tuple[str, int]]


@dataclass(frozen=True)
class Payload:
    data: bytes
    build_id: str
    functions: list[PayloadFunction]

    def record(self) -> dict[str, object]:
        return {"build_id": self.build_id, "functions": [f.to_json() for f in self.functions]}


def make_payload(extract: bytes, functions: list[PatchedFunction], base: BaseImage, profile: TargetProfile,
                 layout: FuncLayout = XEN_4_17_FUNC, stack: Stack | None = None,
                 private_suffix: str | None = None) -> Payload:
    """The payload; `private_suffix` renames its new local symbols (see _make_private)."""
    code = read_elf(extract, "extracted code")
    stack = stack or Stack(base.build_id, {}, {})
    sections, symbols = to_output(code)
    _resolve_references(symbols, base, stack)
    entries = [_old_function(f, base, profile, stack) for f in functions]
    strings = OutSection(STRINGS, SHT_PROGBITS, SHF_ALLOC, b"", 1)
    funcs = OutSection(FUNCS, SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, b"", 8)
    strings_symbol, funcs_symbol = section_symbol(strings), section_symbol(funcs)
    names = bytearray()
    table = bytearray()
    for function, entry in zip(functions, entries, strict=True):
        new_symbol = _function_symbol(symbols, function, code)
        offset = len(table)
        funcs.relocations.append(OutRela(offset + layout.name, R_X86_64_64, strings_symbol, len(names)))
        funcs.relocations.append(OutRela(offset + layout.new_addr, R_X86_64_64, new_symbol, 0))
        names += entry.name.encode("utf-8", "surrogateescape") + b"\0"  # the symbol's own bytes
        table += layout.pack(entry.old_addr, entry.new_size, entry.old_size)
    strings.data, funcs.data = bytes(names), bytes(table)
    if private_suffix:
        _make_private(symbols, {id(_function_symbol(symbols, f, code)) for f in functions}, private_suffix)
    depends = _note_section(DEPENDS, stack.depends)
    xen_depends = _note_section(XEN_DEPENDS, base.build_id)
    own = _note_section(BUILD_ID, b"\0" * 20)
    sections += [strings, funcs, depends, xen_depends, own]
    symbols += [strings_symbol, funcs_symbol]
    unsigned = write_relocatable(sections, symbols)
    # Like ld --build-id=sha1: the id is the hash of the output with the id itself zeroed.
    build_id = hashlib.sha1(unsigned).digest()
    own.data = build_id_note(build_id)
    data = write_relocatable(sections, symbols)
    check_loader_limits(data)
    return Payload(data=data, build_id=build_id.hex(), functions=entries)


def check_loader_limits(data: bytes) -> None:
    """Refuse here what Xen's loader would refuse at upload for its size alone."""
    sections = len(read_elf(data, "payload").sections)
    if sections >= MAX_SECTIONS:
        raise XspliceError(f"payload: {sections} sections; Xen's loader refuses {MAX_SECTIONS} or more "
                           "(livepatch_header_check: \"Too many sections\") [rule: section-limit]; "
                           "split the patch into payloads of fewer changed functions")
    if len(data) > MAX_PAYLOAD_SIZE:
        raise XspliceError(f"payload: {len(data)} bytes; Xen's loader takes at most {MAX_PAYLOAD_SIZE} "
                           "(LIVEPATCH_MAX_SIZE) [rule: size-limit]; split the patch into smaller payloads")


def _old_function(function: PatchedFunction, base: BaseImage, profile: TargetProfile, stack: Stack) -> PayloadFunction:
    if function.name in stack.added and not base.has(function.name):
        # New in an earlier payload: old_addr 0, which Xen's loader resolves among the loaded payloads' symbols.
        name, size = stack.added[function.name]
        if size != function.old_size:
            raise XspliceError(f"{function.object}: {function.name}: {size} bytes in the payload under this one, "
                               f"{function.old_size} in the original object: rebuild the stack")
        return PayloadFunction(name=name, object=function.object, old_addr=0, old_size=size,
                             new_size=function.new_size)
    symbol = base.lookup(function.name, f"{function.object}: {function.symbol}")
    if not symbol.is_function:
        raise XspliceError(f"{function.object}: {function.name}: is not a function in the base image")
    if function.name in stack.replaced:
        # Patched again: the jump goes at the base function, whose code the original object no longer has.
        if stack.replaced[function.name] != function.old_size:
            raise XspliceError(f"{function.object}: {function.name}: {function.old_size} bytes in the original "
                               f"object, {stack.replaced[function.name]} in the payload under this one: rebuild "
                               "the stack")
    elif symbol.size != function.old_size:
        raise XspliceError(
            f"{function.object}: {function.name}: {symbol.size} bytes in the base image but {function.old_size} "
            "in the original object: the base image was not built from the same source and compiler; rebuild "
            "the baseline (doit forget build-base)")
    _, needed = profile.jump_room(base.read(symbol.value, min(symbol.size, profile.endbr_size)))
    if symbol.size < needed:
        raise XspliceError(f"{function.object}: {function.name}: {symbol.size} bytes in the base image, too "
                           f"small for the {needed}-byte patch [rule: jump-room]")
    return PayloadFunction(name=function.name, object=function.object, old_addr=symbol.value,
                         old_size=symbol.size, new_size=function.new_size)


def _make_private(symbols: list[OutSymbol], replacing: set[int], suffix: str) -> None:
    """Give the payload's new local symbols names no other loaded payload has.

    Xen 4.17's loader refuses a payload that defines a new symbol some loaded payload already
    defines (build_symbol_table: "duplicate new symbol"). A cumulative payload carries the new
    functions of the payloads it replaces, which stay loaded while REPLACE runs: under their own
    names it could never be uploaded beside them. Nothing resolves a local symbol of it by name.
    """
    for symbol in symbols:
        if symbol.section is not None and symbol.bind == STB_LOCAL and symbol.name and id(symbol) not in replacing \
                and symbol.type != STT_SECTION and not symbol.name.startswith(".L"):
            symbol.name = f"{symbol.name}{suffix}"


def _resolve_references(symbols: list[OutSymbol], base: BaseImage, stack: Stack) -> None:
    """Every undefined name must be the base image's, or an earlier payload's new symbol (as Xen resolves)."""
    for symbol in symbols:
        if symbol.section is not None or symbol.absolute:
            continue
        if symbol.name in stack.added and not base.has(symbol.name):
            symbol.name = stack.added[symbol.name][0]
        else:
            base.lookup(symbol.name, "payload")


def _function_symbol(symbols: list[OutSymbol], function: PatchedFunction, code: ElfFile) -> OutSymbol:
    # to_output keeps the symbol table's order, so index N of the extract is symbols[N - 1].
    number = function.symbol_index
    if not 0 < number <= len(symbols) or code.symbols[number].name != function.symbol \
            or symbols[number - 1].section is None:
        raise XspliceError(f"{function.object}: new code for {function.symbol} is missing from the extract")
    return symbols[number - 1]


def _note_section(name: str, build_id: bytes) -> OutSection:
    return OutSection(name, SHT_NOTE, SHF_ALLOC, build_id_note(build_id), 4)

