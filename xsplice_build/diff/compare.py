"""Pass 2, compare: decide which correlated sections changed, and say how.

Two sections are the same when their bytes and their relocations are: a relocation
is compared by what it points at (the correlated section and offset, the external
name, or for string literals the string itself, since ld merges strings and their
offsets move whenever any string of the file changes), never by symbol index.
A function that reads changed read-only data (a constant table) changed too: left
alone it would keep reading the old table.
"""

from __future__ import annotations

from ..elf.constants import R_X86_64_PC32, R_X86_64_PLT32, SHF_MERGE, SHF_STRINGS, relocation_name
from ..elf.model import ElfFile, Rela, Section, Symbol
from .correlate import normalise
from .lines import entries_by_owner, immediate_lines
from .state import Kind, ObjectDiff, SectionState, Status

_PC_RELATIVE = frozenset({R_X86_64_PC32, R_X86_64_PLT32})
Target = tuple[object, ...]


def compare(diff: ObjectDiff) -> None:
    original_key_of = {section.index: key for key, section in diff.original_keys.items()}
    patched_key_of = {index: state.key for index, state in diff.states.items()}
    for state in diff.states.values():
        if state.kind in (Kind.IGNORED, Kind.SPECIAL):
            continue
        if state.twin is None:
            state.status = Status.NEW
            continue
        reasons = _differences(diff, state, original_key_of, patched_key_of)
        if reasons:
            state.status = Status.CHANGED
            state.reasons.extend(reasons)
    _compare_special_entries(diff, original_key_of, patched_key_of)
    _propagate_changed_rodata(diff)
    _propagate_changed_cold_parts(diff)


def relocation_target(elf: ElfFile, rela: Rela, key_of: dict[int, str], source: Section | None = None) -> Target:
    """What a relocation points at, in terms that survive recompilation (`source`: the code it patches)."""
    symbol = elf.symbols[rela.symbol]
    if symbol.is_undefined:
        return ("external", symbol.name, rela.addend)
    if symbol.is_special_index:
        return ("absolute", symbol.name, symbol.value + rela.addend)
    section = elf.sections[symbol.shndx]
    if section.index not in key_of:
        return ("unknown", section.name, symbol.value + rela.addend)
    if is_strings(section):
        return ("string", string_at(section, string_offset(rela, symbol.value)))
    offset = symbol.value + rela.addend
    # By the variable or function the address falls in, never by its offset in the section: a table
    # of pointers into .init.text points at the same functions when another one moves them.
    named = elf.symbol_containing(section.index, referenced_offset(rela, symbol.value, source))
    if named is not None:
        return ("section", key_of[section.index], normalise(named.name), offset - named.value)
    return ("section", key_of[section.index], offset)


def string_offset(rela: Rela, symbol_value: int) -> int:
    # A RIP-relative reference stores target - 4 (the displacement ends its instruction).
    return symbol_value + rela.addend + (4 if rela.type in _PC_RELATIVE else 0)


# x86 instructions with a RIP-relative operand followed by an immediate: the displacement is relative
# to the end of the immediate, so the address it names lies that many bytes past symbol + addend + 4.
# Keyed by opcode (the byte before the ModRM byte): the immediate's size.
_TRAILING_IMMEDIATE = {0x80: 1, 0x83: 1, 0xC6: 1, 0xC0: 1, 0xC1: 1, 0x6B: 1, 0x81: 4, 0xC7: 4, 0x69: 4}
_TEST_IMMEDIATE = {0xF6: 1, 0xF7: 4}  # only with ModRM reg field 0 (test $imm, mem)
_OPERAND_SIZE_PREFIX = 0x66


def referenced_offset(rela: Rela, symbol_value: int, source: Section | None) -> int:
    """The offset in the target section a relocation names: for a RIP-relative reference in code,
    past the instruction's end (and any immediate after the displacement), not where it ends."""
    offset = string_offset(rela, symbol_value)
    if source is None or rela.type not in _PC_RELATIVE or rela.offset < 2:
        return offset
    modrm, opcode = source.data[rela.offset - 1], source.data[rela.offset - 2]
    if modrm & 0xC7 != 0x05:  # not a RIP-relative memory operand: a branch or a plain displacement
        return offset
    size = _TRAILING_IMMEDIATE.get(opcode) or (_TEST_IMMEDIATE.get(opcode, 0) if modrm & 0x38 == 0 else 0)
    if size == 4 and _OPERAND_SIZE_PREFIX in source.data[max(0, rela.offset - 4):rela.offset - 2]:
        size = 2
    return offset + size


def string_at(section: Section, offset: int) -> bytes:
    if not 0 <= offset < len(section.data):
        # Names come from hostile files: their undecodable bytes were kept as surrogates (elf.reader).
        return b"<outside %s>" % section.name.encode("utf-8", "surrogateescape")
    end = section.data.find(b"\0", offset)
    return section.data[offset: end if end >= 0 else len(section.data)]


