"""Pass 1, correlate: pair each section of the patched object with its original.

Names are the key, once the numbers gcc makes up per build are taken out: clone
suffixes (foo.isra.0, foo.constprop.3, foo.part.1) and static-local suffixes
(count.1234) may shift between two compilations of almost the same file. Where two
sections still share a key (two functions each with a static local "count"), the
functions that reference them tell them apart, as kpatch correlates static locals.
"""

from __future__ import annotations

import re
from collections import defaultdict

from ..elf.model import ElfFile, Section
from .state import Kind, ObjectDiff, SectionState, anchor_symbol, classify, naming_symbol

_CLONE_SUFFIX = re.compile(r"\.(isra|constprop|part|lto_priv|localalias|specialized)\.\d+")
_NUMBER_SUFFIX = re.compile(r"\.\d+$")
_ANY_NUMBER = re.compile(r"\.\d")  # most names have none: one search instead of two substitutions
# .rodata.str1.8: the numbers are the entry size and alignment of mergeable strings, not per-build ones.
_STRINGS_SUFFIX = re.compile(r"\.str\d+\.\d+$")


def normalise(name: str) -> str:
    """`name` with gcc's per-build numbers replaced by N."""
    if not _ANY_NUMBER.search(name):
        return name
    strings = _STRINGS_SUFFIX.search(name)
    if strings:
        return _CLONE_SUFFIX.sub(r".\1.N", name[:strings.start()]) + strings.group()
    return _NUMBER_SUFFIX.sub(".N", _CLONE_SUFFIX.sub(r".\1.N", name))


def correlate(diff: ObjectDiff) -> None:
    original_keys, _ = _keys(diff.original, diff)
    patched_keys, kinds = _keys(diff.patched, diff)
    diff.original_keys = {key: section for key, section in original_keys.items()}
    for key, section in patched_keys.items():
        kind = kinds[section.index]
        state = SectionState(section=section, kind=kind, key=key, symbol=naming_symbol(diff.patched, section))
        twin = original_keys.get(key)
        if twin is not None:
            state.twin = twin
            state.twin_symbol = naming_symbol(diff.original, twin)
            state.how = "same name" if twin.name == section.name else f"numbers normalised ({twin.name})"
            state.anchor = state.symbol or anchor_symbol(diff.patched, section)
            if state.anchor is not None:
                state.twin_anchor = state.twin_symbol if state.symbol else \
                    anchor_symbol(diff.original, twin, state.anchor.name)
        diff.states[section.index] = state
    _attach_cold_parts(diff)


def _keys(elf: ElfFile, diff: ObjectDiff) -> tuple[dict[str, Section], dict[int, Kind]]:
    """Correlation key -> section, for every section the diff looks at; and each one's kind."""
    groups: dict[str, list[Section]] = defaultdict(list)
    kinds: dict[int, Kind] = {}
    for section in elf.sections:
        kind = classify(section, diff.profile)
        if kind is Kind.IGNORED:
            continue
        kinds[section.index] = kind
        groups[section.name if kind is Kind.SPECIAL else normalise(section.name)].append(section)
    keys: dict[str, Section] = {}
    referencing: dict[int, set[str]] | None = None
    for key, sections in groups.items():
        if len(sections) == 1:
            keys[key] = sections[0]
            continue
        if referencing is None:
            referencing = _referencing_functions(elf)
        for section in sections:
            owners = ",".join(sorted(referencing.get(section.index, ())))
            refined = f"{key}@{owners}"
            # Still ambiguous: fall back to the exact name, which at worst leaves a section uncorrelated.
            keys[refined if refined not in keys else section.name] = section
    return keys, kinds


def _referencing_functions(elf: ElfFile) -> dict[int, set[str]]:
    """Section index -> the (normalised) functions whose code refers to it, in one pass over the code."""
    owners: dict[int, set[str]] = defaultdict(set)
    for section in elf.sections:
        if not section.is_text:
            continue
        name = normalise(section.name)
        for rela in section.relocations:
            owners[elf.symbols[rela.symbol].shndx].add(name)
    return owners


def _attach_cold_parts(diff: ObjectDiff) -> None:
    """A foo.cold part jumps back into foo's body: it is part of foo, never a function of its own."""
    by_symbol = {state.symbol.name: state for state in diff.states.values() if state.symbol}
    for state in diff.states.values():
        if state.kind is Kind.FUNCTION and state.symbol and state.symbol.name.endswith(".cold"):
            state.parent = by_symbol.get(state.symbol.name[: -len(".cold")])
