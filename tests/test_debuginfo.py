"""Debug compiles for the struct-layout check: the recorded kbuild command, plus -g, outside the tree."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO

from xsplice_build.diff.types import has_dwarf, read_types
from xsplice_build.errors import BuildError
from xsplice_build.project import Project
from xsplice_build.records import ChangedObject
from xsplice_build.stages.debuginfo import (
    EarlyDebugCompiles,
    compile_trusted_original,
    debug_objects,
    trusted_original,
)
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


def _early_then_after_make(tmp_path: Path, while_make_runs: Callable[[Path], None]) -> tuple[bool, Path, Path]:
    """Early debug compiles of xen/common/unit.c (which includes unit.h) around a stand-in for make, which logs the
    unit as compiled and then does `while_make_runs`; whether the early one holds, its debug object (or the
    one compiled after make) and one compiled now for comparison."""
    definition = load_baseline(Project(REPO), "xen-4.17")
    if not shutil.which(definition.build.compiler):
        pytest.skip(f"{definition.build.compiler} is not installed")
    orig, patched = _tree(tmp_path / "orig", ""), _tree(tmp_path / "patched", "int flags; ")
    for tree in (orig, patched):
        (tree / "xen" / "common" / "unit.h").write_text("#define UNIT_LIMIT 4\n")
        unit = tree / "xen" / "common" / "unit.c"
        unit.write_text('#include "unit.h"\n' + unit.read_text())
    for tree in (orig, patched):  # a unit whose compile gives the original's object again
        (tree / "xen" / "common" / "same.c").write_text("int same;\n")
        (tree / "xen" / "common" / "same.o").write_bytes(b"the same object")
        (tree / "xen" / "common" / ".same.o.cmd").write_text("cmd_common/same.o := gcc -c common/same.c "
                                                             "-o common/same.o\n")
    cache, patch_dir, objlog = tmp_path / "cache", tmp_path / "patch", tmp_path / "build.objects"
    changed = [_changed("xen/common/unit.o", "ab" * 32)]
    originals = {f"xen/common/{name}.o": "ab" * 32 for name in ("unit", "entry", "same")}
    with EarlyDebugCompiles(definition, orig, patched, originals, cache, patch_dir, objlog) as early:
        # make compiles the unit (kbuild: into .unit.o.tmp, which becomes unit.o), and so does every other
        # unit of the tree: only one whose object differs from the original's is taken up.
        (patched / "xen" / "common" / "unit.o").write_bytes(b"compiled again, and changed")
        objlog.write_text(f"{patched}/xen/common/.unit.o.tmp\n{patched}/xen/common/.entry.o.tmp\n"
                          f"{patched}/xen/common/.same.o.tmp\n")
        deadline = time.monotonic() + 120
        while "xen/common/unit.o" not in early.started() and time.monotonic() < deadline:
            time.sleep(0.05)
        while_make_runs(patched)
    assert early.started() <= {"xen/common/unit.o"}
    pairs = debug_objects(definition, changed, orig, patched, cache, patch_dir, tmp_path, early)
    held = early.taken == {"xen/common/unit.o"}
    after = tmp_path / "after"
    shutil.copytree(patched, after)
    fresh = debug_objects(definition, changed, orig, after, tmp_path / "cache-2", tmp_path / "patch-2", tmp_path)
    return held, tmp_path / pairs["xen/common/unit.o"][1], tmp_path / fresh["xen/common/unit.o"][1]


def test_a_debug_compile_run_while_make_links_is_the_one_after_it(tmp_path: Path) -> None:
    held, early, after = _early_then_after_make(tmp_path, lambda tree: None)
    assert held and early.read_bytes() == after.read_bytes()
    assert read_types(early).layouts["struct item"].size == 16


def test_an_early_debug_compile_whose_input_changed_is_done_again(tmp_path: Path) -> None:
    def header_rewritten(tree: Path) -> None:  # a generated header make writes after the unit's compile
        header = tree / "xen" / "common" / "unit.h"
        header.write_text("#define UNIT_LIMIT 4\nstruct extra { long a, b; };\nstruct extra unit_extra;\n")
        os.utime(header, ns=(time.time_ns(), time.time_ns()))
    held, early, after = _early_then_after_make(tmp_path, header_rewritten)
    assert not held
    assert "struct extra" in read_types(early).layouts and early.read_bytes() == after.read_bytes()


def test_an_early_debug_compile_whose_command_changed_is_done_again(tmp_path: Path) -> None:
    def flags_changed(tree: Path) -> None:  # the patch's Makefile change reached kbuild's record of the command
        command = tree / "xen" / "common" / ".unit.o.cmd"
        command.write_text(command.read_text().replace("-O2", "-O1"))
    held, early, after = _early_then_after_make(tmp_path, flags_changed)
    assert not held and early.read_bytes() == after.read_bytes()


def test_an_original_debug_object_made_by_trusted_code_serves_every_pair(tmp_path: Path) -> None:
    # sandboxed_reuse.fill_index makes it in the original tree's index directory, which patched builds cannot
    # write; a pair then takes it instead of compiling the original unit into its own directory.
    definition = load_baseline(Project(REPO), "xen-4.17")
    if not shutil.which(definition.build.compiler):
        pytest.skip(f"{definition.build.compiler} is not installed")
    orig, patched = _tree(tmp_path / "orig" / "tree", ""), _tree(tmp_path / "patched", "int flags; ")
    assert compile_trusted_original(definition, orig, "xen/common/unit.o", "ab" * 32)
    assert not compile_trusted_original(definition, orig, "xen/common/entry.o", "ab" * 32)  # assembly
    trusted = trusted_original(orig, "xen/common/unit.o", "ab" * 32)
    assert trusted.is_relative_to(tmp_path / "orig" / "reuse-index") and has_dwarf(trusted)
    pairs = debug_objects(definition, [_changed("xen/common/unit.o", "ab" * 32)], orig, patched,
                          tmp_path / "cache", tmp_path / "patch", tmp_path)
    assert tmp_path / pairs["xen/common/unit.o"][0] == trusted and not (tmp_path / "cache").exists()
    # Another original object (another digest) is not that one: the pair compiles its own.
    pairs = debug_objects(definition, [_changed("xen/common/unit.o", "cd" * 32)], orig, patched,
                          tmp_path / "cache", tmp_path / "patch", tmp_path)
    assert (tmp_path / pairs["xen/common/unit.o"][0]).is_relative_to(tmp_path / "cache")
