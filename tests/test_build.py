"""The build stages: the shipped image, the function-section objects, the incremental patched build."""

from __future__ import annotations

import json

from conftest import Checkout

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
