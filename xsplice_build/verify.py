"""Offline payload verification: Xen's livepatch loader rules, checked against a base image.

`verify_payload` refuses what xen/common/livepatch.c, livepatch_elf.c and
xen/arch/x86/livepatch.c refuse (minixen's loader applies the same rules at run time):
the signature, the build-id dependencies, ELF type and machine, section flags (nothing
writable and executable), the x86 relocation set with Xen's bounds and overflow checks
(computed at the address the loader would place the payload), every undefined symbol
resolving to exactly one symbol of the image, each `struct livepatch_func` (version,
old_addr/old_size as the image says, room for the jump). The first broken rule ends
the check with one line naming the file, the structure and the rule.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from . import sign
from .diff.profile import XEN_X86_64, TargetProfile
from .elf.constants import (
    ET_REL,
    R_X86_64_64,
    R_X86_64_NONE,
    SHN_ABS,
    SHN_COMMON,
    SHN_LORESERVE,
    relocation_name,
)
from .elf.livepatch import XEN_4_17_FUNC, FuncLayout
from .elf.model import ElfFile, Rela, Section, Symbol
from .elf.notes import parse_build_id_note
from .elf.reader import read_elf
from .errors import PayloadRejected, XspliceError
from .image import BaseImage
from .layout import apply_layout, baseline_layout, func_layout

SPECIAL_SECTIONS = (".livepatch.depends", ".livepatch.xen_depends", ".note.gnu.build-id", ".livepatch.funcs")
MAX_SECTIONS = 1024
PAGE = 4096
# Where minixen's loader places the first payload (common/livepatch.c, PAYLOAD_AREA_START): the
# plausible load address at which relocation overflow is computed.
PLAUSIBLE_LOAD_ADDRESS = 0x10000000
# Xen x86 maps payloads in the vmap area that starts at __2M_rwdata_end (arch_livepatch_init).
XEN_PAYLOAD_AREA_SYMBOL = "__2M_rwdata_end"


def payload_area(image: BaseImage) -> int:
    """The address the image's loader would map a first payload at: Xen's vmap area, or minixen's."""
    found = image.by_name.get(XEN_PAYLOAD_AREA_SYMBOL, [])
    if len(found) == 1:
        return (found[0].value + PAGE - 1) & ~(PAGE - 1)
    return PLAUSIBLE_LOAD_ADDRESS
# The loader's x86 rules (arch_livepatch_perform_rela, arch_livepatch_verify_func), from the target profile.
JUMP_SIZE = XEN_X86_64.jump_size
ENDBR64 = XEN_X86_64.endbr_bytes
ACCEPTED_RELOCATIONS = XEN_X86_64.accepted_relocations


@dataclass
class Function:
    name: str
    old_addr: int
    old_size: int
    new_addr: int
    new_size: int
    patch_offset: int


@dataclass
class LinkedPayload:
    """A payload placed at `addresses` (section index -> load address) with relocations applied."""

    elf: ElfFile
    build_id: bytes
    depends: bytes
    addresses: dict[int, int]
    contents: dict[int, bytearray]
    functions: list[Function] = field(default_factory=list)
    relocations: int = 0

    def section_bytes(self, name: str) -> bytes:
        section = self.elf.section_named(name)
        if section is None:
            raise XspliceError(f"{self.elf.name}: no section {name}")
        return bytes(self.contents[section.index])


def verify_file(payload: Path, image_path: Path, certificate: Path,
                require_code_signing: bool | None = None) -> tuple[LinkedPayload, BaseImage]:
    """Check a signed payload file against an image file; returns the payload as the loader links it."""
    unsigned = sign.verify_file(payload, certificate, require_code_signing)
    image = BaseImage.load(image_path)
    # The image's own headers (DWARF) say how large its records are, as the pipeline reads them.
    try:
        layout = baseline_layout(image_path, XEN_X86_64)
    except ValueError as error:
        raise XspliceError(str(error)) from None
    profile = apply_layout(XEN_X86_64, layout)
    func = func_layout(layout, profile.livepatch_payload_version)
    return link_payload(unsigned, str(payload), image, base=payload_area(image), layout=func, profile=profile), image


