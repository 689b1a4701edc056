"""The reuse index: what each kept object of an original tree was compiled from, written by trusted code only.

A patched build takes an original object instead of compiling when the compiler would see the
same input (data/xsplice-reuse). The original's side of that comparison, the digests of each
unit's preprocessed text, is kept per baseline beside the original tree (build.reuse_index_dir).
Patched builds read it and cannot write it (their sandbox shows it read-only): computed inside a
patch's build, which is the patch author's code, an entry could make a later patch's build skip a
compile and drop that patch's change from its payload. A patched build names the units it found
no entry for; after it, build-patched's process has `fill_index` compute those entries from the
original tree and the commands recorded there, in a sandbox that may write only the index, and
likewise the original units' debug objects the struct-layout rule compares against (debuginfo.py),
which would otherwise be compiled again for each pair. The original build empties the index
(sandboxed_build.build_checkout); an entry also names the recorded command and the rule's code by
digest, so a stale one is never used.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from ..files import write_atomic
from ..project import Project
from ..records import OrigRecord, Records
from ..target.baseline import load_baseline
from .build import build_environment, reuse_helper_path, reuse_index_dir
from .debuginfo import compile_trusted_original
from .sandboxed_build import recorded_tools


def wanted_units(wanted: Path, original_tree: Path) -> list[str]:
    """The units a patched build named (its own words, so untrusted): kept objects of `original_tree` only."""
    try:
        named = wanted.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return sorted({key for key in named if _kept_unit(original_tree, key)})


def _kept_unit(original_tree: Path, key: str) -> bool:
    """`key` is the path of an object the original build kept, inside that tree (no '..', no link out)."""
    if not key or key.startswith("/") or os.path.normpath(key) != key or key.startswith(".."):
        return False
    record = original_tree / f"{key}.xsplice-argv"
    try:
        return record.is_file() and record.resolve().is_relative_to(original_tree.resolve())
    except OSError:
        return False


def fill_index(project: Project, baseline: str, units: str, debug: str = "") -> int:
    """Compute and write the index entries of `units`, and the original debug objects of the objects `debug`
    names (one per line each: debuginfo.trusted_original); returns how many entries were written."""
    definition = load_baseline(project, baseline)
    orig = OrigRecord.read(Records(project, baseline).build_orig)
    original = (project.root / orig.tree).resolve()
    index = reuse_index_dir(original)
    for name in debug.splitlines():
        if name in orig.objects:  # its digest from the original's record, not from what a patched build said
            compile_trusted_original(definition, original, name, orig.objects[name])
    keys = [key for key in units.splitlines() if _kept_unit(original, key)]
    helper = reuse_helper_module()
    # The environment the original's compiles ran in (cpp reads SOURCE_DATE_EPOCH, TZ and the baseline's own).
    environment = build_environment(definition, original, recorded_tools(project), "", index / "unused")

    def entry(key: str) -> tuple[str, dict[str, Any] | None, bytes | None]:
        return key, *helper.original_entry(str(original), key, environment)

    written = 0
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for key, made, text in pool.map(entry, keys):
            if made is None:
                continue
            target = index / f"{key}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            if text is not None:  # read only when its digest is the entry's: written first
                write_atomic(Path(helper.text_path(str(index), key)), zlib.compress(text, 1))
            write_atomic(target, json.dumps(made, sort_keys=True).encode())
            written += 1
    return written


@cache
def reuse_helper_module() -> ModuleType:
    """data/xsplice-reuse as a module: the index is made by the very code that reads it."""
    path = str(reuse_helper_path())
    loader = importlib.machinery.SourceFileLoader("xsplice_reuse", path)
    spec = importlib.util.spec_from_loader("xsplice_reuse", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module
