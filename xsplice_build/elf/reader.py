"""Read an ELF64 x86-64 file into the model, treating every byte as hostile.

Each field that locates or sizes something is checked against the file before use,
so a truncated or forged file is refused in one line (ElfError naming the file and
the structure at fault) rather than raising deep inside Python or allocating what a
size field claims. Memory use is bounded by the file's own size.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from ..errors import ElfError
from ..files import ELF_LIMIT, read_input
from .constants import (
    ELFCLASS64,
    ELFDATA2LSB,
    ELFMAG,
    EM_X86_64,
    ET_NAMES,
    ET_REL,
    EV_CURRENT,
    RELOCATION_WIDTH,
    SHF_ALLOC,
    SHF_COMPRESSED,
    SHF_EXECINSTR,
    SHN_LORESERVE,
    SHN_UNDEF,
    SHN_XINDEX,
    SHT_FINI_ARRAY,
    SHT_INIT_ARRAY,
    SHT_NOBITS,
    SHT_NOTE,
    SHT_NULL,
    SHT_PREINIT_ARRAY,
    SHT_PROGBITS,
    SHT_REL,
    SHT_RELA,
    SHT_STRTAB,
    SHT_SYMTAB,
    SHT_X86_64_UNWIND,
    STB_LOCAL,
    STT_FILE,
    STT_FUNC,
    STT_OBJECT,
)
from .model import ElfFile, Rela, Section, Symbol
from .structs import EHDR, PHDR, RELA, SHDR, SYM

MAX_SECTIONS = 1 << 16
# Padding to an alignment is memory the writer and the loader spend: a forged sh_addralign must
# not ask for more than this.
MAX_ALIGNMENT = 1 << 21
# The section types whose bytes are code or data a relocation may patch (gABI, x86-64 psABI). A
# relocation section naming any other (itself, the symbol table, a string table) would be read as
# applying nowhere, and its relocations silently lost.
RELOCATABLE_TYPES = {SHT_PROGBITS: "SHT_PROGBITS", SHT_NOTE: "SHT_NOTE", SHT_INIT_ARRAY: "SHT_INIT_ARRAY",
                     SHT_FINI_ARRAY: "SHT_FINI_ARRAY", SHT_PREINIT_ARRAY: "SHT_PREINIT_ARRAY",
                     SHT_X86_64_UNWIND: "SHT_X86_64_UNWIND"}
# What an allocated section of an object may be: the above, or zero-initialised (.bss).
ALLOCATED_TYPES = {**RELOCATABLE_TYPES, SHT_NOBITS: "SHT_NOBITS"}


def read_elf_file(path: Path | str, label: str | None = None) -> ElfFile:
    data = read_input(Path(path), "ELF file", ELF_LIMIT)
    return read_elf(data, label or str(path))


def check_relocatable(elf: ElfFile) -> None:
    """What the diff assumes of an object (.o), beyond what any ELF file must be: a relocatable file whose
    allocated sections are of types it knows, and whose functions and variables lie inside their sections."""
    if elf.kind != ET_REL:
        raise ElfError(f"{elf.name}: e_type {elf.kind} ({ET_NAMES.get(elf.kind, 'unknown')}) is not ET_REL: the "
                       "diff takes relocatable objects (.o), not linked images")
    for section in elf.sections[1:]:
        if (section.flags & (SHF_ALLOC | SHF_EXECINSTR)) and section.type not in ALLOCATED_TYPES:
            raise ElfError(f"{elf.name}: section [{section.index}] {section.name}: type {section.type:#x} is not "
                           f"one an allocated section may have ({', '.join(ALLOCATED_TYPES.values())}); it "
                           "would be taken for code or data")
    for symbol in elf.symbols:
        if symbol.type not in (STT_FUNC, STT_OBJECT) or not 0 < symbol.shndx < len(elf.sections):
            continue
        section = elf.sections[symbol.shndx]
        if symbol.value > section.size or symbol.size > section.size - symbol.value:
            raise ElfError(f"{elf.name}: symbol {symbol.index} {symbol.name!r}: {symbol.value:#x}+{symbol.size:#x} "
                           f"lies outside section [{section.index}] {section.name} ({section.size:#x} bytes)")


def read_elf(data: bytes, name: str) -> ElfFile:
    """Parse `data`; `name` is what error messages call the file."""
    header = _header(data, name)
    kind, machine, entry, phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx = header
    raw_sections = _section_headers(data, name, shoff, shentsize, shnum)
    names = _section_names(data, name, raw_sections, shstrndx)
    sections = [_section(data, name, index, raw, names[index]) for index, raw in enumerate(raw_sections)]
    _check_links(name, sections)
    _check_overlaps(name, sections, [(0, EHDR.size, "the ELF header"),
                                     (shoff, shoff + shnum * SHDR.size, "the section header table"),
                                     (phoff, phoff + phnum * PHDR.size, "the program header table")])
    symtab_index = _find_symtab(name, sections)
    symbols = _symbols(name, sections, symtab_index) if symtab_index is not None else []
    _attach_relocations(name, sections, symbols, symtab_index)
    return ElfFile(name=name, kind=kind, machine=machine, entry=entry, sections=sections, symbols=symbols,
                   symtab_index=symtab_index, program_headers=_program_headers(data, name, phoff, phentsize, phnum))


def _header(data: bytes, name: str) -> tuple[int, ...]:
    if len(data) < 4 or data[:4] != ELFMAG:
        raise ElfError(f"{name}: not an ELF file (no \\x7fELF magic)")
    if len(data) < EHDR.size:
        raise ElfError(f"{name}: truncated ELF header ({len(data)} bytes, need {EHDR.size})")
    (ident, kind, machine, version, entry, phoff, shoff, _flags, _ehsize, phentsize, phnum, shentsize,
     shnum, shstrndx) = EHDR.unpack_from(data)
    if ident[4] != ELFCLASS64:
        raise ElfError(f"{name}: ELF class {ident[4]} is not ELFCLASS64; only 64-bit x86-64 files are supported")
    if ident[5] != ELFDATA2LSB:
        raise ElfError(f"{name}: ELF data encoding {ident[5]} is not little-endian; only x86-64 is supported")
    if ident[6] != EV_CURRENT or version != EV_CURRENT:
        raise ElfError(f"{name}: ELF version {version} is not EV_CURRENT")
    if machine != EM_X86_64:
        raise ElfError(f"{name}: e_machine {machine} is not EM_X86_64 ({EM_X86_64})")
    if shnum == 0 and shoff != 0:
        raise ElfError(f"{name}: e_shnum is 0 with a section table (extended section numbering is not supported)")
    if shstrndx == SHN_XINDEX:
        raise ElfError(f"{name}: e_shstrndx is SHN_XINDEX (extended section numbering is not supported)")
    return kind, machine, entry, phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx


def _section_headers(data: bytes, name: str, shoff: int, shentsize: int,
                     shnum: int) -> list[tuple[int, ...]]:
    if shnum == 0:
        raise ElfError(f"{name}: no section headers (e_shnum is 0)")
    if shentsize != SHDR.size:
        raise ElfError(f"{name}: e_shentsize {shentsize} is not {SHDR.size}")
    if shoff < EHDR.size or shoff + shnum * SHDR.size > len(data):
        raise ElfError(f"{name}: section header table at {shoff:#x} ({shnum} entries) lies outside the "
                       f"file ({len(data)} bytes)")
    return [SHDR.unpack_from(data, shoff + i * SHDR.size) for i in range(shnum)]


def _section_names(data: bytes, name: str, raw_sections: list[tuple[int, ...]], shstrndx: int) -> list[str]:
    if shstrndx == SHN_UNDEF or shstrndx >= len(raw_sections):
        raise ElfError(f"{name}: e_shstrndx {shstrndx} is not a section (there are {len(raw_sections)})")
    _, kind, _, _, offset, size, *_ = raw_sections[shstrndx]
    if kind != SHT_STRTAB:
        raise ElfError(f"{name}: section [{shstrndx}] named by e_shstrndx is not a string table")
    table = _slice(data, name, f"section [{shstrndx}] (.shstrtab)", offset, size)
    _check_strtab(name, f"section [{shstrndx}] (.shstrtab)", table)
    return [_string(name, table, raw[0], f"name of section [{index}]")
            for index, raw in enumerate(raw_sections)]


def _section(data: bytes, name: str, index: int, raw: tuple[int, ...], section_name: str) -> Section:
    _, kind, flags, addr, offset, size, link, info, align, entsize = raw
    label = f"section [{index}] {section_name}"
    empty = index == 0 or kind in (SHT_NOBITS, SHT_NULL)
    contents = b"" if empty else _slice(data, name, label, offset, size)
    if align & (align - 1):
        raise ElfError(f"{name}: {label}: alignment {align:#x} is not a power of two")
    if flags & SHF_COMPRESSED and flags & SHF_ALLOC:
        raise ElfError(f"{name}: {label}: SHF_COMPRESSED on an allocated section (the gABI forbids it: its "
                       "bytes would be taken for code or data while compressed)")
    if align > MAX_ALIGNMENT:
        raise ElfError(f"{name}: {label}: alignment {align:#x} is larger than {MAX_ALIGNMENT:#x} (2 MiB, a "
                       "superpage), the most any section of Xen or a payload asks for")
    return Section(index=index, name=section_name, type=kind, flags=flags, addr=addr, offset=offset,
                   size=size, link=link, info=info, align=align, entsize=entsize, data=contents)


def _check_links(name: str, sections: list[Section]) -> None:
    for section in sections:
        if section.link >= len(sections):
            raise ElfError(f"{name}: section [{section.index}] {section.name}: sh_link {section.link} is past "
                           f"the {len(sections)} sections")


def _check_overlaps(name: str, sections: list[Section], headers: list[tuple[int, int, str]]) -> None:
    """Two sections, or a section and a header, sharing file bytes is how a forged file makes one thing
    mean two (a section over the ELF header would be code made of e_type and e_shoff)."""
    spans = [(s.offset, s.offset + s.size, f"section [{s.index}] {s.name}") for s in sections[1:]
             if not s.is_nobits and s.size and s.type != SHT_NULL]
    spans.extend(span for span in headers if span[1] > span[0])
    # Sorted by position only: two spans at the same place are compared by nothing else.
    spans.sort(key=lambda span: (span[0], span[1]))
    for (start_a, end_a, what_a), (start_b, _end_b, what_b) in itertools.pairwise(spans):
        if start_b < end_a:
            raise ElfError(f"{name}: {what_b} at {start_b:#x} overlaps {what_a} ({start_a:#x}-{end_a:#x})")


def _find_symtab(name: str, sections: list[Section]) -> int | None:
    tables = [s.index for s in sections if s.type == SHT_SYMTAB]
    if len(tables) > 1:
        raise ElfError(f"{name}: {len(tables)} symbol tables (sections {tables}); expected one")
    return tables[0] if tables else None


def _symbols(name: str, sections: list[Section], symtab_index: int) -> list[Symbol]:
    symtab = sections[symtab_index]
    label = f"section [{symtab_index}] {symtab.name}"
    if symtab.entsize != SYM.size or symtab.size % SYM.size:
        raise ElfError(f"{name}: {label}: entry size {symtab.entsize} / size {symtab.size} "
                       f"do not describe {SYM.size}-byte symbols")
    if not 0 < symtab.link < len(sections) or sections[symtab.link].type != SHT_STRTAB:
        raise ElfError(f"{name}: {label}: sh_link {symtab.link} is not a string table")
    strtab = sections[symtab.link].data
    _check_strtab(name, f"section [{symtab.link}] {sections[symtab.link].name}", strtab)
    symbols: list[Symbol] = []
    current_file: str | None = None
    for index, (st_name, info, other, shndx, value, size) in enumerate(SYM.iter_unpack(symtab.data)):
        symbol_name = _string(name, strtab, st_name, f"name of symbol {index}")
        if shndx == SHN_XINDEX:
            raise ElfError(f"{name}: symbol {index} {symbol_name!r}: SHN_XINDEX is not supported")
        if shndx != SHN_UNDEF and shndx < SHN_LORESERVE and shndx >= len(sections):
            raise ElfError(f"{name}: symbol {index} {symbol_name!r}: section index {shndx} is past the "
                           f"{len(sections)} sections")
        kind, bind = info & 0xF, info >> 4
        if kind == STT_FILE:
            current_file = symbol_name or None
        symbols.append(Symbol(index=index, name=symbol_name, value=value, size=size, type=kind, bind=bind,
                              other=other, shndx=shndx, file=current_file if bind == STB_LOCAL else None))
    return symbols


def _attach_relocations(name: str, sections: list[Section], symbols: list[Symbol],
                        symtab_index: int | None) -> None:
    for rela in sections:
        if rela.type == SHT_REL:
            raise ElfError(f"{name}: section [{rela.index}] {rela.name}: SHT_REL relocations are not "
                           "supported on x86-64 (expected SHT_RELA)")
        if rela.type != SHT_RELA:
            continue
        label = f"section [{rela.index}] {rela.name}"
        if rela.entsize != RELA.size or rela.size % RELA.size:
            raise ElfError(f"{name}: {label}: entry size {rela.entsize} / size {rela.size} do not "
                           f"describe {RELA.size}-byte relocations")
        if rela.link != symtab_index or symtab_index is None:
            raise ElfError(f"{name}: {label}: sh_link {rela.link} is not the symbol table")
        if not 0 < rela.info < len(sections):
            raise ElfError(f"{name}: {label}: sh_info {rela.info} names no section")
        target = sections[rela.info]
        if len(target.data) != target.size:
            raise ElfError(f"{name}: {label}: relocates section [{target.index}] {target.name}, which holds no "
                           f"bytes in the file (type {target.type}: SHT_NOBITS or SHT_NULL)")
        if target is rela or target.type not in RELOCATABLE_TYPES:
            what = "itself" if target is rela else f"section [{target.index}] {target.name} of type {target.type}"
            raise ElfError(f"{name}: {label}: sh_info {rela.info} names {what}, which relocations cannot apply "
                           f"to (only {', '.join(RELOCATABLE_TYPES.values())})")
        if target.rela_section is not None:
            raise ElfError(f"{name}: {label}: section [{target.index}] {target.name} already has "
                           f"relocations in section [{target.rela_section}]")
        target.rela_section = rela.index
        target.relocations = _relocations(name, label, rela.data, target, len(symbols))


def _relocations(name: str, label: str, data: bytes, target: Section, symbol_count: int) -> list[Rela]:
    relocations = []
    limit = target.size
    for number, (offset, info, addend) in enumerate(RELA.iter_unpack(data)):
        symbol, kind = info >> 32, info & 0xFFFFFFFF
        if symbol >= symbol_count:
            raise ElfError(f"{name}: {label}: relocation {number} names symbol {symbol}, past the "
                           f"{symbol_count} symbols")
        width = RELOCATION_WIDTH.get(kind, 1)
        if offset + width > limit:
            raise ElfError(f"{name}: {label}: relocation {number} at offset {offset:#x} lies outside "
                           f"section [{target.index}] {target.name} ({limit:#x} bytes)")
        relocations.append(Rela(offset, kind, symbol, addend))
    return relocations


def _program_headers(data: bytes, name: str, phoff: int, phentsize: int,
                     phnum: int) -> list[tuple[int, int, int, int, int, int, int, int]]:
    if phnum == 0:
        return []
    if phentsize != PHDR.size or phoff + phnum * PHDR.size > len(data):
        raise ElfError(f"{name}: program header table at {phoff:#x} ({phnum} entries) lies outside the file")
    return [PHDR.unpack_from(data, phoff + i * PHDR.size) for i in range(phnum)]


def _slice(data: bytes, name: str, label: str, offset: int, size: int) -> bytes:
    if offset > len(data) or size > len(data) - offset:
        raise ElfError(f"{name}: {label}: data at {offset:#x}+{size:#x} lies past the end of the file "
                       f"({len(data)} bytes)")
    return data[offset:offset + size]


def _check_strtab(name: str, label: str, table: bytes) -> None:
    if not table or table[0] != 0 or table[-1] != 0:
        raise ElfError(f"{name}: {label}: a string table must start and end with a NUL byte")


def _string(name: str, table: bytes, offset: int, what: str) -> str:
    if offset >= len(table):
        raise ElfError(f"{name}: {what}: offset {offset} is past its string table ({len(table)} bytes)")
    end = table.index(b"\0", offset)  # the table ends with NUL, so this always finds one
    return table[offset:end].decode("utf-8", "surrogateescape")
