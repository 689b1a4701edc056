"""The structure the diff passes share: one record per section of the patched object.

Each pass sets its own fields and leaves the others alone: correlate sets `twin` and
`how`; compare sets `status` and `reasons`; include sets `included` and `why`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from ..elf.constants import SHF_ALLOC, SHF_MERGE, SHF_STRINGS, SHT_GROUP, SHT_NOBITS
from ..elf.model import ElfFile, Section, Symbol
from .profile import TargetProfile


class Kind(enum.Enum):
    FUNCTION = "function"  # executable code
    RODATA = "rodata"  # read-only data: jump tables, constant tables
    STRINGS = "strings"  # mergeable string literals (.rodata.str*): no symbols, deduplicated by ld
    DATA = "data"  # writable data or bss: state the running hypervisor owns
    SPECIAL = "special"  # per-function tables of the target (bug frames, exception table)
    HOOK = "hook"  # .livepatch.hooks.*: pointers to functions the loader runs (load, pre-apply, ...)
    AUXILIARY = "auxiliary"  # out-of-line code or data of kept special entries (.fixup, replacements)
    IGNORED = "ignored"  # debug info, notes, groups: never diffed, never carried


class Status(enum.Enum):
    SAME = "same"
    CHANGED = "changed"
    NEW = "new"


@dataclass(eq=False)
class SectionState:
    section: Section
    kind: Kind
    key: str  # correlation key: the name with build-varying numbers normalised
    symbol: Symbol | None  # the function or object that names the section, if exactly one does
    twin: Section | None = None
    twin_symbol: Symbol | None = None
    # A named symbol of the section (and its twin's namesake) to reach it from the base image when
    # no single symbol names it (several variables in .data.read_mostly, asm sections).
    anchor: Symbol | None = None
    twin_anchor: Symbol | None = None
    how: str = ""  # how the twin was found, for --explain
    status: Status = Status.SAME
    reasons: list[str] = field(default_factory=list)
    included: bool = False
    why: str = ""  # why it was included, for --explain
    parent: SectionState | None = None  # the function a .cold part belongs to
    # Data compared variable by variable (compare): normalised name -> (status, why), for each
    # variable that is new, removed, resized or changed; and the included code using each new one.
    variable_changes: dict[str, tuple[str, str]] | None = None
    new_variable_users: dict[str, list[str]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.section.name

    @property
    def label(self) -> str:
        return self.symbol.name if self.symbol else self.section.name


@dataclass(eq=False)
class ObjectDiff:
    """Everything the passes learned about one object pair, and what they decided."""

    label: str  # the object's path in the tree, as reports name it
    original: ElfFile
    patched: ElfFile
    profile: TargetProfile
    states: dict[int, SectionState] = field(default_factory=dict)  # patched section index -> state
    original_keys: dict[str, Section] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    # Symbols of the base image the included code needs, by the name the base image gives them.
    base_references: set[str] = field(default_factory=set)
    # Each aggregate of the translation unit compared by the struct-layout rule (layouts.TypeComparison);
    # None when neither side had debug information to compare.
    types: list[Any] | None = None

    def state_of(self, section_index: int) -> SectionState | None:
        return self.states.get(section_index)

    def functions(self) -> list[SectionState]:
        return [s for s in self.states.values() if s.kind is Kind.FUNCTION]

    def changed_functions(self) -> list[SectionState]:
        return [s for s in self.functions() if s.status is Status.CHANGED and s.parent is None]

    def new_functions(self) -> list[SectionState]:
        return [s for s in self.functions() if s.status is Status.NEW and s.parent is None]


def classify(section: Section, profile: TargetProfile) -> Kind:
    if section.index == 0 or section.type == SHT_GROUP or profile.is_ignored_section(section.name):
        return Kind.IGNORED
    if not section.flags & SHF_ALLOC:
        return Kind.IGNORED
    if profile.special(section.name):
        return Kind.SPECIAL
    if profile.is_auxiliary(section.name):
        return Kind.AUXILIARY
    if profile.is_hook(section.name):
        return Kind.HOOK
    if section.is_text:
        return Kind.FUNCTION
    if section.flags & SHF_MERGE and section.flags & SHF_STRINGS:
        return Kind.STRINGS
    if (section.is_writable or section.type == SHT_NOBITS) and not profile.is_readonly_data(section.name):
        return Kind.DATA
    return Kind.RODATA


def naming_symbol(elf: ElfFile, section: Section) -> Symbol | None:
    """The one function or object symbol at the start of `section`, as -ffunction-sections makes."""
    candidates = [s for s in elf.symbols_in(section.index) if (s.is_function or s.is_object) and s.name]
    if len(candidates) == 1:
        return candidates[0]
    # Several names for one thing (aliases, all at the start) still name the section; several
    # things (variables in .data.read_mostly, functions in .init.text) do not.
    if candidates and all(s.value == 0 and s.size == candidates[0].size for s in candidates):
        return min(candidates, key=lambda s: (s.bind == 0, s.index))
    return None


def anchor_symbol(elf: ElfFile, section: Section, name: str | None = None) -> Symbol | None:
    """A named symbol in `section` (the one called `name` if given): any such symbol locates the whole
    section in the linked image, because ld keeps an input section's bytes together."""
    named = [s for s in elf.symbols_in(section.index) if s.name and not s.is_section and not s.is_file
             and not s.name.startswith(".L")]
    if name is not None:
        named = [s for s in named if s.name == name]
    return min(named, key=lambda s: (s.value, s.index)) if named else None
