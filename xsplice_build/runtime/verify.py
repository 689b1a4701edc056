"""Offline payload verification: Xen's livepatch loader rules, checked against a base image.

`verify_payload` refuses what xen/common/livepatch.c, livepatch_elf.c and
xen/arch/x86/livepatch.c refuse (minixen's loader applies the same rules at run time):
the signature, the size and section-count limits, the build-id dependencies, ELF type
and machine, section flags (nothing writable and executable), the x86 relocation set
with Xen's bounds and overflow checks (computed at the address the loader would place
the payload), every undefined symbol resolving to exactly one symbol of the image,
each `struct livepatch_func` (version, old_addr/old_size as the image says, room for
the jump), the alternatives' bounds, and no new symbol shadowing one of the image.
Where Xen 4.17 trusts the payload and would crash or write into data (a table it reads
left unallocated, an entry naming a variable), verify and minixen refuse: docs/loader.md
lists each check and who makes it. The first broken rule ends the check with one line
naming the file, the structure and the rule.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from ..diff.profile import XEN_X86_64, TargetProfile
from ..elf.constants import (
    ET_REL,
    R_X86_64_64,
    R_X86_64_NONE,
    SHF_MERGE,
    SHN_ABS,
    SHN_COMMON,
    SHN_LORESERVE,
    relocation_name,
)
from ..elf.livepatch import (
    ALT_FEATURES,
    ALT_FLAG_NOT,
    ALT_INSTR,
    ALT_INSTRUCTIONS,
    ALT_MAX_PATCH_LEN,
    ALT_REPLACEMENT,
    BUILD_ID,
    DEPENDS,
    FUNCS,
    MAX_PAYLOAD_SIZE,
    MAX_SECTIONS,
    MODINFO,
    REQUIRED,
    XEN_4_17_FUNC,
    XEN_DEPENDS,
    FuncLayout,
    loader_reads,
)
from ..elf.model import ElfFile, Rela, Section, Symbol
from ..elf.notes import parse_build_id_note
from ..elf.reader import read_elf
from ..errors import PayloadRejected, XspliceError
from ..stages import sign
from ..target.image import BaseImage
from ..target.layout import apply_layout, baseline_layout, func_layout

SPECIAL_SECTIONS = (*REQUIRED, FUNCS)
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
# xen/arch/x86/include/asm/livepatch.h ARCH_LIVEPATCH_RANGE (livepatch_verify_distance).
LIVEPATCH_RANGE = 1 << 31


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
    text: tuple[int, int]  # the payload's text region: start, size (payload->text_addr, text_size)
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
    if len(unsigned) > MAX_PAYLOAD_SIZE:
        raise PayloadRejected(f"{name}: {len(unsigned)} bytes: Xen's loader takes at most {MAX_PAYLOAD_SIZE} "
                              "(LIVEPATCH_MAX_SIZE)")
    elf = read_elf(unsigned, name)
    _check_header(elf, unsigned)
    _check_special_sections(elf)
    depends, build_id = _check_dependencies(elf, running_build_id or image.build_id, image)
    addresses, text = _layout(elf, base)
    values = _resolve_symbols(elf, image, addresses)
    contents = {index: bytearray(elf.sections[index].data) for index in addresses}
    linked = LinkedPayload(elf=elf, build_id=build_id, depends=depends, addresses=addresses, contents=contents,
                           text=text)
    for section in elf.sections:
        if section.relocations and section.index in addresses:
            _relocate(linked, section, values)
            linked.relocations += len(section.relocations)
    linked.functions = _check_functions(linked, image, layout, profile)
    _check_entry_sizes(elf, profile)
    _check_alternatives(linked)
    _check_modinfo(elf)
    _check_new_symbols(linked, image, values)
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
        if section.is_alloc and section.is_nobits and section.size > MAX_PAYLOAD_SIZE:
            raise _reject(elf, f"section [{section.index}] {section.name}",
                          f"{section.size} bytes of NOBITS; Xen's loader takes at most {MAX_PAYLOAD_SIZE}")
        if loader_reads(section.name) and (not section.is_alloc or section.is_nobits):
            # Xen 4.17 would take the table at load address NULL (unallocated) or read zeroes:
            # a crash at the first lookup. Refused, as minixen does.
            raise _reject(elf, f"section [{section.index}] {section.name}",
                          "the loader reads this table: it must be allocated, with contents "
                          "(SHF_ALLOC, not SHT_NOBITS)")


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
    for name in REQUIRED:
        notes[name] = parse_build_id_note(elf.section_named(name).data, f"{elf.name}: {name}")
    if notes[XEN_DEPENDS] == running and notes[DEPENDS] != running:
        raise _reject(elf, DEPENDS, f"goes on top of another payload (build-id {notes[DEPENDS].hex()}); this "
                                    "check links a payload against the image alone: prove a stacked payload on "
                                    "a running image (xen-xsplice prove)")
    for name in (XEN_DEPENDS, DEPENDS):
        if notes[name] != running:
            raise _reject(elf, name, f"build-id {notes[name].hex()} is not the image's "
                                     f"({image.path.name}: {running.hex()}); built for another image")
    return notes[DEPENDS], notes[BUILD_ID]


def _layout(elf: ElfFile, base: int) -> tuple[dict[int, int], tuple[int, int]]:
    """Where the loader puts each allocated section (text, then rw, then ro, each region page aligned),
    and the text region's start and size."""
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
    return addresses, (base, sizes["text"])


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
        if rela.type not in XEN_X86_64.accepted_relocations:
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


