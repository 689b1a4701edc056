"""Debug compiles for the struct-layout check: the recorded kbuild command, plus -g, outside the tree."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import REPO

from xsplice_build.diff.types import has_dwarf, read_types
from xsplice_build.errors import BuildError
from xsplice_build.project import Project
from xsplice_build.records import ChangedObject
from xsplice_build.stages.debuginfo import debug_objects
from xsplice_build.target.baseline import load_baseline


def _tree(root: Path, member: str) -> Path:
    """A kbuild-shaped tree (xen/ with a unit, its object and its .cmd file, and an assembly unit)."""
    xen = root / "xen" / "common"
    xen.mkdir(parents=True)
    (xen / "unit.c").write_text(f"struct item {{ int id; {member}long value; }};\n"
                                "long item_value(struct item *i) { return i->value; }\n")
    (xen / "unit.o").write_bytes(b"not read")
    (xen / ".unit.o.cmd").write_text("cmd_common/unit.o := gcc -O2 -Wall -MMD -MF common/.unit.o.d "
                                     "-c common/unit.c -o common/unit.o\n\nsource_common/unit.o := common/unit.c\n")
    (xen / "entry.o").write_bytes(b"not read")
    (xen / ".entry.o.cmd").write_text("cmd_common/entry.o := gcc -D__ASSEMBLY__ -c common/entry.S "
                                      "-o common/entry.o\n")
    return root


def _changed(name: str, original_sha256: str) -> ChangedObject:
    return ChangedObject(object=name, original=name, original_file=None, original_sha256=original_sha256,
                         patched_sha256="ef" * 32)


def test_each_changed_c_unit_is_compiled_again_with_g_and_originals_are_cached(tmp_path: Path) -> None:
    project = Project(REPO)
    definition = load_baseline(project, "xen-4.17")
    if not shutil.which(definition.build.compiler):
        pytest.skip(f"{definition.build.compiler} is not installed")
    orig, patched = _tree(tmp_path / "orig", ""), _tree(tmp_path / "patched", "int flags; ")
    changed = [_changed(f"xen/common/{name}.o", "ab" * 32) for name in ("unit", "entry")]
    cache, patch_dir = tmp_path / "cache", tmp_path / "patch"
    pairs = debug_objects(definition, changed, orig, patched, cache, patch_dir, tmp_path)
    assert list(pairs) == ["xen/common/unit.o"]  # the assembly unit has no C types to compare
    original, new = (tmp_path / str(side) for side in pairs["xen/common/unit.o"])
    assert has_dwarf(original) and has_dwarf(new) and original.is_relative_to(cache)
    assert (patched / "xen" / "common" / "unit.o").read_bytes() == b"not read"
    assert read_types(original).layouts["struct item"].size == 16
    assert read_types(new).layouts["struct item"].size == 16  # int flags fills the hole before value
    assert [m.name for m in read_types(new).layouts["struct item"].members] == ["id", "flags", "value"]
    stamp = original.stat().st_mtime_ns
    debug_objects(definition, changed, orig, patched, cache, patch_dir, tmp_path)
    assert original.stat().st_mtime_ns == stamp  # kept for the next patch


def test_a_unit_that_does_not_compile_is_one_line(tmp_path: Path) -> None:
    definition = load_baseline(Project(REPO), "xen-4.17")
    if not shutil.which(definition.build.compiler):
        pytest.skip(f"{definition.build.compiler} is not installed")
    orig, patched = _tree(tmp_path / "orig", ""), _tree(tmp_path / "patched", "syntax error ")
    changed = [_changed("xen/common/unit.o", "cd" * 32)]
    with pytest.raises(BuildError, match=r"xen/common/unit.o: the debug compile for the struct-layout check failed"):
        debug_objects(definition, changed, orig, patched, tmp_path / "cache", tmp_path / "patch", tmp_path)
