"""Pass 4, verify: what a live patch cannot do, each rule a named predicate with its reason.

Every rule adds a one-line refusal naming the object, the symbol and the rule, and
what to do instead; the engine raises them together, so a user fixes all in one go.
"""

from __future__ import annotations

from ..elf.constants import relocation_name
from ..elf.model import ElfFile, Section, Symbol
from .correlate import normalise
from .include import kept_special_entries
from .state import Kind, ObjectDiff, SectionState, Status

# Every rule the diff cites as [rule: ID], with what it guards. Refusals stop the build; the
# others (init-only, line-only) are notes in the report on what was left out and why.
RULES = {
    "jump-room": "refused: the old function is shorter than the patching jump (after ENDBR64 under CET)",
    "changed-data": "refused: initialized or zeroed data of the running hypervisor changed",
    "data-layout": "refused: existing data changed size (a structure's layout changed)",
    "struct-layout": "refused: a struct, union or enum that changed or new code uses changed its layout "
                     "(a note when no such code uses it)",
    "new-data": "refused: a changed function needs a variable the base image does not have",
    "relocation-type": "refused: included code needs a relocation the target's loader does not apply",
    "unsupported-table": "refused: a patched function has entries in a table the target's loader ignores",
    "section-limit": "refused: the payload has as many sections as Xen's loader refuses (1024)",
    "size-limit": "refused: the payload is larger than Xen's loader takes (LIVEPATCH_MAX_SIZE, 2 MiB)",
    "init-only": "ignored with a warning: only init code changed, which ran at boot and is freed",
    "hooks-unsupported": "refused: a hook section the baseline's loader does not run (or holds one pointer only)",
    "line-only": "not patched: the only difference is a __LINE__ value (a bug frame, a printk argument)",
    "bring-up-only": "warning: a patched function runs only at CPU bring-up or resume (from the base image's "
                     "callers and tables), so CPUs already online keep the old behaviour",
}


def verify(diff: ObjectDiff) -> None:
    for state in diff.states.values():
        _changed_data(diff, state)
        _new_data(diff, state)
        _init_only_change(diff, state)
        if state.included:
            _relocation_types(diff, state)
    for state in diff.changed_functions():
        if state.included:
            _room_for_the_jump(diff, state)
    for state in diff.states.values():
        if state.kind is Kind.SPECIAL:
            _unsupported_table(diff, state)
        if state.kind is Kind.HOOK and state.included:
            _hook(diff, state)
    for state in diff.states.values():
        if state.kind is Kind.STRINGS and state.status is Status.CHANGED and not state.included:
            diff.ignored.append(f"{diff.label}: {state.name}: string literals differ but no changed function uses them")


def _room_for_the_jump(diff: ObjectDiff, state: SectionState) -> None:
    # Xen overwrites the first bytes of the old function with `jmp new` (arch_livepatch_apply);
    # a shorter function would have its neighbour overwritten.
    old = state.twin_symbol
    if old is None or state.twin is None:
        return
    _, needed = diff.profile.jump_room(state.twin.data[old.value:old.value + old.size])
    if old.size < needed:
        endbr = " after its ENDBR64" if needed > diff.profile.jump_size else ""
        diff.refusals.append(
            f"{diff.label}: {old.name}: function is {old.size} bytes, too small for the "
            f"{diff.profile.jump_size}-byte jump{endbr} ({needed} bytes) [rule: jump-room]; "
            "change its callers instead, or make it larger (noinline padding)")


def _unsupported_table(diff: ObjectDiff, state: SectionState) -> None:
    layout = diff.profile.special(state.name)
    if layout is None or layout.loader_supported or not kept_special_entries(diff, state):
        return
    diff.refusals.append(
        f"{diff.label}: {state.name}: a patched function has entries here, which the {diff.profile.name} "
        "loader does not process [rule: unsupported-table]; keep such code out of the patched functions")


def _hook(diff: ObjectDiff, state: SectionState) -> None:
    # A loader without the hook would load the payload and silently never run it.
    profile = diff.profile
    if state.name not in profile.hook_sections:
        runs = ", ".join(name.removeprefix(".livepatch.hooks.") for name in profile.hook_sections) or "no hooks"
        diff.refusals.append(
            f"{diff.label}: {state.name}: this baseline's loader does not run such hooks (it runs: {runs}) "
            "[rule: hooks-unsupported]; do the work in the patched code, or target a loader that has them")
    elif state.name in profile.single_hooks and len(state.section.data) != 8:
        diff.refusals.append(
            f"{diff.label}: {state.name}: {len(state.section.data)} bytes, but the loader takes exactly one "
            "pointer there [rule: hooks-unsupported]; declare one such hook per payload")


