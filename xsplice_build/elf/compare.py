"""Compare two ELF files section by section and symbol by symbol, for reproducibility audits.

An audit that only says "the hashes differ" leaves a reviewer guessing. This names each
difference where it lies (a section's header or bytes, the symbols covering the changed
bytes, a relocation, a symbol's value) and sorts the whole into a likely cause: a build
path that leaked into the bytes, a compiler that drifted (.comment, a different
toolchain lock), or a real difference in the code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import ElfError
from .model import ElfFile, Rela, Section, Symbol
from .reader import read_elf

# An absolute path in section bytes: what -ffile-prefix-map exists to keep out.
_PATH_RE = re.compile(rb"/(?:[A-Za-z0-9._+-]+/)+[A-Za-z0-9._+-]*")
_SHOWN = 5  # differences listed per section before "and N more"

PATH_LEAK = "path leak"
TOOLCHAIN_DRIFT = "toolchain drift"
REAL_DIFFERENCE = "real difference"


@dataclass
class Comparison:
    """What differs between `expected` and `actual`; empty when their ELF contents are the same."""

    differences: list[str] = field(default_factory=list)
    leaked_paths: list[str] = field(default_factory=list)
    toolchain_sections: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.differences

    @property
    def cause(self) -> str:
        if self.leaked_paths:
            return PATH_LEAK
        if self.toolchain_sections:
            return TOOLCHAIN_DRIFT
        return REAL_DIFFERENCE


def compare_elf(expected: bytes, actual: bytes, expected_name: str = "expected",
                actual_name: str = "actual") -> Comparison:
    """Every difference between two ELF files, in file order; refuses malformed input in one line."""
    comparison = Comparison()
    if expected == actual:
        return comparison
    try:
        old, new = read_elf(expected, expected_name), read_elf(actual, actual_name)
    except ElfError as error:
        comparison.differences.append(f"not comparable as ELF: {error.message}")
        return comparison
    _compare_header(old, new, comparison)
    _compare_sections(old, new, comparison)
    _compare_symbols(old, new, comparison)
    if not comparison.differences:
        comparison.differences.append(f"same sections and symbols, but the files differ in layout "
                                      f"({len(expected)} vs {len(actual)} bytes): section offsets or padding")
    return comparison


def _compare_header(old: ElfFile, new: ElfFile, comparison: Comparison) -> None:
    for what in ("kind", "machine", "entry"):
        if getattr(old, what) != getattr(new, what):
            comparison.differences.append(f"ELF header: e_{what if what != 'kind' else 'type'} "
                                          f"{getattr(old, what):#x} vs {getattr(new, what):#x}")


def _keyed_sections(elf: ElfFile) -> dict[str, Section]:
    """Sections by name, with a #N suffix for repeated names so each is compared with its counterpart."""
    keyed: dict[str, Section] = {}
    for section in elf.sections[1:]:
        key, count = section.name, 1
        while key in keyed:
            count += 1
            key = f"{section.name}#{count}"
        keyed[key] = section
    return keyed


def _compare_sections(old: ElfFile, new: ElfFile, comparison: Comparison) -> None:
    before, after = _keyed_sections(old), _keyed_sections(new)
    for name in before.keys() - after.keys():
        comparison.differences.append(f"section {name}: only in {old.name}")
    for name in after.keys() - before.keys():
        comparison.differences.append(f"section {name}: only in {new.name}")
    for name in [key for key in before if key in after]:
        _compare_section(name, before[name], after[name], old, new, comparison)


def _compare_section(name: str, a: Section, b: Section, old: ElfFile, new: ElfFile, comparison: Comparison) -> None:
    headers = [f"{what} {getattr(a, what):#x} vs {getattr(b, what):#x}"
               for what in ("type", "flags", "align", "entsize", "size") if getattr(a, what) != getattr(b, what)]
    if headers:
        comparison.differences.append(f"section {name}: header differs: {', '.join(headers)}")
    if a.data != b.data and a.type not in _TABLES:
        comparison.differences.append(f"section {name}: {_bytes_difference(a, b, old, new)}")
        _note_paths(name, a.data, b.data, old, new, comparison)
        if name == ".comment":  # gcc and as write their versions here
            comparison.toolchain_sections.append(name)
    relocations = _relocation_difference(a, b, old, new)
    if relocations:
        comparison.differences.append(f"section {name}: relocations differ: {relocations}")


