"""Stacked and cumulative payloads: the stack-1 <- stack-2 <- stack-3 chain, built and proven on minixen.

stack-1 replaces xen_extra_version and adds extra_tag; stack-2 (after stack-1) fixes
xen_extra_version again and calls extra_tag; stack-3 (after stack-2) fixes extra_tag and
an unrelated file (domctl.c). Their cumulative replacements carry the fixes against the
baseline for Xen's REPLACE action.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CHAIN, Checkout, copy_checkout, minixen_running, ok, one_line_failure, refused, xen_xsplice

from xsplice_build.elf.notes import parse_build_id_note
from xsplice_build.elf.reader import read_elf
from xsplice_build.project import Project
from xsplice_build.stages.sign import split
from xsplice_build.vm.channel import RunDir

CUMULATIVE = "stack-1+stack-2+stack-3"


@pytest.fixture
def running(stacks_built: Checkout, tmp_path: Path) -> Iterator[Checkout]:
    yield from minixen_running(stacks_built, tmp_path / "running")


def _note(checkout: Checkout, name: str, section: str) -> str:
    unsigned, _ = split((checkout.out(name) / f"{name}.livepatch").read_bytes(), name)
    elf = read_elf(unsigned, name)
    return parse_build_id_note(elf.section_named(section).data, section).hex()


def test_each_payload_depends_on_the_one_below(stacks_built: Checkout) -> None:
    reports = {name: stacks_built.report(name) for name in CHAIN}
    base = reports["stack-1"]["base_build_id"]
    below = {"stack-1": base, "stack-2": reports["stack-1"]["payload_build_id"],
             "stack-3": reports["stack-2"]["payload_build_id"]}
    for name in CHAIN:
        assert _note(stacks_built, name, ".livepatch.depends") == below[name] == reports[name]["depends_build_id"]
        assert _note(stacks_built, name, ".livepatch.xen_depends") == base
    assert reports["stack-3"]["stack"] == ["stack-1", "stack-2"]
    assert [a["role"] for a in reports["stack-3"]["applied"]] == ["stacked-under", "stacked-under", "fix"]


def test_the_functions_of_each_step(stacks_built: Checkout) -> None:
    functions = {name: {f["name"]: f for f in stacks_built.report(name)["functions"]} for name in CHAIN}
    assert set(functions["stack-1"]) == {"xen_extra_version"}
    assert stacks_built.report("stack-1")["new_functions"] == ["common/version.o: extra_tag"]
    # A second fix to the function stack-1 replaced: its base address again, the base image's size.
    assert set(functions["stack-2"]) == {"xen_extra_version"}
    assert functions["stack-2"]["xen_extra_version"]["old_addr"] == functions["stack-1"]["xen_extra_version"][
        "old_addr"]
    assert functions["stack-2"]["xen_extra_version"]["old_size"] == functions["stack-1"]["xen_extra_version"][
        "old_size"]
    # A fix to the function stack-1 added: old_addr 0, which the loader resolves among the payloads' symbols.
    assert functions["stack-3"]["extra_tag"]["old_addr"] == "0x0"
    assert "do_domctl" in functions["stack-3"]  # the unrelated file's fix
    # stack-2 calls extra_tag by the name stack-1's payload defines it under.
    unsigned, _ = split((stacks_built.out("stack-2") / "stack-2.livepatch").read_bytes(), "stack-2")
    undefined = {s.name for s in read_elf(unsigned, "stack-2").symbols[1:] if s.is_undefined}
    assert "extra_tag" in undefined


def test_the_cumulative_carries_every_fix_against_the_baseline(stacks_built: Checkout) -> None:
    report = stacks_built.report(CUMULATIVE)
    assert report["action"] == "replace" and report["stack"] == [] and report["fixes"] == list(CHAIN)
    assert report["depends_build_id"] == report["base_build_id"]
    assert {f["name"] for f in report["functions"]} == {"xen_extra_version", "do_domctl"}
    unsigned, _ = split((stacks_built.out(CUMULATIVE) / f"{CUMULATIVE}.livepatch").read_bytes(), CUMULATIVE)
    names = {s.name for s in read_elf(unsigned, CUMULATIVE).symbols[1:] if not s.is_undefined}
    # Its new static has a name of its own: stack-1, which it replaces, stays loaded with extra_tag.
    assert f"extra_tag@{CUMULATIVE}" in names and "extra_tag" not in names


def test_the_chain_applies_in_order_and_reverts_newest_first(running: Checkout) -> None:
    said = ok(xen_xsplice(running, "prove", "stack-3"))
    assert "applied stack-1 then stack-2 then stack-3, reverted in the reverse order" in said
    assert ok(xen_xsplice(running, "list")).splitlines()[2:] == []


@pytest.mark.parametrize("cumulative", [CUMULATIVE, "stack-1+stack-2"])
def test_the_first_payload_is_replaced_by_a_cumulative_one(running: Checkout, cumulative: str) -> None:
    said = ok(xen_xsplice(running, "prove", cumulative))
    assert f"applied stack-1, replaced it with {cumulative}" in said


def test_out_of_order_is_refused_and_the_last_applied_reverts_first(running: Checkout) -> None:
    for name in CHAIN[:2]:
        ok(xen_xsplice(running, "upload", name, str(running.out(name) / f"{name}.livepatch")))
    # stack-2 goes on stack-1, which is not applied: refused here, and by the image itself.
    assert "goes on top of stack-1, but nothing is applied last" in refused(xen_xsplice(running, "apply", "stack-2"))
    with RunDir.of(Project(running.root)).connect() as connection:
        answer = connection.request("livepatch apply stack-2")
        assert answer.rc == -22 and "check against hypervisor build-id failed" in answer.error
    ok(xen_xsplice(running, "apply", "stack-1"))
    ok(xen_xsplice(running, "apply", "stack-2"))
    assert "xen_extra : -A-B" in ok(xen_xsplice(running, "info"))
    # Xen reverts only the payload applied last.
    assert "stack-2 is applied on top of it; revert stack-2 first" in refused(xen_xsplice(running, "revert", "stack-1"))
    with RunDir.of(Project(running.root)).connect() as connection:
        answer = connection.request("livepatch revert stack-1")
        assert answer.rc == -16 and "stack-2 is applied on top of it" in answer.error
    ok(xen_xsplice(running, "revert", "stack-2"))
    assert "xen_extra : -A" in ok(xen_xsplice(running, "info")).splitlines()
    ok(xen_xsplice(running, "revert", "stack-1"))
    for name in reversed(CHAIN[:2]):
        ok(xen_xsplice(running, "unload", name))
    assert "xen_extra : -unstable" in ok(xen_xsplice(running, "info")).splitlines()


def test_a_replacement_goes_on_the_image_even_with_a_chain_applied(running: Checkout) -> None:
    for name in CHAIN:
        ok(xen_xsplice(running, "upload", name, str(running.out(name) / f"{name}.livepatch")))
        ok(xen_xsplice(running, "apply", name))
    ok(xen_xsplice(running, "upload", CUMULATIVE, str(running.out(CUMULATIVE) / f"{CUMULATIVE}.livepatch")))
    ok(xen_xsplice(running, "replace", CUMULATIVE))
    states = dict(line.split("|") for line in ok(xen_xsplice(running, "list")).splitlines()[2:])
    assert {name.strip(): state.strip() for name, state in states.items()} == {
        "stack-1": "CHECKED", "stack-2": "CHECKED", "stack-3": "CHECKED", CUMULATIVE: "APPLIED"}
    assert "xen_extra : -C-B" in ok(xen_xsplice(running, "info")).splitlines()
    # A stacked payload is not a replacement: it was built on stack-2, not on the image.
    assert "a replacement must be built against the image itself" in refused(xen_xsplice(running, "replace", "stack-3"))
    ok(xen_xsplice(running, "revert", CUMULATIVE))
    for name in (CUMULATIVE, *reversed(CHAIN)):
        ok(xen_xsplice(running, "unload", name))


def test_a_chain_definition_that_cannot_be_is_refused_in_one_line(checkout: Checkout) -> None:
    advisory = checkout.root / "patches" / "stack-2" / "advisory.toml"
    advisory.write_text('after = ["stack-1", "XSA-131"]\n')
    assert "goes on top of exactly one payload" in one_line_failure(checkout.doit("build-patch", "stack-2",
                                                                                   check=False))
    (checkout.root / "patches" / "stack-1" / "advisory.toml").write_text('after = ["stack-3"]\n')
    advisory.write_text('after = ["stack-1"]\n')
    assert "loops back" in one_line_failure(checkout.doit("build-patch", "stack-2", check=False))


def test_the_nightly_manifest_records_the_chain(stacks_built: Checkout, tmp_path: Path) -> None:
    nightly = copy_checkout(tmp_path / "nightly", stacks_built.root, with_state=True)
    nightly.doit("nightly", "--baseline", "minixen", check=False)
    manifest = json.loads((nightly.root / "out" / "release" / "manifest.json").read_text())
    entries = {e["patch"]: e for e in manifest["payloads"]}
    assert entries["stack-3"]["status"] == "ok" and entries["stack-3"]["stack"] == ["stack-1", "stack-2"]
    assert entries["stack-3"]["depends_build_id"] == entries["stack-2"]["payload_build_id"]
    assert entries[CUMULATIVE]["action"] == "replace" and entries["stack-1+stack-2"]["status"] == "ok"
    for item in entries.values():
        if item["status"] == "ok":
            assert (nightly.root / "out" / "release" / item["provenance"]).is_file()
