"""The real-Xen tier: live patches for Debian's Xen 4.17 hypervisor (pytest -m xen; about 3 minutes cold).

Builds Debian's xen 4.17.5+72-g01140da4e8-1 hypervisor through the pipeline (apt-get source,
Debian's config and build environment), checks it is bit for bit the shipped one, then builds
the xen-4.17 patches of patches/ and checks each outcome (and expect.toml, where a patch has one).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tomllib

import pytest
from conftest import REPO, Checkout, copy_checkout
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from xsplice_build.elf.livepatch import ALT_INSTR, ALT_INSTRUCTIONS, ALT_REPLACEMENT
from xsplice_build.elf.reader import read_elf, read_elf_file
from xsplice_build.stages.sign import split
from xsplice_build.target.image import BaseImage

pytestmark = pytest.mark.xen

DEBIAN_BUILD_ID = "39a640e6f1412319235087391df9f1c5e13ae920"
EXPECTED = {
    "regression-test": ["xen_extra_version"],
    "domctl-iomem-empty-range": ["do_domctl"],
    # The static inline is inlined into do_domctl and into two boot-time functions, which are left alone.
    "iocap-deny-inverted-range": ["do_domctl"],
    # Alternatives in three objects (kernel.c is compiled twice): one .altinstr_replacement carries them all.
    "alt-nospec-hardening": ["compat_xen_version", "evtchn_status", "do_xen_version"],
}


@pytest.fixture(scope="module")
def xen(tmp_path_factory: pytest.TempPathFactory) -> Checkout:
    checkout = copy_checkout(tmp_path_factory.mktemp("xen") / "checkout")
    for patch in EXPECTED:
        checkout.doit("build-patch", "--baseline", "xen-4.17", patch, timeout=1800)
    return checkout


def _payload(xen: Checkout, patch: str) -> bytes:
    return split((xen.out(patch, "xen-4.17") / f"{patch}.livepatch").read_bytes(), patch)[0]


def test_the_base_build_is_debians_shipped_hypervisor(xen: Checkout) -> None:
    base = json.loads(xen.work("xen-4.17", "base.json").read_text())
    assert base["build_id"] == DEBIAN_BUILD_ID
    assert len(base["objects"]) > 300
    layout = base["layout"]
    assert layout["livepatch_func"]["size"] == 104 and "probe" in layout["livepatch_func"]["source"]
    assert layout["special_sections"][".altinstructions"]["entry_size"] == 14


def test_make_records_no_directory_of_the_checkout_so_a_copied_build_tree_stays_built(xen: Checkout) -> None:
    # kbuild rebuilds an object whose recorded command changed: a path in it made every copy recompile.
    commands = list(xen.work("xen-4.17", "base", "tree", "xen").rglob(".*.o.cmd"))
    assert len(commands) > 300
    assert not [path for path in commands if str(xen.root.resolve()) in path.read_text(errors="replace")]


@pytest.mark.parametrize("patch", sorted(EXPECTED))
def test_each_patch_replaces_exactly_the_expected_functions(xen: Checkout, patch: str) -> None:
    report = xen.report(patch, "xen-4.17")
    assert [f["name"] for f in report["functions"]] == EXPECTED[patch]
    assert report["base_build_id"] == DEBIAN_BUILD_ID
    expect = REPO / "patches" / patch / "expect.toml"
    if expect.is_file():
        assert sorted(EXPECTED[patch]) == sorted(tomllib.loads(expect.read_text())["patched"])


def test_a_static_inline_change_ignores_its_boot_time_callers_with_a_warning(xen: Checkout) -> None:
    warnings = xen.report("iocap-deny-inverted-range", "xen-4.17")["warnings"]
    assert any("dom0_setup_permissions" in w and "init-only" in w for w in warnings)
    assert any("amd_iommu_hwdom_init" in w and "init-only" in w for w in warnings)


def test_a_header_fix_takes_an_original_object_only_where_the_compiler_gives_the_same_bytes(xen: Checkout) -> None:
    # iocap.h's inline reaches 30 units make rebuilds; the fixture's build indexed their original side. Built
    # again in proof mode, every object taken from the original tree is also compiled and compared.
    patch = "iocap-deny-inverted-range"
    pair = xen.work("xen-4.17", "patches", patch)
    payload, record = _payload(xen, patch), json.loads((pair / "patched.json").read_text())
    shutil.rmtree(pair)
    pair.mkdir(parents=True)
    proof = pair / "reuse-proof.log"
    xen.doit("build-patch", "--baseline", "xen-4.17", patch, env={"XSPLICE_REUSE_VERIFY": str(proof)}, timeout=1800)
    verdicts = [line.split() for line in proof.read_text().splitlines()]
    assert {verdict for verdict, _ in verdicts} == {"identical", "compiled"}
    compiled = sorted(re.sub(r"\.(.+\.o)\.tmp$", r"\1", path.split("/patched/0/")[1])
                      for verdict, path in verdicts if verdict == "compiled")
    # A unit whose code changed is never taken from the original tree; one the rule cannot tell apart is
    # compiled too (vtd/iommu.c calls the inline, yet its object comes out the same): the rule is conservative.
    assert {change["object"] for change in record["changed"]} <= set(compiled)
    assert len(verdicts) == len(record["recompiled"]) == 30
    assert len(verdicts) - len(compiled) >= 20  # most of the 27 unchanged units are taken, each identical
    assert _payload(xen, patch) == payload
    rebuilt = json.loads((pair / "patched.json").read_text())
    assert {key: rebuilt[key] for key in ("changed", "recompiled", "touched")} == \
        {key: record[key] for key in ("changed", "recompiled", "touched")}
    # The original units' debug objects are now the ones build-patched's own process made after the first
    # build (the index directory), the same bytes the pair compiled for itself then.
    for name, debug in rebuilt["debug"].items():
        assert "/reuse-index/debug/" in debug["original"], name
        assert debug["original_sha256"] == record["debug"][name]["original_sha256"], name
        assert debug["patched_sha256"] == record["debug"][name]["patched_sha256"], name


def test_changed_initialized_data_is_refused(xen: Checkout) -> None:
    result = xen.doit("build-patch", "--baseline", "xen-4.17", "timer-slop-default", check=False)
    assert result.returncode != 0
    line = next(line for line in result.stdout.splitlines() if "FAILED" in line)
    assert "xen/common/timer.o: timer_slop in .data.read_mostly: changed data" in line
    assert "[rule: changed-data]" in line
    assert not xen.out("timer-slop-default", "xen-4.17").exists()


@pytest.mark.parametrize("patch", sorted(EXPECTED))
def test_every_reference_resolves_once_in_xen_syms_with_accepted_relocations(xen: Checkout, patch: str) -> None:
    image = BaseImage.load(xen.work("xen-4.17", "base", "tree", "xen", "xen-syms"))
    payload = read_elf(_payload(xen, patch), patch)
    for symbol in payload.symbols[1:]:
        if symbol.is_undefined:
            assert image.lookup(symbol.name, patch).value
    elf = ELFFile(io.BytesIO(_payload(xen, patch)))
    for section in elf.iter_sections():
        if isinstance(section, RelocationSection):
            assert {r["r_info_type"] for r in section.iter_relocations()} <= {1, 2, 4}


@pytest.mark.parametrize("patch", sorted(EXPECTED))
def test_the_reviewers_checker_accepts_the_xen_payloads(xen: Checkout, patch: str) -> None:
    checker = REPO.parent / "shared" / "tools" / "check_payload.py"
    if not checker.is_file():
        pytest.skip("the reviewers' checker (../shared/tools) is not beside this clone")
    out = xen.out(patch, "xen-4.17")
    result = subprocess.run([sys.executable, str(checker), str(out / f"{patch}.livepatch"), str(out / "report.json")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("patch", sorted(EXPECTED))
def test_the_offline_loader_check_passes_against_the_real_xen_syms(xen: Checkout, patch: str) -> None:
    image = xen.work("xen-4.17", "base", "tree", "xen", "xen-syms")
    result = xen.xsplice("verify", str(xen.out(patch, "xen-4.17") / f"{patch}.livepatch"), "--image", str(image))
    assert result.returncode == 0, result.stderr
    assert f"build-id {DEBIAN_BUILD_ID}" in result.stdout
    assert all(f" {name} (" in result.stdout for name in EXPECTED[patch]), result.stdout


def test_a_patch_changes_only_its_own_objects_not_the_version_stamp(xen: Checkout) -> None:
    # Build trees carry no .git, so Xen's changeset string cannot gain "-dirty": version.o stays put.
    patched = json.loads(xen.work("xen-4.17", "patches", "domctl-iomem-empty-range", "patched.json").read_text())
    assert [change["object"] for change in patched["changed"]] == ["xen/common/domctl.o"]
    assert "xen/common/version.o" not in patched["recompiled"]


def test_alternatives_of_three_objects_travel_in_the_one_section_xen_checks(xen: Checkout) -> None:
    """Xen checks every replacement against the first .altinstr_replacement (the issue's refusal
    "Alternative repl ... outside .altinstr_replacement"): the payload carries one, each object's part
    at its own offset, and every entry, zero-length ones at a part's end included, lies inside it."""
    payload = read_elf(_payload(xen, "alt-nospec-hardening"), "alt-nospec-hardening")
    [replacement] = payload.sections_named(ALT_REPLACEMENT)
    parts = [read_elf_file(xen.work("xen-4.17", "patches", "alt-nospec-hardening", "objects", f"{name}.XSPLICE"))
             .section_named(ALT_REPLACEMENT).size
             for name in ("xen/common/compat/kernel.o", "xen/common/event_channel.o", "xen/common/kernel.o")]
    assert replacement.size == sum(parts)
    table = payload.section_named(ALT_INSTRUCTIONS)
    starts = {rela.offset: rela.addend for rela in table.relocations if rela.offset % ALT_INSTR.size == 4}
    spans = [(starts[offset + 4], ALT_INSTR.unpack_from(table.data, offset)[4])
             for offset in range(0, table.size, ALT_INSTR.size)]
    assert all(start >= 0 and start + length <= replacement.size for start, length in spans)
    assert any(start >= parts[0] for start, _ in spans)  # entries of the later objects: outside a first part alone
    assert any(length == 0 for _, length in spans)  # block_speculation(): zero-length replacements


