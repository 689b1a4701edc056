"""The build stages: the shipped image, the function-section objects, the incremental patched build."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zlib
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


def _unsigned(checkout: Checkout, patch: str) -> bytes:
    return checkout.work("minixen", "patches", patch, f"{patch}.livepatch.unsigned").read_bytes()


def test_a_header_fix_reuses_the_untouched_objects_and_the_payload_is_the_same(built_once: Checkout,
                                                                                tmp_path: Path) -> None:
    # inline-header changes a static inline of include/xen/event.h, which common/kernel.c includes and never calls.
    reusing = copy_checkout(tmp_path / "reusing", built_once.root, with_state=True)
    _first_header_fix_fills_the_index(reusing)
    proof = reusing.work("minixen", "patches", "inline-header", "reuse-proof.log")  # writable in the sandbox
    reusing.doit("build-patch", "inline-header", env={"XSPLICE_REUSE_VERIFY": str(proof)})
    patched_tree = reusing.work("minixen", "patched", "0")
    # Each reused object was compiled as well (proof mode): the same bytes as the compiler's.
    # The helper was asked about the three units make rebuilt (none of their C files changed): it took the
    # original of the one whose preprocessed text is the same and left the two that differ to the compiler.
    assert sorted(proof.read_text().splitlines()) == [f"compiled {patched_tree / 'common' / 'event.o'}",
                                                      f"compiled {patched_tree / 'common' / 'event_fifo.o'}",
                                                      f"identical {patched_tree / 'common' / 'kernel.o'}"]
    patched = json.loads(reusing.work("minixen", "patches", "inline-header", "patched.json").read_text())
    assert patched["recompiled"] == ["common/event.o", "common/event_fifo.o", "common/kernel.o"]
    assert [c["object"] for c in patched["changed"]] == ["common/event.o", "common/event_fifo.o"]
    # make's view stays a compile's: the object is newer than the header, its dependency file names it.
    kernel = patched_tree / "common" / "kernel.o"
    assert kernel.stat().st_mtime_ns >= (patched_tree / "include" / "xen" / "event.h").stat().st_mtime_ns
    assert "include/xen/event.h" in (patched_tree / "common" / "kernel.d").read_text()
    assert subprocess.run(["make", "-q", "xen-syms"], cwd=patched_tree, capture_output=True).returncode == 0
    compiling = copy_checkout(tmp_path / "compiling", built_once.root, with_state=True)
    compiling.doit("build-patch", "inline-header", env={"XSPLICE_NO_REUSE": "1"})
    assert _unsigned(reusing, "inline-header") == _unsigned(compiling, "inline-header")
    assert json.loads(compiling.work("minixen", "patches", "inline-header", "patched.json").read_text()) == patched


def _first_header_fix_fills_the_index(checkout: Checkout) -> None:
    """The baseline's first header fix: its index has no entry, so make's three units are compiled and named;
    build-patched's own process then indexes them (the original side), and the pair's records are removed so
    the next build-patch builds it again."""
    index = checkout.work("minixen", "orig", "reuse-index")
    shutil.rmtree(index, ignore_errors=True)
    checkout.doit("build-patch", "inline-header")
    units = ["common/event.o", "common/event_fifo.o", "common/kernel.o"]
    wanted = checkout.work("minixen", "patches", "inline-header", "reuse-wanted").read_text().split()
    assert sorted(wanted) == units
    assert sorted(str(path.relative_to(index)) for path in index.rglob("*.json")) == [f"{u}.json" for u in units]
    # With each entry, the original's text the shortcut compares against (xsplice-reuse: where texts differ).
    assert sorted(str(path.relative_to(index)) for path in index.rglob("*.text.z")) == [f"{u}.text.z" for u in units]
    shutil.rmtree(checkout.work("minixen", "patches", "inline-header"))


def test_a_file_the_patch_edits_is_compiled_without_asking_the_reuse_helper(built_once: Checkout,
                                                                           tmp_path: Path) -> None:
    # XSA-131 edits common/domctl.c: its object can never be the original's, and starting the helper (a
    # Python process) would cost about what compiling a small file does, so the wrapper compiles at once.
    checkout = copy_checkout(tmp_path / "checkout", built_once.root, with_state=True)
    proof = checkout.work("minixen", "patches", "XSA-131", "reuse-proof.log")
    checkout.doit("build-patch", "XSA-131", env={"XSPLICE_REUSE_VERIFY": str(proof)})
    patched = json.loads(checkout.work("minixen", "patches", "XSA-131", "patched.json").read_text())
    assert patched["recompiled"] == ["common/domctl.o"]
    assert not proof.exists()  # the helper logs every object it is asked about


def test_a_patched_tree_is_reset_to_the_original_before_each_build(built_once: Checkout, tmp_path: Path) -> None:
    checkout = copy_checkout(tmp_path / "checkout", built_once.root, with_state=True)
    checkout.doit("build-patch", "inline-header")  # leaves its patched header and objects in slot 0
    tree = checkout.work("minixen", "patched", "0")
    (tree / "stray.o").write_bytes(b"left by someone")
    checkout.doit("build-patch", "string-literal")
    original = checkout.work("minixen", "orig", "tree")
    assert not (tree / "stray.o").exists()
    header = Path("include", "xen", "event.h")
    assert (tree / header).read_bytes() == (original / header).read_bytes()
    patched = json.loads(checkout.work("minixen", "patches", "string-literal", "patched.json").read_text())
    assert patched["recompiled"] == [f"{touched[:-2]}.o" for touched in patched["touched"]]


def test_an_index_entry_of_another_rule_or_command_is_not_used_and_is_made_again(built: Checkout) -> None:
    # An entry names the recorded command and the rule's code by digest (sandboxed_reuse.py): one made from
    # another command or by another version of the rule says nothing about this compile.
    _first_header_fix_fills_the_index(built)
    entry = built.work("minixen", "orig", "reuse-index", "common", "kernel.o.json")
    made = json.loads(entry.read_text())
    for field in ("rule_sha256", "argv_sha256"):
        entry.write_text(json.dumps({**made, field: "0" * 64}))
        proof = built.work("minixen", "patches", "inline-header", "reuse-proof.log")
        proof.parent.mkdir(parents=True, exist_ok=True)
        built.doit("build-patch", "inline-header", env={"XSPLICE_REUSE_VERIFY": str(proof)})
        assert f"compiled {built.work('minixen', 'patched', '0', 'common', 'kernel.o')}" in proof.read_text()
        assert built.work("minixen", "patches", "inline-header", "reuse-wanted").read_text().split() == \
            ["common/kernel.o"]
        assert json.loads(entry.read_text()) == made, field  # indexed again by build-patched's process
        shutil.rmtree(built.work("minixen", "patches", "inline-header"))


def test_an_original_text_that_is_not_the_entrys_is_not_compared_against(built: Checkout) -> None:
    # The shortcut reads the original's text only when its digest is the entry's. Planted in event.o's place:
    # its text with the fix made in it, which is the patched text: compared against, event.o (which calls the
    # fixed inline) would be taken from the original tree and the fix left out of the payload.
    _first_header_fix_fills_the_index(built)
    planted = built.work("minixen", "orig", "reuse-index", "common", "event.o.text.z")
    original = zlib.decompress(planted.read_bytes())
    assert original.count(b"(port * 5u)") == 1
    planted.write_bytes(zlib.compress(original.replace(b"(port * 5u)", b"(port * 5u + 3)")))
    proof = built.work("minixen", "patches", "inline-header", "reuse-proof.log")
    proof.parent.mkdir(parents=True, exist_ok=True)
    built.doit("build-patch", "inline-header", env={"XSPLICE_REUSE_VERIFY": str(proof)})
    tree = built.work("minixen", "patched", "0", "common")
    assert sorted(proof.read_text().splitlines()) == [f"compiled {tree / 'event.o'}",
                                                      f"compiled {tree / 'event_fifo.o'}",
                                                      f"identical {tree / 'kernel.o'}"]


def test_a_check_that_fails_compiles_and_the_proof_says_why(built: Checkout) -> None:
    # An index entry the shortcut cannot read (here its blocks are not numbers): the check raises, the unit
    # is compiled as always, and proof mode names the failure instead of passing it off as "compiled".
    _first_header_fix_fills_the_index(built)
    entry = built.work("minixen", "orig", "reuse-index", "common", "kernel.o.json")
    entry.write_text(json.dumps({**json.loads(entry.read_text()), "structure": {"blocks": "x", "inline_names": []}}))
    proof = built.work("minixen", "patches", "inline-header", "reuse-proof.log")
    proof.parent.mkdir(parents=True, exist_ok=True)
    built.doit("build-patch", "inline-header", env={"XSPLICE_REUSE_VERIFY": str(proof)})
    kernel = built.work("minixen", "patched", "0", "common", "kernel.o")
    assert [line for line in proof.read_text().splitlines() if str(kernel) in line] == \
        [f"error {kernel} TypeError: '<' not supported between instances of 'int' and 'str'"]


def test_the_index_goes_with_the_original_tree_it_describes(built: Checkout) -> None:
    _first_header_fix_fills_the_index(built)
    built.doit("forget", "build-orig:minixen")
    built.doit("build-patch", "XSA-131")  # build-orig runs again; XSA-131 edits the one file make compiles
    assert not built.work("minixen", "orig", "reuse-index").exists()


def test_only_kept_units_of_the_original_tree_are_indexed_whatever_a_build_names(built: Checkout,
                                                                                  tmp_path: Path) -> None:
    from xsplice_build.stages.sandboxed_reuse import wanted_units

    original = built.work("minixen", "orig", "tree")
    (tmp_path / "outside.o.xsplice-argv").write_bytes(b"")
    (original / "common" / "escape.o.xsplice-argv").symlink_to(tmp_path / "outside.o.xsplice-argv")
    named = ["common/kernel.o", "common/kernel.o", "../orig/tree/common/event.o", "/etc/passwd", "",
             "common/./event.o", "common/nonesuch.o", "common/escape.o", str(original / "common" / "event.o"),
             "common/event.o"]
    wanted = tmp_path / "reuse-wanted"
    wanted.write_text("\n".join(named) + "\n")
    assert wanted_units(wanted, original) == ["common/event.o", "common/kernel.o"]
    assert wanted_units(tmp_path / "absent", original) == []
