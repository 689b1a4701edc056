"""The parts of build-orig and build-patched that run inside the build sandbox (sandbox.py).

steps.py runs each through `sandbox.run_stage` and writes the stage's record from what it
returns, outside the sandbox. This module imports only what these parts need: it is what the
sandbox's Python loads (no git, no signing code, no diff, no layouts: sandboxed_base.py).
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from ..files import read_json, relative, remove_tree, sha256_file
from ..patches import build_spec, pair_patch_digest, spec_files
from ..project import Project
from ..records import (
    AppliedPatch,
    ChangedObject,
    CheckoutRecord,
    DebugCompile,
    OrigRecord,
    PatchedRecord,
    Records,
    kept_object,
)
from ..target.baseline import Baseline, load_baseline
from . import toolchain
from .build import (
    SPLIT_SECTIONS_FLAGS,
    BuildOutput,
    Reuse,
    apply_patch,
    object_log,
    patched_tree,
    prepare_tree,
    reuse_index_dir,
    run_build,
)
from .debuginfo import EarlyDebugCompiles, debug_objects


def build_orig(project: Project, baseline: str) -> dict[str, str]:
    """The original objects, one section per function."""
    return build_checkout(project, load_baseline(project, baseline), "orig", SPLIT_SECTIONS_FLAGS, keep=True).objects


def build_checkout(project: Project, definition: Baseline, name: str, extra_cflags: str, keep: bool) -> BuildOutput:
    """A build of the pristine checkout in work/BASELINE/NAME/tree (build-base's or build-orig's).

    `keep`: the tree is the original patched builds reuse objects from (build.Reuse).
    """
    records = Records(project, definition.name)
    source = project.root / CheckoutRecord.read(records.checkout).tree
    tree = records.base / name / "tree"
    if keep:
        remove_tree(reuse_index_dir(tree))  # what it says is of the tree about to be replaced
    prepare_tree(project, definition, source, tree)
    return run_build(definition, tree, recorded_tools(project), extra_cflags, records.base / name / "build.log",
                     prepare=True, bin_dir=records.bin, reuse=Reuse(keep=keep))


def build_patched(project: Project, baseline: str, patch: str) -> dict[str, Any]:
    """Apply the stack's patches and build (a stacked payload's original objects), then the fixes; keep
    the changed objects: the patches' own code runs here."""
    definition = load_baseline(project, baseline)
    records = Records(project, baseline, patch)
    spec = build_spec(project, patch, baseline)
    stack_files, fix_files = spec_files(project, spec, baseline)
    orig = OrigRecord.read(records.build_orig)
    with patched_tree(records.base / "patched", project.root / orig.tree) as tree:
        # XSPLICE_NO_REUSE=1 compiles every translation unit make asks for (to compare against).
        wanted = records.patch_dir / "reuse-wanted"  # read by build-patched's own process: sandboxed_reuse.py
        wanted.unlink(missing_ok=True)
        reuse = Reuse() if os.environ.get("XSPLICE_NO_REUSE") else Reuse(original=project.root / orig.tree,
                                                                          wanted=wanted)
        flags = SPLIT_SECTIONS_FLAGS if definition.build.split_sections == "wrapper" else ""
        objects_dir = records.patch_dir / "objects"
        remove_tree(objects_dir)
        # The tree this payload is diffed against: the baseline, or the baseline with the stack's fixes built in.
        before = dict(orig.objects)
        if stack_files:
            for source in stack_files:
                apply_patch(source, tree)
            stacked = run_build(definition, tree, recorded_tools(project), flags, records.patch_dir / "stack-build.log",
                                prepare=False, bin_dir=records.bin, reuse=reuse)
            before.update(stacked.objects)
            for name, digest in stacked.objects.items():
                if orig.objects.get(name) != digest:  # the stack changed it: keep its version to diff against
                    kept = objects_dir / f"{name}.BEFORE"
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(tree / name, kept)
        touched: list[str] = []
        for source in fix_files:
            touched += apply_patch(source, tree)
        remove_tree(records.patch_dir / "debug")
        log = records.patch_dir / "build.log"
        unstacked = {name: digest for name, digest in before.items() if orig.objects.get(name) == digest}
        with EarlyDebugCompiles(definition, project.root / orig.tree, tree, unstacked, records.patch_dir / "debug-orig",
                                records.patch_dir, object_log(log)) as early:
            output = run_build(definition, tree, recorded_tools(project), flags, log, prepare=False,
                               bin_dir=records.bin, reuse=reuse)
        changed = []
        for name, digest in sorted(output.objects.items()):
            if before.get(name) == digest:
                continue
            kept = kept_object(records.patch_dir, name)
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(tree / name, kept)
            restacked = before.get(name) is not None and orig.objects.get(name) != before.get(name)
            changed.append(ChangedObject(
                object=name, original=name if name in before else None,
                original_file=relative(objects_dir / f"{name}.BEFORE", project.root) if restacked else None,
                original_sha256=before.get(name), patched_sha256=digest))
        # The struct-layout rule reads DWARF: compile the changed units again with -g while the tree is here.
        # Both sides go in this pair's directory, which the sandbox lets it write (originals are kept by
        # content under debug-orig/ across reruns). An object the stack changed was compiled from a tree
        # state that is gone: it gets no debug pair, and the layout check reads the objects' own DWARF.
        pairs = debug_objects(definition, [change for change in changed if not change.original_file],
                              project.root / orig.tree, tree, records.patch_dir / "debug-orig", records.patch_dir,
                              project.root, early)
    # Digests, so that an edited debug object makes the stage run again.
    debug = {name: DebugCompile(original=original, patched=patched, patched_sha256=sha256_file(project.root / patched),
                                original_sha256=sha256_file(project.root / original) if original else None)
             for name, (original, patched) in pairs.items()}
    applied = [AppliedPatch(path=relative(path, project.root), sha256=sha256_file(path), role=role)
               for paths, role in ((stack_files, "stacked-under"), (fix_files, "fix")) for path in paths]
    return PatchedRecord(patch=patch, patch_sha256=pair_patch_digest(project, patch, baseline),
                         touched=sorted(set(touched)), recompiled=sorted(output.objects), changed=changed,
                         stack=list(spec.stack), fixes=list(spec.fixes), action=spec.action,
                         applied=applied, debug=debug).to_json()


def recorded_tools(project: Project) -> dict[str, toolchain.Tool]:
    recorded = read_json(project.toolchain_state, "toolchain check record")
    return {name: toolchain.Tool(**tool) for name, tool in recorded["tools"].items()}
