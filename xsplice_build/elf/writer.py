"""Write a relocatable ELF64 x86-64 object (ET_REL) from plain values.

pyelftools only reads and LIEF cannot add sections to an ET_REL, so this writer is
ours: sections in the order given, local symbols before global ones (sh_info of
.symtab is the first global), one .rela section per relocated section, then .symtab,
.strtab and .shstrtab, then the section header table. The same inputs always give
the same bytes: no timestamps, no addresses, no dictionary-order surprises.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .constants import (
    ELFCLASS64,
    ELFDATA2LSB,
    ELFMAG,
    ELFOSABI_NONE,
    EM_X86_64,
    ET_REL,
    EV_CURRENT,
    SHF_INFO_LINK,
    SHN_ABS,
    SHN_UNDEF,
    SHT_NOBITS,
    SHT_RELA,
    SHT_STRTAB,
    SHT_SYMTAB,
    STB_LOCAL,
    STT_SECTION,
)
from .structs import EHDR, RELA, SHDR, SYM


@dataclass(eq=False)
class OutSection:
    name: str
    type: int
    flags: int
    data: bytes
    align: int = 1
    entsize: int = 0
    size: int | None = None  # only for SHT_NOBITS, which has no data
    relocations: list[OutRela] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.size if self.type == SHT_NOBITS and self.size is not None else len(self.data)


@dataclass(eq=False)
class OutSymbol:
    """A symbol; `section` None means undefined, unless `absolute` is set."""

    name: str
    type: int
    bind: int
    section: OutSection | None = None
    value: int = 0
    size: int = 0
    other: int = 0
    absolute: bool = False


@dataclass(eq=False)
class OutRela:
    offset: int
    type: int
    symbol: OutSymbol
    addend: int


class _StringTable:
    def __init__(self) -> None:
        self._data = bytearray(b"\0")
        self._offsets: dict[str, int] = {"": 0}

    def add(self, text: str) -> int:
        if text not in self._offsets:
            self._offsets[text] = len(self._data)
            self._data += text.encode("utf-8", "surrogateescape") + b"\0"
        return self._offsets[text]

    def bytes(self) -> bytes:
        return bytes(self._data)


def section_symbol(section: OutSection) -> OutSymbol:
    return OutSymbol(name="", type=STT_SECTION, bind=STB_LOCAL, section=section)


def symbol_order(symbols: list[OutSymbol]) -> list[OutSymbol]:
    """The order symbols take in .symtab (index 1 onwards): locals first, as the gABI requires."""
    return [s for s in symbols if s.bind == STB_LOCAL] + [s for s in symbols if s.bind != STB_LOCAL]


def write_relocatable(sections: list[OutSection], symbols: list[OutSymbol]) -> bytes:
    """Serialise `sections` and `symbols` into ET_REL bytes (symbols in symbol_order)."""
    ordered = symbol_order(symbols)
    symbol_index = {id(symbol): number for number, symbol in enumerate(ordered, start=1)}
    section_index = {id(section): number for number, section in enumerate(sections, start=1)}
    strtab, shstrtab = _StringTable(), _StringTable()

    headers: list[tuple[int, ...]] = [(0,) * 10]
    body = bytearray(EHDR.size)

    def place(data: bytes, align: int) -> int:
        body.extend(b"\0" * (-len(body) % max(align, 1)))
        offset = len(body)
        body.extend(data)
        return offset

    for section in sections:
        offset = place(b"" if section.type == SHT_NOBITS else section.data, section.align)
        headers.append((shstrtab.add(section.name), section.type, section.flags, 0, offset, section.length,
                        0, 0, section.align, section.entsize))

    symtab_number = len(sections) + sum(1 for s in sections if s.relocations) + 1
    for section in sections:
        if not section.relocations:
            continue
        data = b"".join(RELA.pack(r.offset, (symbol_index[id(r.symbol)] << 32) | r.type, _signed64(r.addend))
                        for r in section.relocations)
        offset = place(data, 8)
        headers.append((shstrtab.add(".rela" + section.name), SHT_RELA, SHF_INFO_LINK, 0, offset, len(data),
                        symtab_number, section_index[id(section)], 8, RELA.size))

    symtab = bytearray(SYM.size)
    for symbol in ordered:
        symtab += SYM.pack(strtab.add(symbol.name), (symbol.bind << 4) | symbol.type, symbol.other,
                           _shndx(symbol, section_index), symbol.value, symbol.size)
    first_global = 1 + sum(1 for s in ordered if s.bind == STB_LOCAL)
    offset = place(bytes(symtab), 8)
    headers.append((shstrtab.add(".symtab"), SHT_SYMTAB, 0, 0, offset, len(symtab), symtab_number + 1,
                    first_global, 8, SYM.size))
    strtab_bytes = strtab.bytes()
    offset = place(strtab_bytes, 1)
    headers.append((shstrtab.add(".strtab"), SHT_STRTAB, 0, 0, offset, len(strtab_bytes), 0, 0, 1, 0))
    shstrtab_name = shstrtab.add(".shstrtab")
    shstrtab_bytes = shstrtab.bytes()
    offset = place(shstrtab_bytes, 1)
    headers.append((shstrtab_name, SHT_STRTAB, 0, 0, offset, len(shstrtab_bytes), 0, 0, 1, 0))

    section_table = place(b"".join(SHDR.pack(*header) for header in headers), 8)
    ident = ELFMAG + bytes([ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_NONE]) + b"\0" * 8
    body[:EHDR.size] = EHDR.pack(ident, ET_REL, EM_X86_64, EV_CURRENT, 0, 0, section_table, 0, EHDR.size,
                                 0, 0, SHDR.size, len(headers), len(headers) - 1)
    return bytes(body)


def _shndx(symbol: OutSymbol, section_index: dict[int, int]) -> int:
    if symbol.absolute:
        return SHN_ABS
    if symbol.section is None:
        return SHN_UNDEF
    return section_index[id(symbol.section)]


def _signed64(addend: int) -> int:
    """An addend as r_addend holds it: the linker computes symbol + addend modulo 2**64, so a sum
    that left the signed range (a forged symbol value, say) wraps as it would there."""
    return (addend + (1 << 63)) % (1 << 64) - (1 << 63)
