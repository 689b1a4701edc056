"""The in-memory ELF model: sections, symbols and relocations, with the predicates passes ask."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from .constants import (
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_WRITE,
    SHN_ABS,
    SHN_LORESERVE,
    SHN_UNDEF,
    SHT_NOBITS,
    STB_LOCAL,
    STT_FILE,
    STT_FUNC,
    STT_OBJECT,
    STT_SECTION,
)


@dataclass(slots=True)
class Rela:
    """One RELA entry; `symbol` is an index into the file's symbol table."""

    offset: int
    type: int
    symbol: int
    addend: int


@dataclass(slots=True, eq=False)
class Section:
    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    align: int
    entsize: int
    data: bytes
    # Relocations that apply to this section (from the SHT_RELA section whose sh_info names it).
    relocations: list[Rela] = field(default_factory=list)
    rela_section: int | None = None

    @property
    def is_alloc(self) -> bool:
        return bool(self.flags & SHF_ALLOC)

    @property
    def is_text(self) -> bool:
        return bool(self.flags & SHF_EXECINSTR)

    @property
    def is_writable(self) -> bool:
        return bool(self.flags & SHF_WRITE)

    @property
    def is_nobits(self) -> bool:
        return self.type == SHT_NOBITS


@dataclass(slots=True, eq=False)
class Symbol:
    index: int
    name: str
    value: int
    size: int
    type: int
    bind: int
    other: int
    shndx: int
    # The STT_FILE symbol in force where a local symbol stands: Xen names statics "file#name".
    file: str | None = None

    @property
    def is_undefined(self) -> bool:
        return self.shndx == SHN_UNDEF

    @property
    def is_special_index(self) -> bool:
        return self.shndx >= SHN_LORESERVE

    @property
    def is_absolute(self) -> bool:
        return self.shndx == SHN_ABS

    @property
    def is_local(self) -> bool:
        return self.bind == STB_LOCAL

    @property
    def is_function(self) -> bool:
        return self.type == STT_FUNC

    @property
    def is_object(self) -> bool:
        return self.type == STT_OBJECT

    @property
    def is_section(self) -> bool:
        return self.type == STT_SECTION

    @property
    def is_file(self) -> bool:
        return self.type == STT_FILE

    @property
    def xen_name(self) -> str:
        """The name Xen's symbol table gives this symbol: "file#name" for a static."""
        return f"{self.file}#{self.name}" if self.is_local and self.file else self.name


@dataclass(eq=False)
class ElfFile:
    """A parsed ELF file: `name` is how errors refer to it (usually its path)."""

    name: str
    kind: int
    machine: int
    entry: int
    sections: list[Section]
    symbols: list[Symbol]
    symtab_index: int | None
    program_headers: list[tuple[int, int, int, int, int, int, int, int]] = field(default_factory=list)
    _by_section: dict[int, list[Symbol]] | None = field(default=None, repr=False)
    _extents: dict[int, list[Symbol]] = field(default_factory=dict, repr=False)

    def section_named(self, name: str) -> Section | None:
        for section in self.sections:
            if section.name == name:
                return section
        return None

    def sections_named(self, name: str) -> list[Section]:
        return [section for section in self.sections if section.name == name]

    def symbol_section(self, symbol: Symbol) -> Section | None:
        if symbol.is_undefined or symbol.is_special_index:
            return None
        return self.sections[symbol.shndx]

    def symbols_in(self, section_index: int) -> list[Symbol]:
        """The symbols defined in a section, in symbol-table order (indexed once per file)."""
        if self._by_section is None:
            index: dict[int, list[Symbol]] = {}
            for symbol in self.symbols[1:]:
                if not symbol.is_undefined and not symbol.is_special_index:
                    index.setdefault(symbol.shndx, []).append(symbol)
            self._by_section = index
        return self._by_section.get(section_index, [])

    def variables_in(self, section_index: int) -> list[Symbol]:
        """The named objects and functions of a section (what its bytes are), by offset."""
        if section_index not in self._extents:
            self._extents[section_index] = sorted(
                (s for s in self.symbols_in(section_index)
                 if (s.is_object or s.is_function) and s.name and not s.name.startswith(".L")),
                key=lambda s: (s.value, -s.size, s.index))
        return self._extents[section_index]

    def symbol_containing(self, section_index: int, offset: int) -> Symbol | None:
        """The named object or function whose bytes hold `offset` of the section, if one does."""
        symbols = self.variables_in(section_index)
        # The last symbol starting at or before `offset` (the largest of those at one address first).
        position = bisect.bisect_right(symbols, offset, key=lambda s: s.value)
        for symbol in reversed(symbols[max(0, position - 4):position]):
            if offset < symbol.value + max(symbol.size, 1):
                return symbol
        return None

    def defined_symbols(self) -> list[Symbol]:
        return [s for s in self.symbols[1:] if not s.is_undefined and not s.is_special_index and s.name]
