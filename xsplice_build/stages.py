"""The pipeline's stages as functions of (project, baseline[, patch]): read records, write records.

Each stage reads the JSON records of the stages before it, does its work in its own
directory under work/, and writes its record last, so an interrupted stage leaves
no record and runs again. dodo.py wires these into doit tasks; nothing here knows
about doit.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import __version__, files, toolchain
from .baseline import Baseline, load_baseline, supplied_image
from .bringup import ImageReferences, bring_up_warning
from .build import SPLIT_SECTIONS_FLAGS, apply_patch, check_expected_build_id, prepare_tree, run_build
from .checkout import checkout
from .debuginfo import debug_objects
from .diff.engine import DebugPair, conclude, diff_pairs
from .diff.explain import explain_record, render
from .diff.extract import PatchedFunction
from .diff.profile import profile_named
from .elf.notes import image_build_id
from .elf.reader import read_elf_file
from .errors import BuildError, NothingToPatch, Unpatchable
from .files import copy_tree, read_json, relative, remove_tree, sha256_bytes, sha256_file, write_atomic, write_json
from .image import BaseImage
from .layout import apply_layout, baseline_layout, func_layout, probe_structs, wanted_structs
from .patches import patch_file
from .payload import make_payload
from .project import Project
from .sign import configured_keys, load_keys, make_development_keys, sign


class Records:
    """Where each stage keeps its record for one baseline (and patch)."""

    def __init__(self, project: Project, baseline: str, patch: str | None = None) -> None:
        self.project = project
        self.base = project.baseline_work(baseline)
        self.checkout = self.base / "checkout.json"
        self.build_base = self.base / "base.json"
        self.build_orig = self.base / "orig.json"
        self.bin = self.base / "bin"
        if patch is not None:
            self.patch_dir = project.patch_work(baseline, patch)
            self.patched = self.patch_dir / "patched.json"
            self.diff = self.patch_dir / "diff.json"
            # Every decision of the diff, also when it refuses: where an error line sends the user.
            self.explain_text = self.patch_dir / "diff.explain.txt"
            self.explain_json = self.patch_dir / "diff.explain.json"
            self.extract = self.patch_dir / "extract.o"
            self.payload = self.patch_dir / "payload.json"
            self.unsigned = self.patch_dir / f"{patch}.livepatch.unsigned"
            self.out_dir = project.patch_out(baseline, patch)
            self.signed = self.out_dir / f"{patch}.livepatch"
            self.report = self.out_dir / "report.json"


def stage_toolchain(project: Project) -> None:
    tools = toolchain.check(project.lock_path)
    write_json(project.toolchain_state, toolchain.state(tools, project.lock_path))


def stage_lock_toolchain(project: Project) -> None:
    toolchain.write_lock(project.lock_path, toolchain.probe())


def stage_dev_keys(project: Project) -> None:
    keys = configured_keys(project.root)
    if keys.development and not (keys.key.is_file() and keys.certificate.is_file()):
        make_development_keys(keys)


def stage_checkout(project: Project, baseline: str) -> None:
    result = checkout(project, load_baseline(project, baseline))
    write_json(Records(project, baseline).checkout, asdict(result))


def stage_build_base(project: Project, baseline: str) -> None:
    definition = load_baseline(project, baseline)
    records = Records(project, baseline)
    source = project.root / read_json(records.checkout, "checkout record")["tree"]
    tree = records.base / "base" / "tree"
    prepare_tree(project, definition, source, tree)
    # With split_sections = "base" the shipped build already has one section per function.
    output = run_build(definition, tree, _tools(project), "", records.base / "base" / "build.log", prepare=True,
                       bin_dir=records.bin)
    check_expected_build_id(definition, output)
    image = _trusted_image(definition, output.image, output.build_id)
    write_json(records.build_base, {
        "tree": relative(tree, project.root),
        "image": relative(image, project.root) if image.resolve().is_relative_to(project.root.resolve())
        else str(image.resolve()),
        "image_sha256": sha256_file(image),
        "build_id": output.build_id,
        "objects": output.objects,
        "layout": _layout(definition, tree, output.image),
    })


def _trusted_image(definition: Baseline, rebuilt: Path, build_id: str) -> Path:
    """The image payloads depend on: the user's own xen-syms, once the baseline rebuilds to its build-id."""
    supplied = supplied_image(definition.name)
    if supplied is None:
        return rebuilt
    theirs = image_build_id(read_elf_file(supplied)).hex()
    if theirs != build_id:
        raise BuildError(f"{supplied}: build-id {theirs}, but baseline {definition.name} rebuilds to {build_id}: "
                         "the image was not built from this source, configuration and toolchain, so a payload "
                         "built here would not match the code it runs")
    return supplied


