"""Pass 3, include: from the changed and new functions, take along everything they need.

Starting from each changed or new function (and the .cold part that belongs to it),
follow relocations. A target is either carried in the payload (new code, string
literals, jump tables, anything without a name in the base image) or referenced in
the base image by the name Xen's symbol table gives it. Entries of the target's
special sections (bug frames, exception table) come along with their function and
no others do.
"""

from __future__ import annotations

from collections import deque

from ..elf.model import Rela
from .compare import referenced_offset
from .correlate import normalise
from .state import Kind, ObjectDiff, SectionState, Status


def include(diff: ObjectDiff) -> None:
    queue: deque[SectionState] = deque()

    def take(state: SectionState, why: str) -> None:
        if not state.included:
            state.included = True
            state.why = why
            queue.append(state)

    for state in diff.functions():
        if state.parent is not None or diff.profile.is_init_section(state.name):
            continue
        if state.status is Status.CHANGED:
            take(state, "changed: " + "; ".join(state.reasons))
        elif state.status is Status.NEW:
            take(state, "new function")
    for state in diff.states.values():
        # A hook the patch adds: carried, and the functions it points at with it (as new functions).
        if state.kind is Kind.HOOK and state.status is Status.NEW:
            take(state, "hook the loader runs")
    specials = [s for s in diff.states.values() if s.kind is Kind.SPECIAL]
    cold_parts: dict[int, list[SectionState]] = {}
    for part in diff.functions():
        if part.parent is not None:
            cold_parts.setdefault(id(part.parent), []).append(part)
    # Kept special entries may need more (a bug frame names its file's string): repeat until still.
    while queue:
        while queue:
            state = queue.popleft()
            for part in cold_parts.get(id(state), []):
                take(part, f"cold part of {state.label}")
            for rela in state.section.relocations:
                _follow(diff, state, rela, take)
        for special in specials:
            for rela in kept_special_relocations(diff, special):
                _follow(diff, special, rela, take)


def kept_special_entries(diff: ObjectDiff, special: SectionState) -> list[int]:
    """Offsets of the entries of a special section whose anchor points into included code."""
    layout = diff.profile.special(special.name)
    assert layout is not None
    anchors = {rela.offset: rela for rela in special.section.relocations}
    kept = []
    # The bytes the file holds, not sh_size: an SHT_NOBITS section may claim any size.
    for offset in range(0, len(special.section.data) - layout.entry_size + 1, layout.entry_size):
        anchor = anchors.get(offset + layout.anchor)
        if anchor is None:
            continue
        target = diff.state_of(diff.patched.symbols[anchor.symbol].shndx)
        if target is not None and target.kind is Kind.FUNCTION and target.included:
            kept.append(offset)
    return kept


def kept_special_relocations(diff: ObjectDiff, special: SectionState) -> list[Rela]:
    layout = diff.profile.special(special.name)
    assert layout is not None
    starts = set(kept_special_entries(diff, special))
    return [rela for rela in special.section.relocations
            if rela.offset - rela.offset % layout.entry_size in starts]


def base_reference(diff: ObjectDiff, target: SectionState) -> str | None:
    """The base image's name for an unchanged section's symbol, or None when it has none."""
    if target.status is not Status.SAME or target.twin_anchor is None or target.anchor is None:
        return None
    return target.twin_anchor.xen_name


def _follow(diff: ObjectDiff, source: SectionState, rela: Rela, take) -> None:  # type: ignore[no-untyped-def]
    symbol = diff.patched.symbols[rela.symbol]
    if symbol.is_undefined or symbol.is_special_index:
        return
    target = diff.state_of(symbol.shndx)
    if target is None or target.included:
        return
    if target.kind is Kind.STRINGS:
        take(target, f"string literals used by {source.label}")
    elif target.kind is Kind.AUXILIARY:
        take(target, f"out-of-line code or data used by {source.label}")
    elif target.kind is Kind.FUNCTION:
        if target.parent is not None:
            take(target, f"cold part of {target.parent.label}")
        elif target.status is not Status.SAME:
            take(target, f"{target.status.value} function called by {source.label}")
        elif base_reference(diff, target) is None:
            take(target, f"used by {source.label} and has no symbol to reference in the base image")
    elif target.kind is Kind.RODATA:
        if target.status is not Status.SAME or base_reference(diff, target) is None:
            take(target, f"read-only data used by {source.label}")
    elif target.kind is Kind.DATA and target.status is Status.NEW:
        # Decided by the rules pass (a new variable): recorded here so the refusal can name its user.
        target.reasons.append(f"new data used by {source.label}")
    elif target.kind is Kind.DATA and target.variable_changes:
        variable = diff.patched.symbol_containing(symbol.shndx, referenced_offset(rela, symbol.value, source.section))
        if variable is not None and target.variable_changes.get(normalise(variable.name), ("",))[0] == "new":
            target.new_variable_users.setdefault(variable.name, []).append(source.label)
