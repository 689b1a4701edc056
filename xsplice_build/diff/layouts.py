"""The struct-layout rule: a changed structure that changed or new code uses is refused.

The running hypervisor's objects (a struct domain, a file's private table) were laid
out by the original source. When the patch moves, resizes, removes or adds a member
of an aggregate, code compiled from the patched source reads those objects at the new
offsets: wrong, whether or not the object's own section changed. The two type tables
(types.py: the DWARF of the original and patched translation unit) are compared
aggregate by aggregate; every changed or new function that reaches a changed aggregate
(through its parameters, locals, inlined callees, the variables it references, and
from there through members, embedded or pointed to) depends on it. A layout that no
changed or new function reaches is noted and not refused: the unchanged code the base
image runs was compiled for the old layout and stays as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from .state import ObjectDiff, SectionState
from .types import Member, TypeLayout, TypeTable


@dataclass(frozen=True)
class TypeComparison:
    key: str
    status: str  # "same", "changed", "compatible" (enumerators appended), "new" (only in the patched unit)
    differences: tuple[str, ...] = ()
    users: tuple[str, ...] = ()  # changed and new functions that reach it


def compare_layouts(old: TypeLayout, new: TypeLayout) -> tuple[str, list[str]]:
    """("same" | "changed" | "compatible", what differs) for two layouts of one aggregate."""
    differences: list[str] = []
    if old.size != new.size:
        differences.append(f"size {old.size:#x} -> {new.size:#x}")
    if old.enumerators or new.enumerators:
        before, after = dict(old.enumerators), dict(new.enumerators)
        for name, value in old.enumerators:
            if name not in after:
                differences.append(f"enumerator {name} removed (was {value})")
            elif after[name] != value:
                differences.append(f"enumerator {name} {value} -> {after[name]}")
        added = [name for name, _ in new.enumerators if name not in before]
        if not differences and added:
            return "compatible", [f"enumerator(s) {', '.join(added)} appended"]
        return ("changed" if differences else "same"), differences
    differences.extend(_member_differences(old.members, new.members))
    return ("changed" if differences else "same"), differences


def _member_differences(old: tuple[Member, ...], new: tuple[Member, ...]) -> list[str]:
    before, after = _by_name(old), _by_name(new)
    differences = []
    for name, member in after.items():
        if name not in before:
            differences.append(f"member {member.name or '(unnamed)'} added at +{member.offset:#x} "
                               f"(size {member.size:#x}, {member.type})")
    for name, member in before.items():
        if name not in after:
            differences.append(f"member {member.name or '(unnamed)'} removed (was at +{member.offset:#x}, "
                               f"size {member.size:#x})")
            continue
        now = after[name]
        if now.offset != member.offset or now.bits != member.bits:
            differences.append(f"member {member.name} moved {_place(member)} -> {_place(now)}")
        if now.size != member.size:
            differences.append(f"member {member.name} {member.type} (size {member.size:#x}) -> "
                               f"{now.type} (size {now.size:#x})")
    return differences


def _place(member: Member) -> str:
    """+offset, or for a bit-field the bit it starts at within the aggregate."""
    return f"+{member.offset:#x}" if member.bits is None else f"bit {member.bits[0]}"


def _by_name(members: tuple[Member, ...]) -> dict[str, Member]:
    named: dict[str, Member] = {}
    for index, member in enumerate(members):
        named[member.name or f"#{index}"] = member
    return named


def check_struct_layouts(diff: ObjectDiff, old: TypeTable, new: TypeTable) -> list[TypeComparison]:
    """Compare every aggregate of both units; refuse the changed ones that changed or new code reaches."""
    users_by_function = _code_uses(diff, new)
    comparisons: list[TypeComparison] = []
    changed: list[str] = []
    for key in sorted(new.layouts):
        if key not in old.layouts:
            comparisons.append(TypeComparison(key, "new"))
            continue
        status, differences = compare_layouts(old.layouts[key], new.layouts[key])
        if status == "changed":
            changed.append(key)
            dependents = new.users_of(key)
            users = tuple(sorted(name for name, uses in users_by_function.items() if uses & dependents))
            comparisons.append(TypeComparison(key, status, tuple(differences), users))
        else:
            comparisons.append(TypeComparison(key, status, tuple(differences)))
    containers = {key: [k for k in changed if k != key and key in new.reaches.get(k, ())] for key in changed}
    # The innermost change first: a member inserted into struct vcpu is the cause, struct domain's
    # moved members (it embeds vcpus) follow from it.
    by_cause = sorted((c for c in comparisons if c.status == "changed"),
                      key=lambda c: (sum(c.key in containers[k] for k in changed), c.key))
    for comparison in by_cause:
        _decide(diff, comparison, containers[comparison.key])
    return comparisons


def _decide(diff: ObjectDiff, comparison: TypeComparison, containers: list[str]) -> None:
    what = "; ".join(comparison.differences)
    inside = f"; inside {', '.join(containers)}, which changed too" if containers else ""
    if not comparison.users:
        diff.ignored.append(f"{diff.label}: {comparison.key}: layout changed ({what}){inside}, but no changed or new "
                            "function uses it [rule: struct-layout]; not refused: the base image's code keeps the "
                            "old layout")
        return
    count = len(comparison.users)
    shown = ", ".join(comparison.users[:5]) + (f" and {count - 5} more" if count > 5 else "")
    diff.refusals.append(
        f"{diff.label}: {comparison.key}: layout changed ({what}){inside}; {count} changed or new "
        f"function(s) depend on it ({shown}) [rule: struct-layout]; the running hypervisor's objects keep the "
        "old layout: leave the structure as it is (use spare room or a side table) and change the code")


def _code_uses(diff: ObjectDiff, table: TypeTable) -> dict[str, set[str]]:
    """Each changed or new function (by its base-image name) -> the aggregates it uses directly."""
    uses: dict[str, set[str]] = {}
    for state in diff.changed_functions() + diff.new_functions():
        if not state.included:
            continue
        name = _source_name(state)
        used = set(table.functions.get(name, set()))
        for part in [state] + [s for s in diff.functions() if s.parent is state]:
            for rela in part.section.relocations:
                target = diff.patched.symbols[rela.symbol]
                used |= table.variables.get(target.name, set())
        label = state.twin_symbol.xen_name if state.twin_symbol else state.label
        uses[label] = used
    return uses


def _source_name(state: SectionState) -> str:
    """The function's name in the source (and so in DWARF): without gcc's clone and part suffixes."""
    return state.label.split(".")[0]
