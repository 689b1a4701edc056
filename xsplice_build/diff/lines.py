"""Line-only differences: a __LINE__ that moved is no change, wherever gcc put it.

Lines added above a function change nothing it does, yet two places still differ:
the line a bug frame records (bits of its relocation addends, `line_mask` in the
profile) and a __LINE__ passed as an immediate to a function that prints it
(`mov $line, %esi` before `call printk`). A function whose only differences are of
these kinds is not patched, and the report says so [rule: line-only]. Any other
byte is a real change: a bound in a `cmp`, or a constant passed to anything but a
known line consumer, is never taken for a line.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from ..elf.model import ElfFile, Rela, Section
from .profile import SpecialSection, TargetProfile

_CALL_OPCODES = (0xE8, 0xE9)  # call rel32, jmp rel32 (a tail call)
_IMMEDIATE_SIZE = 4
_CALL_WINDOW = 32  # bytes after the mov in which its consumer must be the first call
_JMP_REL8, _JMP_REL32 = 0xEB, 0xE9
_MAX_JUMPS = 3  # jumps followed from the mov to a call block shared by several lines
_MAX_LINE = 1 << 20


@dataclass(frozen=True)
class LineImmediate:
    offset: int  # of the immediate in the function
    old: int
    new: int
    consumer: str


def immediate_lines(old: Section, new: Section, elf: ElfFile,
                    profile: TargetProfile) -> list[LineImmediate] | None:
    """Each __LINE__ immediate that differs, or None when any other byte does too."""
    if len(old.data) != len(new.data) or not profile.line_consumers:
        return None
    differing = [i for i, (a, b) in enumerate(zip(old.data, new.data, strict=True)) if a != b]
    found: list[LineImmediate] = []
    position = 0
    while position < len(differing):
        line = _line_at(old, new, elf, profile, differing[position])
        if line is None:
            return None
        end = line.offset + _IMMEDIATE_SIZE
        while position < len(differing) and differing[position] < end:
            position += 1
        found.append(line)
    return found


def _line_at(old: Section, new: Section, elf: ElfFile, profile: TargetProfile, first: int) -> LineImmediate | None:
    for opcode_at in range(max(0, first - _IMMEDIATE_SIZE), first):
        if new.data[opcode_at] not in profile.line_immediate_opcodes or old.data[opcode_at] != new.data[opcode_at]:
            continue
        start = opcode_at + 1
        old_value = int.from_bytes(old.data[start:start + _IMMEDIATE_SIZE], "little")
        new_value = int.from_bytes(new.data[start:start + _IMMEDIATE_SIZE], "little")
        if old_value >= _MAX_LINE or new_value >= _MAX_LINE:
            continue
        consumer = _next_call(new, elf, start + _IMMEDIATE_SIZE)
        if consumer in profile.line_consumers:
            return LineImmediate(start, old_value, new_value, consumer)
    return None


def _next_call(section: Section, elf: ElfFile, after: int) -> str | None:
    """The name the first call or tail call after `after` (within a short window) goes to.

    When the instruction right after the mov is a jump within the function (gcc shares one
    `call printk` between several lines that set their line and jump to it), the walk follows
    it, a few jumps at most, and looks for the call where it lands.
    """
    relocated = {rela.offset for rela in section.relocations}
    for _ in range(_MAX_JUMPS):
        landing = _local_jump(section, after, relocated)
        if landing is None:
            break
        after = landing
    for rela in sorted(section.relocations, key=lambda r: r.offset):
        if rela.offset <= after or rela.offset > after + _CALL_WINDOW:
            continue
        if section.data[rela.offset - 1] in _CALL_OPCODES:
            return elf.symbols[rela.symbol].name
    return None


def _local_jump(section: Section, at: int, relocated: set[int]) -> int | None:
    """Where an unconditional jump at `at` lands in the same function, or None if there is none."""
    data = section.data
    if at + 2 <= len(data) and data[at] == _JMP_REL8:
        landing = at + 2 + int.from_bytes(data[at + 1:at + 2], "little", signed=True)
    elif at + 5 <= len(data) and data[at] == _JMP_REL32 and at + 1 not in relocated:
        landing = at + 5 + int.from_bytes(data[at + 1:at + 5], "little", signed=True)
    else:
        return None
    return landing if 0 <= landing < len(data) else None


Describe = Callable[[Rela], tuple[object, ...]]


@dataclass(frozen=True)
class FrameEntry:
    shape: tuple[object, ...]  # what the entry points at, line bits masked out
    line: int


def entries_by_owner(section: Section, layout: SpecialSection, describe: Describe) -> dict[str, list[FrameEntry]]:
    """The entries of a special section, grouped by the correlation key of the code each belongs to."""
    by_entry: dict[int, list[Rela]] = defaultdict(list)
    for rela in section.relocations:
        by_entry[rela.offset - rela.offset % layout.entry_size].append(rela)
    owners: dict[str, list[FrameEntry]] = defaultdict(list)
    for start in sorted(by_entry):
        relocations = sorted(by_entry[start], key=lambda r: r.offset)
        shape, line = _entry_shape(section, layout, start, relocations, describe)
        anchor = next((r for r in relocations if r.offset == start + layout.anchor), None)
        if anchor is None:
            continue
        target = describe(_masked(anchor, layout, start))
        owner = str(target[1]) if target[0] == "section" else str(target)
        owners[owner].append(FrameEntry(shape, line))
    return owners


def _entry_shape(section: Section, layout: SpecialSection, start: int, relocations: list[Rela],
                 describe: Describe) -> tuple[tuple[object, ...], int]:
    width = layout.line_mask.bit_count()
    shift = (layout.line_mask & -layout.line_mask).bit_length() - 1 if layout.line_mask else 0
    line = 0
    shape: list[object] = [bytes(section.data[start:start + layout.entry_size])]
    for rela in relocations:
        field = rela.offset - start
        if field in layout.line_fields:
            line = line << width | (rela.addend & layout.line_mask) >> shift
        shape.append((field, rela.type, describe(_masked(rela, layout, start))))
    return tuple(shape), line


def _masked(rela: Rela, layout: SpecialSection, start: int) -> Rela:
    if rela.offset - start not in layout.line_fields:
        return rela
    return Rela(rela.offset, rela.type, rela.symbol, rela.addend & ~layout.line_mask)