def _layout(definition: Baseline, tree: Path, image: Path) -> dict[str, Any]:
    profile = profile_named(definition.profile)
    if definition.layout_probe is None:
        return baseline_layout(image, profile)
    compiler = shutil.which(definition.build.compiler) or definition.build.compiler
    probed = probe_structs(tree, definition.layout_probe, compiler, wanted_structs(profile))
    return baseline_layout(image, profile, probed)


def stage_build_orig(project: Project, baseline: str) -> None:
    definition = load_baseline(project, baseline)
    records = Records(project, baseline)
    if definition.build.split_sections == "base":
        base = read_json(records.build_base, "base build record")
        write_json(records.build_orig, {"tree": base["tree"], "objects": base["objects"], "built_by": "build-base"})
        return
    source = project.root / read_json(records.checkout, "checkout record")["tree"]
    tree = records.base / "orig" / "tree"
    prepare_tree(project, definition, source, tree)
    output = run_build(definition, tree, _tools(project), SPLIT_SECTIONS_FLAGS, records.base / "orig" / "build.log",
                       prepare=True, bin_dir=records.bin)
    write_json(records.build_orig, {"tree": relative(tree, project.root), "objects": output.objects,
                                    "built_by": "build-orig"})


def stage_build_patched(project: Project, baseline: str, patch: str) -> None:
    definition = load_baseline(project, baseline)
    records = Records(project, baseline, patch)
    files.remove_temporaries(records.patch_dir)  # the stages of one pair run one after another
    source = patch_file(project, patch, baseline)
    orig = read_json(records.build_orig, "original build record")
    tree = records.patch_dir / "tree"
    copy_tree(project.root / orig["tree"], tree)
    touched = apply_patch(source, tree)
    flags = SPLIT_SECTIONS_FLAGS if definition.build.split_sections == "wrapper" else ""
    output = run_build(definition, tree, _tools(project), flags, records.patch_dir / "build.log", prepare=False,
                       bin_dir=records.bin)
    objects_dir = records.patch_dir / "objects"
    remove_tree(objects_dir)
    changed = []
    for name, digest in sorted(output.objects.items()):
        if orig["objects"].get(name) == digest:
            continue
        kept = objects_dir / f"{name}.XSPLICE"
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tree / name, kept)
        changed.append({"object": name, "original": name if name in orig["objects"] else None,
                        "original_sha256": orig["objects"].get(name), "patched_sha256": digest})
    # The struct-layout rule reads DWARF: compile the changed units again with -g, before the tree goes.
    remove_tree(records.patch_dir / "debug")
    debug = debug_objects(definition, changed, project.root / orig["tree"], tree, records.base / "debug",
                          records.patch_dir, project.root)
    # The objects are all the later stages need; a patched tree of a real hypervisor is large.
    remove_tree(tree)
    write_json(records.patched, {"patch": patch, "patch_sha256": sha256_file(source), "touched": touched,
                                 "recompiled": sorted(output.objects), "changed": changed, "debug": debug})


def stage_diff(project: Project, baseline: str, patch: str) -> None:
    definition = load_baseline(project, baseline)
    records = Records(project, baseline, patch)
    files.remove_temporaries(records.patch_dir)  # the stages of one pair run one after another
    patched = read_json(records.patched, "patched build record")
    orig_tree = project.root / read_json(records.build_orig, "original build record")["tree"]
    layout = read_json(records.build_base, "base build record")["layout"]
    pairs: list[tuple[str, Path | None, Path]] = []
    for change in patched["changed"]:
        original = orig_tree / change["original"] if change["original"] else None
        pairs.append((change["object"], original, records.patch_dir / "objects" / f"{change['object']}.XSPLICE"))
    debug = {name: DebugPair(project.root / entry["original"] if entry["original"] else None,
                             project.root / entry["patched"]) for name, entry in patched.get("debug", {}).items()}
    diffs = diff_pairs(pairs, apply_layout(profile_named(definition.profile), layout), debug)
    explained = [explain_record(diff) for diff in diffs]
    _write_explanation(project, records, patch, explained)
    try:
        result = conclude(diffs)
    except (NothingToPatch, Unpatchable) as refusal:
        where = records.explain_text.relative_to(project.root)
        raise refusal.with_note(f"every decision is in {where}") from None
    # Extraction resolved the base-image references: record the decisions again, now complete.
    explained = [explain_record(diff) for diff in diffs]
    _add_bring_up_warnings(project, records, definition, result.functions, explained)
    _write_explanation(project, records, patch, explained)
    write_atomic(records.extract, result.extract)
    write_json(records.diff, {
        "functions": [asdict(function) for function in result.functions],
        "objects": explained,
        "extract_sha256": sha256_bytes(result.extract),
    })