_TABLES = (2, 3, 4)  # SHT_SYMTAB, SHT_STRTAB, SHT_RELA: compared entry by entry, not as bytes


def _bytes_difference(a: Section, b: Section, old: ElfFile, new: ElfFile) -> str:
    offsets = [i for i in range(min(len(a.data), len(b.data))) if a.data[i] != b.data[i]]
    offsets += range(min(len(a.data), len(b.data)), max(len(a.data), len(b.data)))
    covering = sorted({s.xen_name for s in _symbols_at(old, a, offsets)} |
                      {s.xen_name for s in _symbols_at(new, b, offsets)})
    where = f" in {', '.join(covering)}" if covering else ""
    return (f"{len(offsets)} byte(s) differ{where}, first at offset {offsets[0]:#x} "
            f"({a.data[offsets[0]:offsets[0] + 8].hex() or '-'} vs {b.data[offsets[0]:offsets[0] + 8].hex() or '-'})")


def _symbols_at(elf: ElfFile, section: Section, offsets: list[int]) -> list[Symbol]:
    symbols = [s for s in elf.defined_symbols() if s.shndx == section.index and s.size and not s.is_section]
    return [s for s in symbols if any(s.value <= offset < s.value + s.size for offset in offsets)]


def _relocation_difference(a: Section, b: Section, old: ElfFile, new: ElfFile) -> str:
    before = [_relocation(old, r) for r in a.relocations]
    after = [_relocation(new, r) for r in b.relocations]
    if before == after:
        return ""
    removed = [r for r in before if r not in after]
    added = [r for r in after if r not in before]
    parts = []
    if removed:
        parts.append(f"only in {old.name}: {_listed(removed)}")
    if added:
        parts.append(f"only in {new.name}: {_listed(added)}")
    return "; ".join(parts) or "same entries in another order"


def _relocation(elf: ElfFile, rela: Rela) -> str:
    symbol = elf.symbols[rela.symbol] if rela.symbol < len(elf.symbols) else None
    target = (elf.sections[symbol.shndx].name if symbol and symbol.is_section else
              symbol.xen_name if symbol else f"symbol {rela.symbol}")
    return f"{rela.offset:#x} type {rela.type} {target}{rela.addend:+#x}"


def _compare_symbols(old: ElfFile, new: ElfFile, comparison: Comparison) -> None:
    before, after = _keyed_symbols(old), _keyed_symbols(new)
    for name in sorted(before.keys() - after.keys()):
        comparison.differences.append(f"symbol {name}: only in {old.name}")
    for name in sorted(after.keys() - before.keys()):
        comparison.differences.append(f"symbol {name}: only in {new.name}")
    for name in [key for key in before if key in after]:
        a, b = before[name], after[name]
        fields = [(what, va, vb) for what, va, vb in (
            ("value", a[0], b[0]), ("size", a[1], b[1]), ("type", a[2], b[2]), ("bind", a[3], b[3]),
            ("section", a[4], b[4])) if va != vb]
        if fields:
            comparison.differences.append(f"symbol {name}: " + ", ".join(f"{what} {va} vs {vb}"
                                                                         for what, va, vb in fields))


def _keyed_symbols(elf: ElfFile) -> dict[str, tuple[object, ...]]:
    keyed = {}
    for symbol in elf.symbols[1:]:
        if symbol.is_section or symbol.is_file or not symbol.name:
            continue
        section = elf.sections[symbol.shndx].name if 0 < symbol.shndx < len(elf.sections) else symbol.shndx
        keyed[symbol.xen_name] = (hex(symbol.value), symbol.size, symbol.type, symbol.bind, section)
    return keyed


def _note_paths(name: str, a: bytes, b: bytes, old: ElfFile, new: ElfFile, comparison: Comparison) -> None:
    before, after = set(_PATH_RE.findall(a)), set(_PATH_RE.findall(b))
    for path in sorted(before - after):
        comparison.leaked_paths.append(f"{path.decode(errors='replace')} (section {name} of {old.name})")
    for path in sorted(after - before):
        comparison.leaked_paths.append(f"{path.decode(errors='replace')} (section {name} of {new.name})")


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more