def describe_target(target: Target) -> str:
    kind, *rest = target
    if kind == "string":
        return f"string {rest[0].decode('utf-8', 'backslashreplace')!r}"
    if kind == "section" and len(rest) == 3:
        return f"{rest[1]}{rest[2]:+#x} in {rest[0]}"
    if kind == "section":
        return f"{rest[0]}+{rest[1]:#x}"
    return f"{rest[0]}{rest[1]:+#x}" if len(rest) > 1 and isinstance(rest[1], int) else str(rest[0])


def is_strings(section: Section) -> bool:
    return bool(section.flags & SHF_MERGE and section.flags & SHF_STRINGS)


def _differences(diff: ObjectDiff, state: SectionState, original_key_of: dict[int, str],
                 patched_key_of: dict[int, str]) -> list[str]:
    new, old = state.section, state.twin
    assert old is not None
    if state.kind is Kind.STRINGS:
        return [] if new.data == old.data else ["string literals differ"]
    if state.kind is Kind.DATA:
        by_variable = _variable_differences(diff, state, original_key_of, patched_key_of)
        if by_variable is not None:
            return by_variable
    reasons = []
    old_relocations = [(r.offset, r.type, relocation_target(diff.original, r, original_key_of, old))
                       for r in old.relocations]
    new_relocations = [(r.offset, r.type, relocation_target(diff.patched, r, patched_key_of, new))
                       for r in new.relocations]
    same_relocations = old_relocations == new_relocations
    if new.size != old.size:
        reasons.append(f"size {old.size:#x} -> {new.size:#x}")
    elif new.data != old.data:
        lines = immediate_lines(old, new, diff.patched, diff.profile) \
            if same_relocations and state.kind is Kind.FUNCTION else None
        if lines:
            for line in lines:
                diff.ignored.append(
                    f"{diff.label}: {state.label}: only __LINE__ differs (the {line.consumer} argument at "
                    f"+{line.offset:#x}: {line.old} -> {line.new}) [rule: line-only]; not patched")
        else:
            first = next(i for i, (a, b) in enumerate(zip(old.data, new.data, strict=True)) if a != b)
            reasons.append(f"bytes differ from +{first:#x}")
    if not same_relocations:
        reasons.append(_relocation_difference(old_relocations, new_relocations))
    return reasons


def _variable_differences(diff: ObjectDiff, state: SectionState, original_key_of: dict[int, str],
                          patched_key_of: dict[int, str]) -> list[str] | None:
    """Data compared one variable at a time (by name, then size, bytes and relocation targets), or None
    when the section's bytes are not all named variables: each variable of .bss.percpu or
    .data.read_mostly is unchanged whatever its offset in the section, and removing one is no change."""
    assert state.twin is not None
    old = _variables(diff.original, state.twin)
    new = _variables(diff.patched, state.section)
    if old is None or new is None:
        return None
    old_contents = _contents(diff.original, state.twin, old, original_key_of)
    new_contents = _contents(diff.patched, state.section, new, patched_key_of)
    changes: dict[str, tuple[str, str]] = {}
    for name, symbol in new.items():
        before = old.get(name)
        if before is None:
            changes[name] = ("new", f"new variable {symbol.name} at +{symbol.value:#x} in {state.name}")
        elif before.size != symbol.size:
            changes[name] = ("resized", f"size {before.size:#x} -> {symbol.size:#x}")
        elif old_contents[name] != new_contents[name]:
            changes[name] = ("changed", _content_difference(old_contents[name], new_contents[name]))
    for name in sorted(old.keys() - new.keys()):
        changes[name] = ("removed", f"removed from {state.name}")
        diff.ignored.append(f"{diff.label}: {old[name].name}: variable removed from {state.name}; the base image "
                            "keeps it, and no patched code refers to it")
    state.variable_changes = changes
    return [f"{name}: {why}" for name, (status, why) in changes.items() if status in ("resized", "changed")]


def _variables(elf: ElfFile, section: Section) -> dict[str, Symbol] | None:
    named = [s for s in elf.variables_in(section.index) if s.is_object]
    by_name = {normalise(s.name): s for s in named}
    if not named or len(by_name) != len(named):
        return None
    return by_name


Contents = tuple[bytes, list[tuple[int, int, Target]]]


def _contents(elf: ElfFile, section: Section, variables: dict[str, Symbol], key_of: dict[int, str]) -> dict[str,
                                                                                                           Contents]:
    """Each variable's bytes, and its relocations by offset in the variable, type and target."""
    contents: dict[str, Contents] = {name: (bytes(section.data[s.value:s.value + s.size]), [])
                                     for name, s in variables.items()}
    for rela in section.relocations:
        owner = elf.symbol_containing(section.index, rela.offset)
        if owner is not None and normalise(owner.name) in contents:
            contents[normalise(owner.name)][1].append(
                (rela.offset - owner.value, rela.type, relocation_target(elf, rela, key_of)))
    return contents