def test_a_stacked_chain_on_the_real_tree(xen: Checkout) -> None:
    """stack-1 <- stack-2 <- stack-3 on Xen 4.17: each depends on the one below, as Xen's loader resolves them."""
    xen.doit("build-patch", "--baseline", "xen-4.17", "stack-3", timeout=3600)
    reports = {name: xen.report(name, "xen-4.17") for name in ("stack-1", "stack-2", "stack-3")}
    assert reports["stack-1"]["depends_build_id"] == DEBIAN_BUILD_ID
    assert reports["stack-2"]["depends_build_id"] == reports["stack-1"]["payload_build_id"]
    assert reports["stack-3"]["depends_build_id"] == reports["stack-2"]["payload_build_id"]
    assert [f["name"] for f in reports["stack-2"]["functions"]] == ["xen_extra_version"]
    functions = {f["name"]: f for f in reports["stack-3"]["functions"]}
    assert set(functions) == {"do_domctl", "extra_tag"} and functions["extra_tag"]["old_addr"] == "0x0"
    undefined = {s.name for s in read_elf(_payload(xen, "stack-2"), "stack-2").symbols[1:] if s.is_undefined}
    assert "extra_tag" in undefined  # stack-1's new function, by the name its payload defines


@pytest.mark.parametrize(("patch", "hooks", "new"), [
    ("hook-counter", {"load", "unload", "postapply", "prerevert"},
     ["xen/common/version.o: after_apply", "xen/common/version.o: before_revert",
      "xen/common/version.o: count_apply", "xen/common/version.o: count_revert"]),
])
def test_hooks_on_the_real_tree(xen: Checkout, patch: str, hooks: set[str], new: list[str]) -> None:
    """Xen's own LIVEPATCH_*_HOOK macros: the hook sections and their functions are carried, as new functions."""
    xen.doit("build-patch", "--baseline", "xen-4.17", patch, timeout=1800)
    report = xen.report(patch, "xen-4.17")
    assert report["new_functions"] == new
    elf = read_elf(_payload(xen, patch), patch)
    carried = {s.name.removeprefix(".livepatch.hooks.") for s in elf.sections if s.name.startswith(".livepatch.hooks.")}
    assert carried == hooks
    for section in elf.sections:
        if section.name.startswith(".livepatch.hooks."):
            assert section.size == 8 and len(section.relocations) == 1  # one pointer to its hook function
