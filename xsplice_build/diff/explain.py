"""Why the diff decided what it did: a record per object, and a readable rendering of it."""

from __future__ import annotations

from typing import Any

from .include import kept_special_entries
from .state import Kind, ObjectDiff, SectionState, Status, classify


def explain_record(diff: ObjectDiff) -> dict[str, Any]:
    """Every decision for one object pair, as plain data (report.json, --json)."""
    states = sorted(diff.states.values(), key=lambda s: s.section.index)
    return {
        "object": diff.label,
        "correlated": [{"section": s.name, "twin": s.twin.name, "how": s.how} for s in states if s.twin],
        "uncorrelated": [s.name for s in states if s.twin is None],
        "removed": _removed(diff),
        "not_diffed": [s.name for s in diff.patched.sections[1:] if classify(s, diff.profile) is Kind.IGNORED],
        "changed": [{"section": s.name, "symbol": s.label, "kind": s.kind.value, "reasons": s.reasons}
                    for s in states if s.status is Status.CHANGED],
        "changed_functions": [s.twin_symbol.xen_name if s.twin_symbol else s.label
                              for s in diff.changed_functions() if s.included],
        "new_functions": [s.label for s in diff.new_functions() if s.included],
        "included": [{"section": s.name, "why": s.why} for s in states if s.included],
        "special_entries": [_special_record(diff, s) for s in states
                            if s.kind is Kind.SPECIAL and kept_special_entries(diff, s)],
        "base_references": sorted(diff.base_references),
        "ignored": list(diff.ignored),
        "warnings": list(diff.warnings),
        "refusals": list(diff.refusals),
        "types": _types_record(diff),
    }


def _types_record(diff: ObjectDiff) -> dict[str, Any] | None:
    """The struct-layout comparison: every aggregate that differs, and how many were the same."""
    if diff.types is None:
        return None
    return {"same": sum(1 for t in diff.types if t.status == "same"),
            "new": [t.key for t in diff.types if t.status == "new"],
            "differ": [{"type": t.key, "status": t.status, "differences": list(t.differences),
                        "used_by": list(t.users)} for t in diff.types if t.status in ("changed", "compatible")]}


def render(record: dict[str, Any]) -> list[str]:
    """The record as lines a person reads top to bottom."""
    lines = [f"object {record['object']}:"]
    for item in record["correlated"]:
        lines.append(f"  correlated  {item['section']} <-> {item['twin']} ({item['how']})")
    for name in record["uncorrelated"]:
        lines.append(f"  new         {name} (no counterpart in the original)")
    for name in record["removed"]:
        lines.append(f"  removed     {name} (no counterpart in the patched object; the base image keeps it)")
    for item in record["changed"]:
        lines.append(f"  changed     {item['symbol']} [{item['kind']}]: {'; '.join(item['reasons'])}")
    for item in record["included"]:
        lines.append(f"  included    {item['section']}: {item['why']}")
    for item in record["special_entries"]:
        lines.append(f"  carried     {item['kept']} of {item['entries']} {item['section']} entries "
                     f"(those of {', '.join(item['owners'])})")
    for name in record["base_references"]:
        lines.append(f"  references  {name} (in the base image)")
    if record["not_diffed"]:
        lines.append(f"  not diffed  {len(record['not_diffed'])} sections: debug information, notes, relocation "
                     "and symbol tables (never carried)")
    lines.extend(_render_types(record.get("types")))
    for text in record["ignored"]:
        lines.append(f"  ignored     {text}")
    for text in record["warnings"] + record.get("bring_up", []):
        lines.append(f"  warning     {text}")
    for text in record["refusals"]:
        lines.append(f"  refused     {text}")
    return lines




def _render_types(types: dict[str, Any] | None) -> list[str]:
    if types is None:
        return ["  types       not compared: no debug information for this object"]
    lines = []
    for item in types["differ"]:
        users = f"; used by {', '.join(item['used_by'])}" if item["used_by"] else "; used by no changed or new function"
        lines.append(f"  type        {item['type']} {item['status']}: {'; '.join(item['differences'])}{users}")
    if types["new"]:
        lines.append(f"  type        new in the patched unit (no old layout to keep): {', '.join(types['new'])}")
    lines.append(f"  types       {types['same']} aggregate(s) with the same layout in both units")
    return lines


def _special_record(diff: ObjectDiff, special: SectionState) -> dict[str, Any]:
    """Which entries of a special section travel: only those of included code."""
    layout = diff.profile.special(special.name)
    assert layout is not None
    kept = kept_special_entries(diff, special)
    anchors = {rela.offset: rela for rela in special.section.relocations}
    owners = set()
    for offset in kept:
        target = diff.state_of(diff.patched.symbols[anchors[offset + layout.anchor].symbol].shndx)
        if target is not None:
            owners.add(target.parent.label if target.parent else target.label)
    return {"section": special.name, "kept": len(kept), "entries": special.section.size // layout.entry_size,
            "owners": sorted(owners)}


def _removed(diff: ObjectDiff) -> list[str]:
    """Sections of the original with no counterpart in the patched object, in section order."""
    twins = {id(s.twin) for s in diff.states.values() if s.twin is not None}
    return [section.name for section in sorted(diff.original_keys.values(), key=lambda s: s.index)
            if id(section) not in twins]