def _changed_data(diff: ObjectDiff, state: SectionState) -> None:
    # The running hypervisor owns its data: the payload's copy would be a second variable that
    # the old code never sees, and the live one cannot be rewritten or resized under its users.
    if state.kind is not Kind.DATA or state.status is not Status.CHANGED:
        return
    if diff.profile.is_init_section(state.name):
        diff.warnings.append(
            f"{diff.label}: {state.label}: change to init-only data ignored (used at boot only) [rule: init-only]")
        return
    if state.variable_changes is not None:
        shared = len(diff.patched.variables_in(state.section.index)) > 1
        for name, (status, why) in state.variable_changes.items():
            if status in ("resized", "changed"):
                _refuse_data(diff, f"{name} in {state.name}" if shared else name, status == "resized", why)
        return
    resized = state.twin is not None and state.twin.size != state.section.size
    _refuse_data(diff, _data_label(diff, state), resized, "; ".join(state.reasons))


def _refuse_data(diff: ObjectDiff, what: str, resized: bool, why: str) -> None:
    rule, change = ("data-layout", "changed layout of existing data") if resized else ("changed-data", "changed data")
    diff.refusals.append(
        f"{diff.label}: {what}: {change} ({why}) [rule: {rule}]; "
        "the running hypervisor owns this state and a payload cannot rewrite or resize it: keep the "
        "data as it is and change the code that uses it")


def _data_label(diff: ObjectDiff, state: SectionState) -> str:
    """What changed, by name, when a section holds several symbols (.data.read_mostly, .init.text)."""
    if state.symbol is not None or state.twin is None:
        return state.label
    changed = changed_symbols(diff, state)
    return f"{', '.join(changed)} in {state.name}" if changed else state.label


def changed_symbols(diff: ObjectDiff, state: SectionState) -> list[str]:
    """The named symbols of a shared section whose bytes or relocations differ from their twins'."""
    assert state.twin is not None
    old_by_name = {s.name: s for s in diff.original.symbols_in(state.twin.index) if s.name}
    changed = []
    for new in diff.patched.symbols_in(state.section.index):
        old = old_by_name.get(new.name)
        if not new.name or new.is_section or new.is_file or new.name.startswith(".L"):
            continue
        if old is None or _symbol_bytes(diff.original, state.twin, old) != _symbol_bytes(diff.patched,
                                                                                          state.section, new):
            changed.append(new.name)
    return changed


def _symbol_bytes(elf: ElfFile, section: Section, symbol: Symbol) -> tuple[bytes, tuple[object, ...]]:
    """A symbol's bytes, and its relocations by symbol-relative offset, type and target name."""
    start, end = symbol.value, symbol.value + max(symbol.size, 1)
    relocations = tuple((r.offset - start, r.type, _target_name(elf, r.symbol), r.addend)
                        for r in section.relocations if start <= r.offset < end)
    return section.data[start:end], relocations


def _target_name(elf: ElfFile, index: int) -> str:
    target = elf.symbols[index]
    if target.is_section and not target.is_special_index and not target.is_undefined:
        return normalise(elf.sections[target.shndx].name)
    return normalise(target.name)


def _new_data(diff: ObjectDiff, state: SectionState) -> None:
    # Not supported: a variable in the payload starts from its initializer, and vanishes on revert
    # while patched code may still be running with pointers into it.
    if state.kind is not Kind.DATA or diff.profile.is_init_section(state.name):
        return
    for name, users in sorted(state.new_variable_users.items()):
        diff.refusals.append(
            f"{diff.label}: {name}: new variable (in {state.name}, which the base image has without it) used by "
            f"{', '.join(sorted(set(users)))} [rule: new-data]; a payload's variables start fresh and are lost on "
            "revert: use existing state, or a constant")
    if state.status is not Status.NEW or not state.reasons:
        return
    users = ", ".join(reason.removeprefix("new data used by ") for reason in state.reasons)
    diff.refusals.append(
        f"{diff.label}: {state.label}: new variable used by {users} [rule: new-data]; a payload's "
        "variables start fresh and are lost on revert: use existing state, or a constant")


def _init_only_change(diff: ObjectDiff, state: SectionState) -> None:
    if state.kind is not Kind.FUNCTION or state.status is Status.SAME:
        return
    # Init code ran at boot and its memory is freed: there is nothing left to patch (kpatch ignores it too).
    if diff.profile.is_init_section(state.name):
        diff.warnings.append(
            f"{diff.label}: {_data_label(diff, state)}: change to init-only code ignored (it ran at boot and is gone) "
            "[rule: init-only]")


def _relocation_types(diff: ObjectDiff, state: SectionState) -> None:
    # The loader applies only the relocation types it knows; anything else would be left unresolved.
    for rela in state.section.relocations:
        if rela.type not in diff.profile.accepted_relocations:
            diff.refusals.append(
                f"{diff.label}: {state.label}+{rela.offset:#x}: {relocation_name(rela.type)} is not accepted "
                f"by the {diff.profile.name} loader [rule: relocation-type]; build with -fpic and hidden "
                "visibility, as Xen does")
            return