def link_payload(unsigned: bytes, name: str, image: BaseImage, base: int = PLAUSIBLE_LOAD_ADDRESS,
                 running_build_id: bytes | None = None, layout: FuncLayout = XEN_4_17_FUNC,
                 profile: TargetProfile = XEN_X86_64) -> LinkedPayload:
    """Apply every loader rule to an unsigned payload and link it at `base` against `image`."""
    elf = read_elf(unsigned, name)
    _check_header(elf, unsigned)
    _check_special_sections(elf)
    depends, build_id = _check_dependencies(elf, running_build_id or image.build_id, image)
    addresses = _layout(elf, base)
    values = _resolve_symbols(elf, image, addresses)
    contents = {index: bytearray(elf.sections[index].data) for index in addresses}
    linked = LinkedPayload(elf=elf, build_id=build_id, depends=depends, addresses=addresses, contents=contents)
    for section in elf.sections:
        if section.relocations and section.index in addresses:
            _relocate(linked, section, values)
            linked.relocations += len(section.relocations)
    linked.functions = _check_functions(linked, image, layout)
    _check_entry_sizes(elf, profile)
    return linked


def _reject(elf: ElfFile, where: str, rule: str) -> PayloadRejected:
    return PayloadRejected(f"{elf.name}: {where}: {rule}")


def _check_header(elf: ElfFile, data: bytes) -> None:
    if elf.kind != ET_REL:
        raise _reject(elf, "ELF header", f"e_type {elf.kind} is not ET_REL; a payload is a relocatable object")
    if elf.program_headers:
        raise _reject(elf, "ELF header", "a payload has no program headers (e_phnum must be 0)")
    osabi, abiversion = data[7], data[8]
    if osabi not in (0, 9) or abiversion:
        raise _reject(elf, "ELF header", f"EI_OSABI {osabi} / EI_ABIVERSION {abiversion} are not SYSV/FreeBSD, 0")
    if len(elf.sections) >= MAX_SECTIONS:
        raise _reject(elf, "ELF header", f"{len(elf.sections)} sections, Xen's loader takes fewer than "
                                         f"{MAX_SECTIONS}")
    if elf.symtab_index is None:
        raise _reject(elf, "sections", "no symbol table")
    for section in elf.sections[1:]:
        if section.is_alloc and section.is_text and section.is_writable:
            raise _reject(elf, f"section [{section.index}] {section.name}",
                          "writable and executable (W+X); the loader maps text read+execute only")
        if section.align and section.addr % section.align:
            raise _reject(elf, f"section [{section.index}] {section.name}",
                          f"sh_addr {section.addr:#x} is not aligned to {section.align}")


def _check_special_sections(elf: ElfFile) -> None:
    for name in SPECIAL_SECTIONS:
        found = elf.sections_named(name)
        if not found:
            raise _reject(elf, name, "is missing")
        if len(found) > 1:
            raise _reject(elf, name, f"was seen {len(found)} times, once is the rule")
        if not found[0].size:
            raise _reject(elf, name, "is empty")
        # Contents as the file holds them: SHT_NOBITS and SHT_NULL sections hold none, whatever sh_size says
        # (the fuzzer's find: a SHT_NULL .livepatch.funcs of 104 bytes was read past its empty contents).
        if not found[0].is_alloc or len(found[0].data) != found[0].size:
            raise _reject(elf, name, "must be allocated, with contents (SHF_ALLOC, not SHT_NOBITS or SHT_NULL)")


def _check_dependencies(elf: ElfFile, running: bytes, image: BaseImage) -> tuple[bytes, bytes]:
    notes = {}
    for name in (".livepatch.depends", ".livepatch.xen_depends", ".note.gnu.build-id"):
        notes[name] = parse_build_id_note(elf.section_named(name).data, f"{elf.name}: {name}")
    for name in (".livepatch.xen_depends", ".livepatch.depends"):
        if notes[name] != running:
            raise _reject(elf, name, f"build-id {notes[name].hex()} is not the image's "
                                     f"({image.path.name}: {running.hex()}); built for another image")
    return notes[".livepatch.depends"], notes[".note.gnu.build-id"]