def _content_difference(old: Contents, new: Contents) -> str:
    if old[0] != new[0]:
        first = next((i for i, (a, b) in enumerate(zip(old[0], new[0], strict=True)) if a != b), 0)
        return f"bytes differ from +{first:#x}"
    return _relocation_difference(old[1], new[1])


def _relocation_difference(old: list[tuple[int, int, Target]], new: list[tuple[int, int, Target]]) -> str:
    if len(old) != len(new):
        return f"{len(old)} -> {len(new)} relocations"
    for (old_offset, old_type, old_target), (new_offset, new_type, new_target) in zip(old, new, strict=True):
        if old_target != new_target:
            return (f"relocation at +{new_offset:#x} now refers to {describe_target(new_target)} "
                    f"(was {describe_target(old_target)})")
        if old_type != new_type:
            return f"relocation at +{new_offset:#x} is {relocation_name(new_type)} (was {relocation_name(old_type)})"
        if old_offset != new_offset:
            return (f"code moved: the reference to {describe_target(new_target)} is at +{new_offset:#x} "
                    f"(was +{old_offset:#x})")
    return "relocations differ"


def _propagate_changed_rodata(diff: ObjectDiff) -> None:
    changed = {state.section.index: state for state in diff.states.values()
               if state.kind is Kind.RODATA and state.status is Status.CHANGED}
    if not changed:
        return
    for state in diff.functions():
        if state.status is not Status.SAME:
            continue
        for rela in state.section.relocations:
            target = changed.get(diff.patched.symbols[rela.symbol].shndx)
            if target is not None:
                state.status = Status.CHANGED
                state.reasons.append(f"reads {target.label}, which changed")
                break


def _compare_special_entries(diff: ObjectDiff, original_key_of: dict[int, str],
                             patched_key_of: dict[int, str]) -> None:
    """Entries of bug frames and the like, per function: a moved line is noted, anything else is a change."""
    by_key = {state.key: state for state in diff.states.values()}
    for special in diff.states.values():
        layout = diff.profile.special(special.name)
        if special.kind is not Kind.SPECIAL or layout is None:
            continue
        new = entries_by_owner(special.section, layout,
                               lambda r: _entry_target(diff, diff.patched, r, patched_key_of))
        old = entries_by_owner(special.twin, layout, lambda r: _entry_target(diff, diff.original, r, original_key_of)) \
            if special.twin is not None else {}
        for owner in sorted(old.keys() | new.keys()):
            state = by_key.get(owner)
            before, after = old.get(owner, []), new.get(owner, [])
            if state is None or state.status is not Status.SAME or before == after:
                continue
            if [e.shape for e in before] != [e.shape for e in after]:
                state.status = Status.CHANGED
                state.reasons.append(f"its {special.name} entries differ")
                continue
            moved = ", ".join(f"{a.line} -> {b.line}" for a, b in zip(before, after, strict=True) if a.line != b.line)
            owner_label = state.parent.label if state.parent else state.label
            diff.ignored.append(f"{diff.label}: {owner_label}: only __LINE__ differs (its {special.name} entry "
                                f"records line {moved}) [rule: line-only]; not patched")


def _entry_target(diff: ObjectDiff, elf: ElfFile, rela: Rela, key_of: dict[int, str]) -> Target:
    # Out-of-line code (.fixup) is one section per object: an entry's offset into it moves whenever
    # another function's fixup code changes, which says nothing about this entry's function.
    target = relocation_target(elf, rela, key_of)
    if target[0] == "section" and diff.profile.is_auxiliary(str(target[1])):
        return ("auxiliary", target[1])
    if target[0] == "string":
        # A table's displacement is relative to its entry or its field, not to the end of an
        # instruction: name the whole string the address falls in (a bug frame's file name).
        symbol = elf.symbols[rela.symbol]
        return ("string", containing_string(elf.sections[symbol.shndx], symbol.value + rela.addend))
    return target


def containing_string(section: Section, offset: int) -> bytes:
    if not 0 <= offset < len(section.data):
        return b"<outside %s>" % section.name.encode()
    start = section.data.rfind(b"\0", 0, offset) + 1
    return string_at(section, start)


def _propagate_changed_cold_parts(diff: ObjectDiff) -> None:
    # A .cold part is code of its parent: when only the part changed, the parent is what gets patched.
    for state in diff.functions():
        parent = state.parent
        if parent is not None and state.status is Status.CHANGED and parent.status is Status.SAME:
            parent.status = Status.CHANGED
            parent.reasons.append(f"its cold part {state.label} changed")
