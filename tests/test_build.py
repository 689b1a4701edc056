"""The build stages: the shipped image, the function-section objects, the incremental patched build."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from conftest import Checkout, copy_checkout

from xsplice_build.elf.reader import read_elf_file


def test_build_orig_gives_one_section_per_function(built_once: Checkout) -> None:
    orig = json.loads(built_once.work("minixen", "orig.json").read_text())
    assert "common/domctl.o" in orig["objects"] and "arch/x86/entry.o" in orig["objects"]
    names = {s.name for s in read_elf_file(built_once.work("minixen", "orig", "tree", "common/domctl.o")).sections}
    assert {".text.do_domctl", ".rodata.do_domctl", ".bss.domctl_count.0"} <= names


def test_build_base_is_the_shipped_build_without_function_sections(built_once: Checkout) -> None:
    names = {s.name for s in read_elf_file(built_once.work("minixen", "base", "tree", "common/domctl.o")).sections}
    assert ".text.do_domctl" not in names and ".text" in names


def test_build_patched_recompiles_only_what_the_patch_touches(built_once: Checkout) -> None:
    patched = json.loads(built_once.work("minixen", "patches", "XSA-131", "patched.json").read_text())
    assert patched["touched"] == ["common/domctl.c"]
    assert patched["recompiled"] == ["common/domctl.o"]
    assert [c["object"] for c in patched["changed"]] == ["common/domctl.o"]
    kept = built_once.work("minixen", "patches", "XSA-131", "objects", "common", "domctl.o.XSPLICE")
    assert kept.is_file()


def test_no_build_path_reaches_an_object(built_once: Checkout) -> None:
    root = str(built_once.root).encode()
    for tree in ("base", "orig"):
        for path in built_once.work("minixen", tree, "tree").rglob("*.o"):
            assert root not in path.read_bytes(), path
    assert root not in built_once.work("minixen", "base", "tree", "xen-syms").read_bytes()


def _ccache_stats(directory: Path) -> dict[str, int]:
    output = subprocess.run(["ccache", "--print-stats"], env={**os.environ, "CCACHE_DIR": str(directory)},
                            capture_output=True, text=True, check=True).stdout
    return {name: int(value) for name, value in (line.split("\t") for line in output.splitlines())}


def _base_build(checkout: Checkout, cache: Path | None) -> dict:
    shutil.rmtree(checkout.root / "work", ignore_errors=True)
    checkout.doit("build-base:minixen", env={"XSPLICE_CCACHE_DIR": str(cache)} if cache else {})
    return json.loads(checkout.work("minixen", "base.json").read_text())


def test_a_compile_cache_hit_gives_the_image_an_uncached_build_gives(checkout: Checkout, tmp_path: Path) -> None:
    cache = tmp_path / "ccache"
    uncached = _base_build(checkout, None)
    cold = _base_build(checkout, cache)
    compiled = len(cold["objects"])
    assert _ccache_stats(cache)["cache_miss"] == compiled
    warm = _base_build(checkout, cache)  # the same tree path: every compile a hit
    stats = _ccache_stats(cache)
    assert stats["direct_cache_hit"] + stats["preprocessed_cache_hit"] == compiled
    assert stats["cache_miss"] == compiled  # no new misses
    for build in (cold, warm):
        assert (build["build_id"], build["image_sha256"], build["objects"]) == \
            (uncached["build_id"], uncached["image_sha256"], uncached["objects"])
    # Another directory with the warm cache (another machine's path): the wrapper maps the build directory
    # out of every object and ccache hashes the directory as mapped, so it hits, and a hit is right only
    # because an uncached build there gives the very same objects and image.
    elsewhere = copy_checkout(tmp_path / "elsewhere")
    uncached_elsewhere = _base_build(elsewhere, None)
    moved = _base_build(elsewhere, cache)
    stats = _ccache_stats(cache)
    assert stats["direct_cache_hit"] + stats["preprocessed_cache_hit"] == 2 * compiled
    assert (moved["build_id"], moved["image_sha256"], moved["objects"]) == \
        (uncached_elsewhere["build_id"], uncached_elsewhere["image_sha256"], uncached_elsewhere["objects"]) == \
        (uncached["build_id"], uncached["image_sha256"], uncached["objects"])