def _add_bring_up_warnings(project: Project, records: Records, definition: Baseline,
                           functions: list[PatchedFunction], explained: list[dict[str, Any]]) -> None:
    """Each patched function that only CPU bring-up runs, found from the base image's callers and tables."""
    base = read_json(records.build_base, "base build record")
    references = ImageReferences(read_elf_file(project.root / base["image"]), profile_named(definition.profile))
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


def stage_payload(project: Project, baseline: str, patch: str) -> None:
    definition = load_baseline(project, baseline)
    records = Records(project, baseline, patch)
    files.remove_temporaries(records.patch_dir)  # the stages of one pair run one after another
    diff = read_json(records.diff, "diff record")
    base = read_json(records.build_base, "base build record")
    image = BaseImage.load(project.root / base["image"])
    functions = [PatchedFunction(**function) for function in diff["functions"]]
    profile = profile_named(definition.profile)
    layout = func_layout(base["layout"], profile.livepatch_payload_version)
    payload = make_payload(records.extract.read_bytes(), functions, image, profile, layout)
    write_atomic(records.unsigned, payload.data)
    write_json(records.payload, {**payload.record(), "unsigned": records.unsigned.name,
                                  "sha256": sha256_bytes(payload.data)})


def stage_sign(project: Project, baseline: str, patch: str) -> list[str]:
    """Sign and publish to out/; returns warnings (a loosely protected key) for the user."""
    definition = load_baseline(project, baseline)
    records = Records(project, baseline, patch)
    files.remove_temporaries(records.out_dir)
    keys = configured_keys(project.root)
    key, certificate, warnings = load_keys(keys)
    unsigned = records.unsigned.read_bytes()
    signed = sign(unsigned, key, certificate)
    report = _report(project, definition, records, patch, unsigned, signed, keys.certificate)
    write_atomic(records.signed, signed)
    write_json(records.report, report)
    return warnings


def _report(project: Project, definition: Baseline, records: Records, patch: str, unsigned: bytes, signed: bytes,
            certificate: Path) -> dict[str, Any]:
    checkout_record = read_json(records.checkout, "checkout record")
    base = read_json(records.build_base, "base build record")
    payload = read_json(records.payload, "payload record")
    diff = read_json(records.diff, "diff record")
    patched = read_json(records.patched, "patched build record")
    new_functions = sorted({f"{entry['object']}: {name}" for entry in diff["objects"]
                            for name in entry["new_functions"]})
    return {
        "patch": patch,
        "baseline": definition.name,
        "commit": checkout_record["commit"],
        "source": checkout_record["source"],
        "patch_sha256": patched["patch_sha256"],
        "base_build_id": base["build_id"],
        "base_image": _path_for_report(project.root / base["image"], records.out_dir),
        "base_image_sha256": base["image_sha256"],
        "toolchain_lock_sha256": toolchain.lock_digest(project.lock_path),
        "functions": [{"name": f["name"], "old_size": f["old_size"], "new_size": f["new_size"],
                       "old_addr": f"{f['old_addr']:#x}", "object": f["object"]} for f in payload["functions"]],
        "new_functions": new_functions,
        "objects_changed": [entry["object"] for entry in diff["objects"]],
        "warnings": [w for entry in diff["objects"] for w in entry["warnings"] + entry.get("bring_up", [])],
        "ignored": [i for entry in diff["objects"] for i in entry["ignored"]],
        "payload_build_id": payload["build_id"],
        "unsigned_payload_sha256": sha256_bytes(unsigned),
        "payload_sha256": sha256_bytes(signed),
        "payload": records.signed.name,
        "signer_certificate": _path_for_report(certificate, records.out_dir),
        "xsplice_build_version": __version__,
    }


def _path_for_report(path: Path, report_dir: Path) -> str:
    """Relative to report.json when both live in this checkout (so the tree can move), else absolute."""
    resolved, root = path.resolve(), report_dir.resolve().parents[2]
    return os.path.relpath(resolved, report_dir.resolve()) if resolved.is_relative_to(root) else str(resolved)


def _tools(project: Project) -> dict[str, toolchain.Tool]:
    recorded = read_json(project.toolchain_state, "toolchain check record")
    return {name: toolchain.Tool(**tool) for name, tool in recorded["tools"].items()}
