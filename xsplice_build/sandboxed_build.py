"""The parts of build-orig and build-patched that run inside the build sandbox (sandbox.py).

stages.py runs each through `sandbox.run_stage` and writes the stage's record from what it
returns, outside the sandbox. This module imports only what these parts need: it is what the
sandbox's Python loads (no git, no signing code, no diff, no layouts: sandboxed_base.py).
"""

from __future__ import annotations

import shutil
from typing import Any

from . import toolchain
from .baseline import load_baseline
from .build import SPLIT_SECTIONS_FLAGS, apply_patch, prepare_tree, run_build
from .files import copy_tree, read_json, remove_tree, sha256_file
from .patches import patch_file
from .project import Project
from .records import CheckoutRecord, OrigRecord, PatchedRecord, Records, kept_object


def build_orig(project: Project, baseline: str) -> dict[str, str]:
    """The original objects, one section per function."""
    definition = load_baseline(project, baseline)
    records = Records(project, baseline)
    source = project.root / CheckoutRecord.read(records.checkout).tree
    tree = records.base / "orig" / "tree"
    prepare_tree(project, definition, source, tree)
    output = run_build(definition, tree, recorded_tools(project), SPLIT_SECTIONS_FLAGS,
                       records.base / "orig" / "build.log", prepare=True, bin_dir=records.bin)
    return output.objects


def build_patched(project: Project, baseline: str, patch: str) -> dict[str, Any]:
    """Apply the patch, rebuild, keep the changed objects: the patch's own code runs here."""
    definition = load_baseline(project, baseline)
    records = Records(project, baseline, patch)
    source = patch_file(project, patch, baseline)
    orig = OrigRecord.read(records.build_orig)
    tree = records.patch_dir / "tree"
    copy_tree(project.root / orig.tree, tree)
    touched = apply_patch(source, tree)
    flags = SPLIT_SECTIONS_FLAGS if definition.build.split_sections == "wrapper" else ""
    output = run_build(definition, tree, recorded_tools(project), flags, records.patch_dir / "build.log",
                       prepare=False, bin_dir=records.bin)
    remove_tree(records.patch_dir / "objects")
    changed = []
    for name, digest in sorted(output.objects.items()):
        if orig.objects.get(name) == digest:
            continue
        kept = kept_object(records.patch_dir, name)
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tree / name, kept)
        changed.append({"object": name, "original": name if name in orig.objects else None,
                        "original_sha256": orig.objects.get(name), "patched_sha256": digest})
    # The objects are all the later stages need; a patched tree of a real hypervisor is large.
    remove_tree(tree)
    return PatchedRecord(patch=patch, patch_sha256=sha256_file(source), touched=touched,
                         recompiled=sorted(output.objects), changed=changed).to_json()


def recorded_tools(project: Project) -> dict[str, toolchain.Tool]:
    recorded = read_json(project.toolchain_state, "toolchain check record")
    return {name: toolchain.Tool(**tool) for name, tool in recorded["tools"].items()}
