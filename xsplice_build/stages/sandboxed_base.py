"""build-base's part that runs inside the build sandbox (sandbox.py): the shipped build and its layouts.

Apart from sandboxed_build.py because only this part reads record layouts (layout.py): a change
there reruns the base build, not the original and patched ones.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..diff.profile import profile_named
from ..project import Project
from ..target.baseline import Baseline, load_baseline
from ..target.layout import baseline_layout, probe_structs, wanted_structs
from .sandboxed_build import build_checkout


def build_base(project: Project, baseline: str) -> dict[str, Any]:
    """The shipped build: its objects and the record layouts of its headers (the image, the parent reads)."""
    definition = load_baseline(project, baseline)
    # With split_sections = "base" the shipped build already has one section per function, and its tree
    # is the original patched builds reuse objects from.
    output = build_checkout(project, definition, "base", "", keep=definition.build.split_sections == "base")
    return {"objects": output.objects, "layout": _layout(definition, output.tree, output.image)}


def _layout(definition: Baseline, tree: Path, image: Path) -> dict[str, Any]:
    profile = profile_named(definition.profile)
    if definition.layout_probe is None:
        return baseline_layout(image, profile)
    compiler = shutil.which(definition.build.compiler) or definition.build.compiler
    probed = probe_structs(tree, definition.layout_probe, compiler, wanted_structs(profile))
    return baseline_layout(image, profile, probed)
