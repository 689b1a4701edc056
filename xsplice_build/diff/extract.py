"""Pass 5, extract: the included sections of every object, linked into one relocatable object.

References into the payload's own sections go through section symbols; references to
the base image become undefined symbols named as the base image's symbol table names
them ("file#name" for statics), which the loader resolves. Special sections are
merged across objects into one of each, as the loader looks them up by name; so are
the sections the profile names in `merged_sections` (.altinstr_replacement: Xen checks
every alternative's replacement against the first section of that name), each object's
part placed at its own offset, every reference into it moved by that offset.
"""

from __future__ import annotations

from ..elf.constants import STB_GLOBAL, STB_LOCAL, STT_FUNC, STT_NOTYPE, STT_OBJECT
from ..elf.model import Rela, Symbol
from ..elf.writer import OutRela, OutSection, OutSymbol, section_symbol, symbol_order, write_relocatable
from ..errors import XspliceError
from ..records import DefinedSymbol, PatchedFunction  # the diff record's entries, declared there
from .compare import referenced_offset
from .correlate import normalise
from .include import base_reference, kept_special_entries
from .state import Kind, ObjectDiff, SectionState, Status

# An included section's place in the output: the output section, and the offset its bytes start at.
Placed = tuple[OutSection, int]


class Extract:
    def __init__(self) -> None:
        self.sections: list[OutSection] = []
        self.defined: list[DefinedSymbol] = []
        self.symbols: list[OutSymbol] = []
        self._functions: list[tuple[str, str, OutSymbol, int]] = []
        self._externals: dict[str, OutSymbol] = {}
        self._globals: dict[str, OutSymbol] = {}
        self._specials: dict[str, OutSection] = {}
        self._merged: dict[str, OutSection] = {}
        self._section_symbols: dict[int, OutSymbol] = {}

    def add(self, diff: ObjectDiff) -> None:
        included = sorted((s for s in diff.states.values() if s.included), key=lambda s: s.section.index)
        out_of: dict[int, Placed] = {}
        named: dict[int, OutSymbol] = {}
        for state in included:
            if state.kind is Kind.HOOK and state.name in diff.profile.single_hooks and state.name in self._merged:
                raise XspliceError(f"{diff.label}: {state.name}: a second such hook in one payload; the loader "
                                   "takes exactly one [rule: hooks-unsupported]")
            # Hook sections too are one per name: the loader looks each up by name.
            placed = self._place(state, diff.profile.merged_sections + diff.profile.hook_sections)
            out_of[state.section.index] = placed
            if state.symbol is not None and state.kind is not Kind.HOOK:
                named[state.symbol.index] = self._define(state, placed)
        for state in included:
            out, base = out_of[state.section.index]
            out.relocations.extend(self._relocation(diff, state, rela, base + rela.offset, out_of)
                                   for rela in state.section.relocations)
        for special in [s for s in diff.states.values() if s.kind is Kind.SPECIAL]:
            self._add_special_entries(diff, special, out_of)
        for state in diff.changed_functions():
            if state.included and state.symbol and state.twin_symbol:
                self._functions.append((diff.label, state.twin_symbol.xen_name, named[state.symbol.index],
                                        state.twin_symbol.size))

    def finish(self) -> tuple[bytes, list[PatchedFunction]]:
        """The linked object, and the functions it replaces (by their symbols' final indices)."""
        for section in self.sections:
            for rela in section.relocations:
                defined = self._globals.get(rela.symbol.name)
                if rela.symbol.section is None and defined is not None:
                    rela.symbol = defined
        used = {id(r.symbol) for s in self.sections for r in s.relocations}
        symbols = self.symbols + [s for s in self._externals.values() if id(s) in used]
        index = {id(symbol): number for number, symbol in enumerate(symbol_order(symbols), start=1)}
        functions = [PatchedFunction(label, name, symbol.name, index[id(symbol)], old_size, symbol.size)
                     for label, name, symbol, old_size in self._functions]
        return write_relocatable(self.sections, symbols), functions

    def _place(self, state: SectionState, merged_names: tuple[str, ...]) -> Placed:
        """A section of its own, or this object's part of the one section of a merged name."""
        section = state.section
        if section.name not in merged_names:
            out = OutSection(section.name, section.type, section.flags, section.data, section.align,
                             section.entsize, size=section.size)
            self._add_section(out)
            return out, 0
        merged = self._merged.get(section.name)
        if merged is None:
            merged = OutSection(section.name, section.type, section.flags, b"", section.align, section.entsize)
            self._merged[section.name] = merged
            self._add_section(merged)
        if section.flags != merged.flags or section.type != merged.type:
            raise XspliceError(f"{state.label}: flags or type differ from another object's {section.name}; "
                               "the loader takes one section of that name")
        align = max(section.align, 1)
        base = -(-len(merged.data) // align) * align
        merged.data = bytes(merged.data) + bytes(base - len(merged.data)) + bytes(section.data)
        merged.align = max(merged.align, align)
        return merged, base

    def _define(self, state: SectionState, placed: Placed) -> OutSymbol:
        symbol = state.symbol
        assert symbol is not None
        out, base = placed
        kind = STT_FUNC if symbol.is_function else STT_OBJECT
        bind = STB_LOCAL if symbol.is_local else STB_GLOBAL
        defined = OutSymbol(symbol.name, kind, bind, out, base + symbol.value, symbol.size, symbol.other)
        self.symbols.append(defined)
        if symbol.name and not symbol.name.startswith(".L"):
            self.defined.append(DefinedSymbol(symbol.xen_name, symbol.name, symbol.size, symbol.is_function))
        if bind != STB_LOCAL:
            self._globals[symbol.name] = defined
        return defined

    def _external(self, name: str) -> OutSymbol:
        if name not in self._externals:
            self._externals[name] = OutSymbol(name, STT_NOTYPE, STB_GLOBAL)
        return self._externals[name]

    def _relocation(self, diff: ObjectDiff, state: SectionState, rela: Rela, offset: int,
                    out_of: dict[int, Placed]) -> OutRela:
        symbol = diff.patched.symbols[rela.symbol]
        if symbol.is_undefined:
            return OutRela(offset, rela.type, self._external(symbol.name), rela.addend)
        if symbol.is_special_index:
            raise XspliceError(f"{diff.label}: {state.label}+{rela.offset:#x}: refers to special symbol "
                               f"{symbol.name!r}, which a payload cannot carry")
        placed = out_of.get(symbol.shndx)
        if placed is not None:
            out, base = placed
            return OutRela(offset, rela.type, self._section_symbol(out), base + symbol.value + rela.addend)
        target = diff.state_of(symbol.shndx)
        variable = _base_variable(diff, target, symbol, rela, state) if target is not None else None
        if variable is not None:
            # Variables compared one by one: the base image's variable of that name, wherever it sits.
            name, at = variable
            diff.base_references.add(name)
            return OutRela(offset, rela.type, self._external(name), symbol.value + rela.addend - at)
        name = base_reference(diff, target) if target is not None else None
        if target is None or name is None or target.anchor is None:
            what = target.label if target else f"section {symbol.shndx}"
            raise XspliceError(f"{diff.label}: {state.label}+{rela.offset:#x}: refers to {what}, which is "
                               "neither carried in the payload nor named in the base image")
        diff.base_references.add(name)
        return OutRela(offset, rela.type, self._external(name), symbol.value + rela.addend - target.anchor.value)

    def _add_section(self, out: OutSection) -> None:
        self.sections.append(out)
        symbol = section_symbol(out)
        self.symbols.append(symbol)
        self._section_symbols[id(out)] = symbol

    def _section_symbol(self, out: OutSection) -> OutSymbol:
        return self._section_symbols[id(out)]

    def _add_special_entries(self, diff: ObjectDiff, special: SectionState,
                             out_of: dict[int, Placed]) -> None:
        layout = diff.profile.special(special.name)
        assert layout is not None
        entries = kept_special_entries(diff, special)
        if not entries:
            return
        merged = self._specials.get(special.name)
        if merged is None:
            section = special.section
            merged = OutSection(section.name, section.type, section.flags, bytearray(), section.align,
                                section.entsize)
            self._specials[special.name] = merged
            self._add_section(merged)
        by_entry: dict[int, list[Rela]] = {}
        for rela in special.section.relocations:
            by_entry.setdefault(rela.offset - rela.offset % layout.entry_size, []).append(rela)
        for start in entries:
            base = len(merged.data)
            merged.data += special.section.data[start:start + layout.entry_size]
            merged.relocations.extend(self._relocation(diff, special, rela, base + rela.offset - start, out_of)
                                      for rela in by_entry.get(start, []))


def _base_variable(diff: ObjectDiff, target: SectionState, symbol: Symbol, rela: Rela,
                   source: SectionState) -> tuple[str, int] | None:
    """(base-image name, offset in the patched section) of the unchanged variable a reference falls in."""
    if target.variable_changes is None or target.twin is None or target.status is not Status.SAME:
        return None
    variable = diff.patched.symbol_containing(symbol.shndx, referenced_offset(rela, symbol.value, source.section))
    original = next((s for s in diff.original.variables_in(target.twin.index)
                     if normalise(s.name) == normalise(variable.name)), None) if variable is not None else None
    if variable is None or original is None:
        # Its variables may sit elsewhere in the base image's section: an offset alone names nothing.
        raise XspliceError(f"{diff.label}: {source.label}+{rela.offset:#x}: refers to {target.name}"
                           f"{symbol.value + rela.addend:+#x}, which is in no variable of the base image")
    return original.xen_name, variable.value
