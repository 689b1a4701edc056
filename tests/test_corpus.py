"""The diff corpus: every patches/<case> built through the real pipeline, checked against its expect.toml.

One session fixture builds every case in one copy of the built checkout (the baseline builds are
shared, each case costs its patched build and diff); the tests then read what the pipeline wrote.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, Checkout, copy_checkout
from corpus_cases import Built, check_outcome, expectation

from xsplice_build.diff.engine import diff_objects
from xsplice_build.diff.profile import XEN_X86_64
from xsplice_build.elf.reader import read_elf_file
from xsplice_build.patches import pairs, release_pairs
from xsplice_build.project import Project

# The minixen corpus; cases with only a xen-4.17 variant are the real-Xen tier's (test_xen_corpus.py).
CASES = sorted(p.parent.name for p in (REPO / "patches").glob("*/expect.toml")
               if (p.parent / "minixen.patch").is_file())
EXIT = {"payload": 0, "nothing-to-patch": 3, "unpatchable": 4}


@pytest.fixture(scope="session")
def corpus(built_once: Checkout, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    checkout = copy_checkout(tmp_path_factory.mktemp("corpus") / "checkout", built_once.root, with_state=True)
    return {case: Built(case, "minixen", checkout.doit("build-patch", case, check=False), checkout) for case in CASES}


def test_the_corpus_covers_the_issues_cases() -> None:
    required = {"changed-static", "changed-global", "inline-header", "new-helper", "static-local", "clones-cold",
                "string-literal", "jump-table", "line-only", "bugframe-with-change", "changed-data",
                "struct-layout", "too-small", "init-only", "new-global", "comments-only", "ambiguous-static",
                # struct layouts, per-variable data, relocations by target, shared printk tails, bring-up hooks:
                # each unsafe case with its safe twin
                "struct-embedded", "struct-embedded-safe", "struct-private-insert", "struct-member-size",
                "struct-member-same-size", "struct-appended", "struct-new-only", "struct-unused-layout",
                "percpu-removed", "percpu-new", "percpu-resized", "init-table-moved", "init-table-changed",
                "line-shared-tail", "line-shared-tail-bound", "bringup-only", "bringup-runtime"}
    assert required <= set(CASES)


def test_corpus_cases_are_built_but_never_released() -> None:
    project = Project(REPO)
    released = {patch for _, patch in release_pairs(project, ["minixen"])}
    assert {"XSA-131", "regression-test"} <= released
    corpus = {case for case in CASES if expectation(case).get("corpus") is True}
    assert corpus == set(CASES) - {"XSA-131", "regression-test"} and not corpus & released
    assert corpus <= {patch for _, patch in pairs(project, ["minixen"])}  # `doit build-patch CASE` works


@pytest.mark.parametrize("case", CASES)
def test_case_outcome(corpus: dict[str, Built], case: str) -> None:
    expect, built = expectation(case), corpus[case]
    check_outcome(built, expect)
    if expect["outcome"] == "payload":
        _check_payload(built, expect)
    else:
        assert not (built.work / "diff.json").exists() or expect["outcome"] == "error"


def _entry_sizes(checkout: Checkout) -> dict[str, int]:
    """Each special section's entry size as the pipeline used it: the target profile with the image's layouts."""
    from xsplice_build.diff.profile import profile_named
    from xsplice_build.project import Project
    from xsplice_build.target.baseline import load_baseline
    from xsplice_build.target.layout import apply_layout

    layout = json.loads(checkout.work("minixen", "base.json").read_text())["layout"]
    profile = apply_layout(profile_named(load_baseline(Project(checkout.root), "minixen").profile), layout)
    return {special.name: special.entry_size for special in profile.special_sections}


def _check_payload(built: Built, expect: dict) -> None:
    report = built.checkout.report(built.case)
    diff = json.loads((built.work / "diff.json").read_text())
    assert sorted(f["name"] for f in report["functions"]) == sorted(expect["patched"])
    assert report["new_functions"] == sorted(expect["new"])
    references = {name for record in diff["objects"] for name in record["base_references"]}
    assert set(expect.get("references", [])) <= references, references
    payload = read_elf_file(built.checkout.out(built.case) / f"{built.case}.livepatch")
    names = {section.name for section in payload.sections}
    assert set(expect.get("carried", [])) <= names, names
    assert not set(expect.get("not_carried", [])) & names
    # What a new function is: code in the payload that no .livepatch.funcs entry points over.
    assert not any(f["name"].split("#")[-1] in {n.split(": ")[-1] for n in expect["new"]}
                   for f in report["functions"])
    strings = b"".join(s.data for s in payload.sections if ".str" in s.name)
    for text in expect.get("strings", []):
        assert text.encode() + b"\0" in strings, text
    specials = {s.name: s for s in payload.sections if s.name.startswith((".bug_frames", ".ex_table", ".altinst"))
                and s.name != ".altinstr_replacement"}
    wanted = expect.get("special_entries", {})
    sizes = _entry_sizes(built.checkout)
    for name, section in specials.items():
        assert section.size // sizes[name] == wanted.get(name, 0), (name, section.size)
    assert set(wanted) <= set(specials)


@pytest.mark.parametrize("case", CASES)
def test_the_explanation_names_each_decision(corpus: dict[str, Built], case: str) -> None:
    expect, built = expectation(case), corpus[case]
    text = (built.work / "diff.explain.txt").read_text()
    assert text.startswith(f"diff of patch {case}:")
    for name in expect.get("patched", []):
        assert re.search(rf"changed +{re.escape(name.split('#')[-1])} ", text), name
    for note in built.notes():
        assert note in text
    if expect["outcome"] == "unpatchable":
        assert "refused     " in text and f"[rule: {expect['rule']}]" in text


@pytest.mark.parametrize("case", CASES)
def test_the_diff_command_decides_as_the_pipeline(corpus: dict[str, Built], case: str) -> None:
    built = corpus[case]
    patched = json.loads((built.work / "patched.json").read_text())
    orig_tree = built.checkout.work("minixen", "orig", "tree")
    records = {record["object"]: record for record in built.explained()}
    assert set(records) == {change["object"] for change in patched["changed"]}
    for change in patched["changed"]:
        name = change["object"]
        pair = [str(orig_tree / name), str(built.work / "objects" / f"{name}.XSPLICE")]
        result = built.checkout.xsplice("diff", *pair, "--json", "--name", name)
        record = json.loads(result.stdout)
        pipeline = records[name]
        for key in ("changed_functions", "new_functions", "refusals", "ignored", "warnings", "included"):
            assert record[key] == pipeline[key], (name, key)
        if record["refusals"]:
            assert result.returncode == 4
        elif not record["changed_functions"] and not record["new_functions"]:
            assert result.returncode == 3
        else:
            assert result.returncode == 0, result.stderr


def test_expected_exit_codes_of_the_diff_command(corpus: dict[str, Built]) -> None:
    built = corpus["too-small"]
    name = "common/version.o"
    pair = [str(built.checkout.work("minixen", "orig", "tree", name)), str(built.work / "objects" / f"{name}.XSPLICE")]
    result = built.checkout.xsplice("diff", *pair, "--name", name)
    assert result.returncode == EXIT["unpatchable"]
    assert result.stderr.startswith("xsplice-build: common/version.o: xen_minor_version: function is 7 bytes")
    assert "[rule: jump-room]" in result.stderr


def test_clones_are_correlated_when_their_numbers_shift(corpus: dict[str, Built], tmp_path: Path) -> None:
    # gcc numbers clones per build; renumber the patched object's clone as another compilation could.
    built = corpus["clones-cold"]
    patched = tmp_path / "vcpu.o"
    subprocess.run(["objcopy", "--redefine-sym", "vcpu_weight.isra.0=vcpu_weight.isra.3",
                    "--rename-section", ".text.vcpu_weight.isra.0=.text.vcpu_weight.isra.3",
                    str(built.work / "objects" / "common/vcpu.o.XSPLICE"), str(patched)], check=True)
    original = built.checkout.work("minixen", "orig", "tree", "common/vcpu.o")
    diff = diff_objects(original, patched, "common/vcpu.o", XEN_X86_64)
    clone = next(s for s in diff.states.values() if s.name == ".text.vcpu_weight.isra.3")
    assert clone.how == "numbers normalised (.text.vcpu_weight.isra.0)"
    # Patched over the base image's clone, by the base image's number.
    assert [s.twin_symbol.xen_name for s in diff.changed_functions() if s.twin_symbol] == \
        ["vcpu.c#vcpu_weight.isra.0", "vcpu_account"]