def _layout(elf: ElfFile, base: int) -> dict[int, int]:
    """Where the loader puts each allocated section: text, then rw, then ro, each region page aligned."""
    regions: dict[str, list[tuple[int, int]]] = {"text": [], "rw": [], "ro": []}
    sizes = {"text": 0, "rw": 0, "ro": 0}
    for section in elf.sections[1:]:
        if not section.is_alloc:
            continue
        region = "text" if section.is_text else "rw" if section.is_writable else "ro"
        align = section.align or 1
        offset = -(-sizes[region] // align) * align
        regions[region].append((section.index, offset))
        sizes[region] = offset + section.size
    addresses, start = {}, base
    for region in ("text", "rw", "ro"):
        for index, offset in regions[region]:
            addresses[index] = start + offset
        start += -(-sizes[region] // PAGE) * PAGE
    return addresses


def _resolve_symbols(elf: ElfFile, image: BaseImage, addresses: dict[int, int]) -> dict[int, int | None]:
    """Each symbol's value once loaded; None for a symbol of a section the loader does not load."""
    values: dict[int, int | None] = {0: None}
    for symbol in elf.symbols[1:]:
        values[symbol.index] = _symbol_value(elf, symbol, image, addresses)
    return values


def _symbol_value(elf: ElfFile, symbol: Symbol, image: BaseImage, addresses: dict[int, int]) -> int | None:
    where = f"symbol {symbol.index} {symbol.name!r}"
    if symbol.shndx == SHN_COMMON:
        raise _reject(elf, where, "is a common symbol; Xen's loader refuses SHN_COMMON")
    if symbol.is_undefined:
        try:
            return image.lookup(symbol.name, f"{elf.name}: {where}").value
        except XspliceError as error:
            raise PayloadRejected(error.message) from None
    if symbol.shndx == SHN_ABS:
        return symbol.value
    if symbol.shndx >= SHN_LORESERVE:
        raise _reject(elf, where, f"section index {symbol.shndx:#x} is reserved; not supported")
    if symbol.shndx not in addresses:
        return None
    return addresses[symbol.shndx] + symbol.value


def _relocate(linked: LinkedPayload, section: Section, values: dict[int, int | None]) -> None:
    elf = linked.elf
    data = linked.contents[section.index]
    for number, rela in enumerate(section.relocations):
        where = (f"section [{section.rela_section}] {elf.sections[section.rela_section].name}, relocation "
                 f"{number} at offset {rela.offset:#x} ({relocation_name(rela.type)})")
        value = _relocation_value(elf, rela, values, where)
        if rela.type == R_X86_64_NONE:
            continue
        if rela.type not in ACCEPTED_RELOCATIONS:
            raise _reject(elf, where, "is not a relocation Xen's x86 loader accepts "
                                      "(NONE, 64, PC32, PLT32)")
        width = 8 if rela.type == R_X86_64_64 else 4
        if rela.offset + width > section.size:
            raise _reject(elf, where, f"writes past section {section.name}")
        if rela.type == R_X86_64_64:
            struct.pack_into("<Q", data, rela.offset, value & (1 << 64) - 1)
            continue
        relative = value - (linked.addresses[section.index] + rela.offset)
        if not -(1 << 31) <= relative < 1 << 31:
            raise _reject(elf, where, f"overflows: target {value:#x} is out of rel32 reach of "
                                      f"{linked.addresses[section.index] + rela.offset:#x}")
        struct.pack_into("<i", data, rela.offset, relative)


def _relocation_value(elf: ElfFile, rela: Rela, values: dict[int, int | None], where: str) -> int:
    if rela.symbol == 0:
        raise _reject(elf, where, "names STN_UNDEF, which Xen's loader refuses")
    value = values[rela.symbol]
    if value is None:
        raise _reject(elf, where, f"is against symbol {elf.symbols[rela.symbol].name!r} of a section the "
                                  "loader ignores (not SHF_ALLOC)")
    return value + rela.addend


def _check_functions(linked: LinkedPayload, image: BaseImage, layout: FuncLayout) -> list[Function]:
    elf = linked.elf
    section = elf.section_named(".livepatch.funcs")
    if section.size % layout.size:
        raise _reject(elf, ".livepatch.funcs", f"size {section.size} is not a multiple of "
                                               f"struct livepatch_func ({layout.size} bytes)")
    data = linked.contents[section.index]
    return [_check_function(linked, image, layout, data, index * layout.size)
            for index in range(section.size // layout.size)]


def _check_function(linked: LinkedPayload, image: BaseImage, layout: FuncLayout, data: bytearray,
                    offset: int) -> Function:
    elf = linked.elf
    where = f".livepatch.funcs entry {offset // layout.size}"
    version = data[offset + layout.version_offset]
    if version != layout.version:
        raise _reject(elf, where, f"version {version}, the loader expects {layout.version}")
    (name_addr,) = struct.unpack_from("<Q", data, offset + layout.name)
    (new_addr, old_addr) = struct.unpack_from("<QQ", data, offset + layout.new_addr)
    (new_size,) = struct.unpack_from("<I", data, offset + layout.new_size)
    (old_size,) = struct.unpack_from("<I", data, offset + layout.old_size)
    if not old_size:
        raise _reject(elf, where, "old_size is zero")
    name = _string_at(linked, name_addr, where)
    where = f"{where} ({name})"
    try:
        symbol = image.lookup(name, f"{elf.name}: {where}")
    except XspliceError as error:
        raise PayloadRejected(error.message) from None
    old_addr = old_addr or symbol.value
    if (old_addr, old_size) != (symbol.value, symbol.size):
        raise _reject(elf, where, f"old_addr {old_addr:#x} / old_size {old_size} do not match the image "
                                  f"({symbol.value:#x}, {symbol.size} bytes)")
    patch_offset = len(ENDBR64) if image.read(old_addr, len(ENDBR64)) == ENDBR64 else 0
    if old_size < JUMP_SIZE + patch_offset:
        raise _reject(elf, where, f"old function is {old_size} bytes; the jump needs {JUMP_SIZE + patch_offset}")
    if not _in_text(linked, new_addr, new_size):
        raise _reject(elf, where, f"new_addr {new_addr:#x} ({new_size} bytes) is not inside the payload's text")
    if not -(1 << 31) <= new_addr - (old_addr + patch_offset + JUMP_SIZE) < 1 << 31:
        raise _reject(elf, where, "new code is out of jmp rel32 reach of the old function")
    return Function(name, old_addr, old_size, new_addr, new_size, patch_offset)


def _string_at(linked: LinkedPayload, address: int, where: str) -> str:
    for index, start in linked.addresses.items():
        section = linked.elf.sections[index]
        if start <= address < start + section.size and not section.is_text:
            data = linked.contents[index]
            end = data.find(b"\0", address - start)
            if end > address - start:
                return data[address - start:end].decode("utf-8", "replace")
    raise _reject(linked.elf, where, f"name at {address:#x} is not a string inside the payload")


def _in_text(linked: LinkedPayload, address: int, size: int) -> bool:
    return any(linked.elf.sections[index].is_text and start <= address and
               address + size <= start + linked.elf.sections[index].size
               for index, start in linked.addresses.items())


def _check_entry_sizes(elf: ElfFile, profile: TargetProfile) -> None:
    """Bug frames and the other tables the loader walks hold whole entries (Xen's section_ok)."""
    for special in profile.special_sections:
        for section in elf.sections_named(special.name):
            if special.entry_size and section.size % special.entry_size:
                raise _reject(elf, special.name, f"size {section.size} is not a multiple of its "
                                                 f"{special.entry_size}-byte entries")


def summary(linked: LinkedPayload, image: BaseImage, certificate: Path) -> str:
    functions = ", ".join(f"{f.name} ({f.old_size} -> {f.new_size} bytes)" for f in linked.functions)
    return (f"{linked.elf.name}: verified against {image.path} (build-id {image.build_id.hex()}): signature by "
            f"{certificate}, {len(linked.functions)} function(s) {functions}, {linked.relocations} relocations "
            f"resolved, payload build-id {linked.build_id.hex()}")
