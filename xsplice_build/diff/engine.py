"""The function diff: which functions of an object pair changed, and what a payload needs.

The passes run in order over one ObjectDiff per object pair, each setting its own
fields (see state.py):

1. correlate  pair each patched section with its original (numbers normalised);
2. compare    bytes and relocations, by what they point at; rodata changes reach users;
3. include    changed and new functions, then what they need; special-section entries;
4. verify     the rules a live patch must keep, every refusal gathered; with the translation
              unit's DWARF (the objects' own, or a debug compile of it), the struct layouts too;
5. extract    the included sections of all objects linked into one relocatable object.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..elf.model import ElfFile
from ..elf.reader import check_relocatable, read_elf, read_elf_file
from ..elf.writer import write_relocatable
from ..errors import ElfError, NothingToPatch, Unpatchable
from .compare import compare
from .correlate import correlate
from .extract import DefinedSymbol, Extract, PatchedFunction
from .include import include
from .layouts import check_struct_layouts
from .profile import TargetProfile
from .rules import verify
from .state import ObjectDiff
from .types import TypeTable, has_dwarf, read_types

EMPTY_OBJECT_LABEL = "(new file)"


@dataclass(frozen=True)
class PatchDiff:
    objects: list[ObjectDiff]
    functions: list[PatchedFunction]
    extract: bytes
    defined: list[DefinedSymbol]


def diff_objects(original: Path | None, patched: Path, label: str, profile: TargetProfile,
                 debug: DebugPair | None = None) -> ObjectDiff:
    """Run passes 1-4 on one object pair; refusals are recorded, not raised.

    `debug` is the pair whose DWARF describes the units' types (a debug compile of each);
    without it, the objects' own DWARF when both carry it.
    """
    with _collector_paused():
        # Each file under its own name, so that a refusal names the file at fault (the original too).
        original_elf = read_elf_file(original) if original else _empty_like(label)
        patched_elf = read_elf_file(patched, label)
        return diff_elves(original_elf, patched_elf, label, profile, _type_tables(original, patched, debug, label))


def diff_elves(original_elf: ElfFile, patched_elf: ElfFile, label: str, profile: TargetProfile,
               types: tuple[TypeTable, TypeTable] | None = None) -> ObjectDiff:
    """Passes 1-4 on two objects already read (the fuzzer feeds them from memory)."""
    check_relocatable(original_elf)
    check_relocatable(patched_elf)
    diff = ObjectDiff(label=label, original=original_elf, patched=patched_elf, profile=profile)
    correlate(diff)
    compare(diff)
    include(diff)
    if types is not None:  # first: a moved member explains the changed data and code that follow from it
        diff.types = check_struct_layouts(diff, *types)
    verify(diff)
    return diff


@dataclass(frozen=True)
class DebugPair:
    """Objects with debug information of the original and the patched translation unit."""

    original: Path | None
    patched: Path


def _type_tables(original: Path | None, patched: Path, debug: DebugPair | None,
                 label: str) -> tuple[TypeTable, TypeTable] | None:
    if debug is None:
        if not has_dwarf(patched) or (original is not None and not has_dwarf(original)):
            return None
        debug = DebugPair(original, patched)
    try:
        old = read_types(debug.original) if debug.original is not None else TypeTable()
        return old, read_types(debug.patched)
    except ValueError as error:
        raise ElfError(f"{label}: {error}") from None


@contextmanager
def _collector_paused() -> Iterator[None]:
    # A large object pair is hundreds of thousands of small acyclic records; the cycle collector
    # would rescan all of them again and again as they pile up (a third of the time on 14 MB pairs).
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def diff_patch(pairs: list[tuple[str, Path | None, Path]], profile: TargetProfile) -> PatchDiff:
    """Diff every changed object pair of a patch; raise when it is unpatchable or changes nothing."""
    return conclude(diff_pairs(pairs, profile))


def diff_pairs(pairs: list[tuple[str, Path | None, Path]], profile: TargetProfile,
               debug: dict[str, DebugPair] | None = None) -> list[ObjectDiff]:
    """Passes 1-4 on every object pair, in a stable order; nothing is raised for refusals."""
    debug = debug or {}
    return [diff_objects(original, patched, label, profile, debug.get(label))
            for label, original, patched in sorted(pairs)]


def conclude(diffs: list[ObjectDiff]) -> PatchDiff:
    """Pass 5 over the object diffs; raise Unpatchable or NothingToPatch with their reasons."""
    refusals = [refusal for diff in diffs for refusal in diff.refusals]
    if refusals:
        raise Unpatchable(refusals)
    extract = Extract()
    for diff in diffs:
        extract.add(diff)
    data, functions = extract.finish()
    if not functions:
        raise NothingToPatch(nothing_to_patch_message(diffs))
    return PatchDiff(objects=diffs, functions=functions, extract=data, defined=extract.defined)


def nothing_to_patch_message(diffs: list[ObjectDiff]) -> str:
    if not diffs:
        return ("nothing to patch: the patch changes no compiled object (comments, whitespace, or files "
                "the build does not compile); check that it is the fix you meant")
    notes = [note for diff in diffs for note in diff.warnings + diff.ignored]
    more = f" and {len(notes) - 1} more note(s)" if len(notes) > 1 else ""
    detail = f" ({notes[0]}{more})" if notes else " (only debug information or padding differs)"
    objects = ", ".join(diff.label for diff in diffs)
    return f"nothing to patch: no function of {objects} changed{detail}"


def _empty_like(label: str) -> ElfFile:
    return read_elf(write_relocatable([], []), label + " " + EMPTY_OBJECT_LABEL)
