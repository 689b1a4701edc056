"""The diff's part that runs inside the build sandbox (sandbox.py): it reads objects a patch's build shaped.

steps.py runs it through `sandbox.run_stage` and writes the diff record from what it returns.
It writes the explanation (also when it refuses) and the extracted code in the pair's directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..diff.engine import DebugPair, conclude, diff_pairs
from ..diff.explain import explain_record, render
from ..diff.profile import TargetProfile
from ..elf.reader import read_elf_file
from ..errors import NothingToPatch, Unpatchable
from ..files import sha256_bytes, write_atomic, write_json
from ..project import Project
from ..records import (
    BaseRecord,
    DiffRecord,
    ExplainedObject,
    OrigRecord,
    PatchedFunction,
    PatchedRecord,
    Records,
    kept_object,
)
from ..target.baseline import load_baseline
from ..target.bringup import ImageReferences, bring_up_warning
from ..target.layout import apply_layout


def diff_objects(project: Project, baseline: str, patch: str) -> dict[str, Any]:
    """The diff: it reads objects a patch's build shaped. Writes the explanation and the extract."""
    definition = load_baseline(project, baseline)
    records = Records(project, baseline, patch)
    patched = PatchedRecord.read(records.patched)
    orig_tree = project.root / OrigRecord.read(records.build_orig).tree
    layout = BaseRecord.read(records.build_base).layout
    pairs: list[tuple[str, Path | None, Path]] = []
    for change in patched.changed:
        original = orig_tree / change.original if change.original else None
        if change.original_file:  # an object the stack changed: diffed against the stack's version
            original = project.root / change.original_file
        pairs.append((change.object, original, kept_object(records.patch_dir, change.object)))
    debug = {name: DebugPair(project.root / entry.original if entry.original else None,
                             project.root / entry.patched) for name, entry in patched.debug.items()}
    diffs = diff_pairs(pairs, apply_layout(definition.target(), layout), debug)
    try:
        result = conclude(diffs)  # extraction resolves the base-image references the explanation lists
    except (NothingToPatch, Unpatchable) as refusal:
        _write_explanation(project, records, patch, [explain_record(diff) for diff in diffs])
        where = records.explain_text.relative_to(project.root)
        raise refusal.with_note(f"every decision is in {where}") from None
    explained = [explain_record(diff) for diff in diffs]
    _add_bring_up_warnings(project, records, definition.target(), result.functions, explained)
    _write_explanation(project, records, patch, explained)
    write_atomic(records.extract, result.extract)
    objects = [ExplainedObject.from_json(record, f"{records.explain_json} object {index}")
               for index, record in enumerate(explained)]
    return DiffRecord(functions=result.functions, objects=objects, extract_sha256=sha256_bytes(result.extract),
                      defined=result.defined).to_json()


def _add_bring_up_warnings(project: Project, records: Records, profile: TargetProfile,
                           functions: list[PatchedFunction], explained: list[dict[str, Any]]) -> None:
    """Each patched function that only CPU bring-up runs, found from the base image's callers and tables."""
    image = project.root / BaseRecord.read(records.build_base).image
    references = ImageReferences(read_elf_file(image), profile)
    by_object = {record["object"]: record for record in explained}
    for record in explained:
        record["bring_up"] = []
    for function in functions:
        warning = bring_up_warning(references, function.name)
        if warning is not None:
            by_object[function.object]["bring_up"].append(f"{function.object}: {warning}")


def _write_explanation(project: Project, records: Records, patch: str, explained: list[dict[str, Any]]) -> None:
    lines = [f"diff of patch {patch}: {len(explained)} changed object(s)"]
    if not explained:
        lines.append("  no compiled object differs: the patch changes comments, whitespace, or files not built")
    for record in explained:
        lines.extend(render(record))
    write_json(records.explain_json, {"patch": patch, "objects": explained})
    write_atomic(records.explain_text, ("\n".join(lines) + "\n").encode())