def _check_functions(linked: LinkedPayload, image: BaseImage, layout: FuncLayout,
                     profile: TargetProfile) -> list[Function]:
    elf = linked.elf
    section = elf.section_named(FUNCS)
    if section.size % layout.size:
        raise _reject(elf, FUNCS, f"size {section.size} is not a multiple of "
                                  f"struct livepatch_func ({layout.size} bytes)")
    data = linked.contents[section.index]
    return [_check_function(linked, image, layout, profile, data, index * layout.size)
            for index in range(section.size // layout.size)]


def _check_function(linked: LinkedPayload, image: BaseImage, layout: FuncLayout, profile: TargetProfile,
                    data: bytearray, offset: int) -> Function:
    elf = linked.elf
    where = f"{FUNCS} entry {offset // layout.size}"
    entry = layout.unpack(data, offset)
    if entry.version != layout.version:
        raise _reject(elf, where, f"version {entry.version}, the loader expects {layout.version}")
    if not entry.old_size:
        raise _reject(elf, where, "old_size is zero")
    name = _string_at(linked, entry.name, where)
    where = f"{where} ({name})"
    try:
        symbol = image.lookup(name, f"{elf.name}: {where}")
    except XspliceError as error:
        raise PayloadRejected(error.message) from None
    old_addr = entry.old_addr or symbol.value
    if (old_addr, entry.old_size) != (symbol.value, symbol.size):
        raise _reject(elf, where, f"old_addr {old_addr:#x} / old_size {entry.old_size} do not match the image "
                                  f"({symbol.value:#x}, {symbol.size} bytes)")
    holder = image.elf.symbol_section(symbol)
    if not symbol.is_function or holder is None or not holder.is_text:
        # Xen 4.17 would write the jump wherever old_addr points: into data, or its own state.
        raise _reject(elf, where, f"is not a function in the image's text ({holder.name if holder else 'no section'})"
                                  "; only code can be patched")
    if profile.is_init_section(holder.name) or _in_init_text(image, symbol.value):
        # Freed after boot: Xen 4.17 faults reading its first bytes (arch_livepatch_verify_func).
        raise _reject(elf, where, f"is init code ({holder.name}), freed after boot; it cannot be patched")
    patch_offset, needed = profile.jump_room(image.read(old_addr, min(entry.old_size, profile.endbr_size)))
    if entry.old_size < needed:
        raise _reject(elf, where, f"old function is {entry.old_size} bytes; the jump needs {needed}")
    if not entry.new_addr:
        raise _reject(elf, where, "new_addr is 0 (NOP patching is not made by this tool)")
    if not _in_text(linked, entry.new_addr, entry.new_size):
        raise _reject(elf, where, f"new_addr {entry.new_addr:#x} ({entry.new_size} bytes) is not inside the "
                                  "payload's text")
    if not -LIVEPATCH_RANGE <= old_addr - entry.new_addr < LIVEPATCH_RANGE or \
            not -(1 << 31) <= entry.new_addr - (old_addr + patch_offset + profile.jump_size) < 1 << 31:
        raise _reject(elf, where, "new code is out of jmp rel32 reach of the old function")
    return Function(name, old_addr, entry.old_size, entry.new_addr, entry.new_size, patch_offset)


def _in_init_text(image: BaseImage, address: int) -> bool:
    """Inside the image's init text, where a linker script merged it into .text (_sinittext.._einittext)."""
    start, end = image.by_name.get("_sinittext", []), image.by_name.get("_einittext", [])
    return len(start) == len(end) == 1 and start[0].value <= address < end[0].value


def _string_at(linked: LinkedPayload, address: int, where: str) -> str:
    """A name the entry points at: a string of the payload's read-only data (as minixen requires)."""
    for index, start in linked.addresses.items():
        section = linked.elf.sections[index]
        if start <= address < start + section.size and not section.is_text and not section.is_writable:
            data = linked.contents[index]
            end = data.find(b"\0", address - start)
            if end > address - start:
                return data[address - start:end].decode("utf-8", "replace")
    raise _reject(linked.elf, where, f"name at {address:#x} is not a string inside the payload's read-only data")


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


def _check_alternatives(linked: LinkedPayload) -> None:
    """prepare_payload's checks: each entry's original inside the payload's text, and its replacement
    inside the first section named .altinstr_replacement (the one the loader finds by name)."""
    elf = linked.elf
    table = elf.section_named(ALT_INSTRUCTIONS)
    if table is None or not table.size:
        return
    if table.size % ALT_INSTR.size:
        raise _reject(elf, ALT_INSTRUCTIONS, f"size {table.size} is not a multiple of struct alt_instr "
                                             f"({ALT_INSTR.size} bytes)")
    text_start, text_size = linked.text
    if not text_size:
        raise _reject(elf, ALT_INSTRUCTIONS, "alternatives provided, but no text")
    replacement = elf.section_named(ALT_REPLACEMENT)
    if replacement is None:
        raise _reject(elf, ALT_INSTRUCTIONS, f"provided, but no {ALT_REPLACEMENT}")
    repl_start = linked.addresses[replacement.index]
    data, base = linked.contents[table.index], linked.addresses[table.index]
    for offset in range(0, table.size, ALT_INSTR.size):
        orig_offset, repl_offset, cpuid, orig_len, repl_len, pad_len, _priv = ALT_INSTR.unpack_from(data, offset)
        orig, repl = base + offset + orig_offset, base + offset + 4 + repl_offset
        where = f"{ALT_INSTRUCTIONS} entry {offset // ALT_INSTR.size}"
        # Xen 4.17 would BUG() (crash) applying these: refused, as minixen does.
        if repl_len > orig_len + pad_len or orig_len + pad_len > ALT_MAX_PATCH_LEN or \
                cpuid & ~ALT_FLAG_NOT >= ALT_FEATURES:
            raise _reject(elf, where, f"replacement {repl_len} bytes for a site of {orig_len}+{pad_len}, feature "
                                      f"{cpuid & ~ALT_FLAG_NOT}: Xen's _apply_alternatives would BUG() on it")
        if not (text_start <= orig and orig + orig_len <= text_start + text_size):
            raise _reject(elf, where, f"original {orig:#x}+{orig_len:#x} outside the payload text "
                                      f"{text_start:#x}+{text_size:#x}")
        if not (repl_start <= repl and repl + repl_len <= repl_start + replacement.size):
            raise _reject(elf, where, f"replacement {repl:#x}+{repl_len:#x} outside {ALT_REPLACEMENT} "
                                      f"[{replacement.index}] {repl_start:#x}+{replacement.size:#x} (the first "
                                      "of that name, the one Xen's loader checks against)")


def _check_modinfo(elf: ElfFile) -> None:
    section = elf.section_named(MODINFO)
    if section is not None and section.size and section.data[-1:] != b"\0":
        raise _reject(elf, MODINFO, "the metadata must be NUL-terminated strings")


def _check_new_symbols(linked: LinkedPayload, image: BaseImage, values: dict[int, int | None]) -> None:
    """build_symbol_table: a named payload symbol that is not a function's new code must not share a
    name with a symbol of the image (Xen: "duplicate new symbol", EEXIST)."""
    elf = linked.elf
    replacing = {function.new_addr for function in linked.functions}
    for symbol in elf.symbols[1:]:
        section = elf.symbol_section(symbol)
        if section is None or not section.is_alloc or not symbol.name or symbol.is_section or symbol.is_file:
            continue
        if section.flags & SHF_MERGE and symbol.name.startswith(".L"):
            continue
        if values.get(symbol.index) in replacing:
            continue
        if symbol.name in image.by_name:
            raise _reject(elf, f"symbol {symbol.index} {symbol.name!r}", "duplicate new symbol: the image has "
                                                                         "one of that name")


def summary(linked: LinkedPayload, image: BaseImage, certificate: Path) -> str:
    functions = ", ".join(f"{f.name} ({f.old_size} -> {f.new_size} bytes)" for f in linked.functions)
    return (f"{linked.elf.name}: verified against {image.path} (build-id {image.build_id.hex()}): signature by "
            f"{certificate}, {len(linked.functions)} function(s) {functions}, {linked.relocations} relocations "
            f"resolved, payload build-id {linked.build_id.hex()}")
