"""Debug compiles for the struct-layout rule: each changed translation unit, once more with -g.

The shipped build of a real hypervisor has no DWARF (Xen without CONFIG_DEBUG_INFO), yet
the struct-layout rule needs the compiler's own layouts of the original and the patched
unit. Each changed object's unit is compiled again, with the exact flags kbuild recorded
for it (its `.NAME.o.cmd`) plus `-g`, into a directory outside the build tree, so the
shipped objects are untouched. Both go under the pair's own directory, the only one the
sandboxed build-patched stage may write: an original unit's debug object, which depends
only on the original object, is kept there by its content and reused when the stage reruns.
Objects that already carry DWARF (minixen builds with -g) need no second compile.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..diff.types import has_dwarf
from ..errors import BuildError
from ..files import relative
from ..records import ChangedObject
from ..target.baseline import Baseline
from ..target.layout import compile_flags, kbuild_command


@dataclass(frozen=True)
class DebugUnit:
    """One object to compile again with -g: where its tree is and where the debug object goes."""

    tree: Path
    object: str  # path in the tree, as the build records name it
    output: Path


def debug_objects(baseline: Baseline, changed: list[ChangedObject], orig_tree: Path, patched_tree: Path,
                  cache: Path, patch_dir: Path, root: Path) -> dict[str, tuple[str | None, str]]:
    """{object: (original, patched)} (paths relative to `root`; no original for a new object) for each changed
    object whose units need a debug compile; objects with their own DWARF, or without a recorded command, are
    left out."""
    units: list[DebugUnit] = []
    pairs: dict[str, tuple[str | None, str]] = {}
    for change in changed:
        name = change.object
        command_file = _command_file(baseline, patched_tree, name)
        if has_dwarf(patched_tree / name) or command_file is None or _c_source(command_file) is None:
            continue  # DWARF already there, no recorded command, or assembly (no C types to compare)
        patched = DebugUnit(patched_tree, name, patch_dir / "debug" / name)
        units.append(patched)
        original = None
        if change.original:
            original = DebugUnit(orig_tree, name, cache / f"{name}.{str(change.original_sha256)[:16]}.o")
            if not original.output.is_file():
                units.append(original)
        pairs[name] = (relative(original.output, root) if original else None, relative(patched.output, root))
    compiler = shutil.which(baseline.build.compiler) or baseline.build.compiler
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(lambda unit: _compile(baseline, unit, compiler), units))
    return pairs


def _directory(baseline: Baseline) -> str:
    return baseline.layout_probe.directory if baseline.layout_probe else "."


def _command_file(baseline: Baseline, tree: Path, name: str) -> Path | None:
    path = tree / name
    command = path.with_name(f".{path.name}.cmd")
    return command if command.is_file() and path.is_relative_to(tree / _directory(baseline)) else None


def _arguments(command_file: Path) -> list[str]:
    return shlex.split(kbuild_command(command_file).split(" && ")[0])


def _c_source(command_file: Path) -> str | None:
    """The one C source the recorded command compiles, or None (an assembly unit, a link step)."""
    sources = [a for a in _arguments(command_file)[1:] if a.endswith(".c") and not a.startswith("-")]
    return sources[0] if len(sources) == 1 else None


def _compile(baseline: Baseline, unit: DebugUnit, compiler: str) -> None:
    command_file = _command_file(baseline, unit.tree, unit.object)
    assert command_file is not None
    arguments = _arguments(command_file)
    source = _c_source(command_file)
    if source is None:
        raise BuildError(f"{command_file}: the recorded command compiles no single C source")
    unit.output.parent.mkdir(parents=True, exist_ok=True)
    scratch = unit.output.with_name(unit.output.name + ".tmp")
    directory = unit.tree / _directory(baseline)
    result = subprocess.run([compiler, *compile_flags(arguments[1:]), "-g", f"-ffile-prefix-map={directory}=.",
                             "-c", source, "-o", str(scratch)], cwd=directory, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or ["no output"])[0]
        raise BuildError(f"{unit.object}: the debug compile for the struct-layout check failed: {first}")
    scratch.replace(unit.output)
