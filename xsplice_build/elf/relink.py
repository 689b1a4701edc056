"""Turn a parsed relocatable object back into writer values, to extend it and write it again."""

from __future__ import annotations

from ..errors import ElfError
from .constants import SHT_NULL, SHT_RELA, SHT_STRTAB, SHT_SYMTAB
from .model import ElfFile
from .writer import OutRela, OutSection, OutSymbol


def to_output(elf: ElfFile) -> tuple[list[OutSection], list[OutSymbol]]:
    """Sections (without symbol, string and relocation tables) and symbols, relocations re-attached."""
    out_of: dict[int, OutSection] = {}
    for section in elf.sections[1:]:
        if section.type in (SHT_NULL, SHT_SYMTAB, SHT_STRTAB, SHT_RELA):
            continue
        out_of[section.index] = OutSection(section.name, section.type, section.flags, section.data, section.align,
                                           section.entsize, size=section.size)
    symbols: list[OutSymbol] = []
    by_index: dict[int, OutSymbol] = {}
    for symbol in elf.symbols[1:]:
        target = None
        if not symbol.is_undefined and not symbol.is_special_index:
            target = out_of.get(symbol.shndx)
            if target is None:
                raise ElfError(f"{elf.name}: symbol {symbol.name!r} lies in section {symbol.shndx}, which "
                               "cannot be carried")
        out = OutSymbol(symbol.name, symbol.type, symbol.bind, target, symbol.value, symbol.size, symbol.other,
                        absolute=symbol.is_absolute)
        by_index[symbol.index] = out
        symbols.append(out)
    for index, out in out_of.items():
        section = elf.sections[index]
        if any(r.symbol not in by_index for r in section.relocations):
            raise ElfError(f"{elf.name}: section [{index}] {section.name}: a relocation names symbol 0 (STN_UNDEF)")
        out.relocations = [OutRela(r.offset, r.type, by_index[r.symbol], r.addend) for r in section.relocations]
    return list(out_of.values()), symbols
