"""End to end: `doit build-patch` through every stage, its caching, and its one-line refusals."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO, Checkout, one_line_failure

from xsplice_build.elf.notes import image_build_id
from xsplice_build.elf.reader import read_elf_file


def _started(output: str) -> list[str]:
    return re.findall(r"^xsplice: start (\S+)", output, re.MULTILINE)


def test_build_patch_writes_a_signed_payload_and_its_report(built_once: Checkout) -> None:
    out = built_once.out("XSA-131")
    assert (out / "XSA-131.livepatch").is_file()
    report = built_once.report("XSA-131")
    assert [f["name"] for f in report["functions"]] == ["do_domctl"]
    assert report["patch"] == "XSA-131" and report["baseline"] == "minixen"
    image = (out / report["base_image"]).resolve()
    assert report["base_build_id"] == image_build_id(read_elf_file(image)).hex()
    assert re.fullmatch(r"[0-9a-f]{40}", report["commit"])
    for key in ("toolchain_lock_sha256", "payload_sha256", "signer_certificate"):
        assert report[key]
    assert {"name", "old_size", "new_size"} <= set(report["functions"][0])


CHECKER = REPO.parent / "shared" / "tools" / "check_payload.py"


@pytest.mark.skipif(not CHECKER.is_file(), reason="the reviewers' checker (../shared/tools) is not beside this clone")
def test_independent_checker_accepts_both_payloads(built_once: Checkout) -> None:
    checker = CHECKER
    for patch, function in (("XSA-131", "do_domctl"), ("regression-test", "xen_extra_version")):
        out = built_once.out(patch)
        result = subprocess.run([sys.executable, str(checker), str(out / f"{patch}.livepatch"),
                                 str(out / "report.json")], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"['{function}']; 0 problem(s)" in result.stdout


def test_a_rerun_with_nothing_changed_rebuilds_nothing(built: Checkout) -> None:
    result = built.doit("build-patch", "XSA-131")
    assert _started(result.stdout) == []
    assert "up-to-date build-base:minixen" in result.stdout


def test_a_second_patch_reuses_checkout_and_builds(checkout: Checkout) -> None:
    first = checkout.doit("build-patch", "XSA-131")
    assert {"checkout:minixen", "build-base:minixen", "build-orig:minixen"} <= set(_started(first.stdout))
    second = checkout.doit("build-patch", "regression-test")
    assert _started(second.stdout) == ["build-patched:minixen/regression-test",
                                       "diff:minixen/regression-test", "payload:minixen/regression-test",
                                       "sign:minixen/regression-test"]


def test_a_changed_patch_redoes_only_the_stages_after_build_orig(built: Checkout) -> None:
    patch = built.root / "patches" / "XSA-131" / "minixen.patch"
    patch.write_text(patch.read_text().replace("+        ret = -EINVAL;", "+        ret = -ERANGE;"))
    result = built.doit("build-patch", "XSA-131")
    assert _started(result.stdout) == ["build-patched:minixen/XSA-131", "diff:minixen/XSA-131",
                                           "payload:minixen/XSA-131", "sign:minixen/XSA-131"]


def test_a_description_only_change_stops_where_the_bytes_stop_changing(built: Checkout) -> None:
    patch = built.root / "patches" / "XSA-131" / "minixen.patch"
    before = built.report("XSA-131")
    patch.write_text(patch.read_text().replace("Refuse counts above", "Refuse any count above"))
    result = built.doit("build-patch", "XSA-131")
    # Same objects, so the same payload: only the report learns the new patch hash.
    assert _started(result.stdout) == ["build-patched:minixen/XSA-131", "diff:minixen/XSA-131",
                                           "sign:minixen/XSA-131"]
    after = built.report("XSA-131")
    assert after["patch_sha256"] != before["patch_sha256"]
    assert after["unsigned_payload_sha256"] == before["unsigned_payload_sha256"]


def test_unknown_patch_is_refused_in_one_line(checkout: Checkout) -> None:
    line = one_line_failure(checkout.doit("build-patch", "XSA-999", check=False))
    assert "unknown patch 'XSA-999'" in line and "XSA-131" in line
    assert not (checkout.root / "out").exists()


def test_unknown_baseline_is_refused_in_one_line(checkout: Checkout) -> None:
    line = one_line_failure(checkout.doit("build-patch", "--baseline", "xen-9.9", "XSA-131", check=False))
    assert "unknown baseline 'xen-9.9'" in line and "minixen" in line


def test_a_baseline_name_cannot_leave_baseline_dir(checkout: Checkout) -> None:
    line = one_line_failure(checkout.doit("build-patch", "--baseline", "../dodo", "XSA-131", check=False))
    assert "baseline name '../dodo' is not allowed" in line


def test_a_patch_that_does_not_apply_stops_at_build_patched(built: Checkout) -> None:
    patch = built.root / "patches" / "XSA-131" / "minixen.patch"
    patch.write_text(patch.read_text().replace(" ret = domain_set_max_vcpus(d, op->u.max_vcpus.max);",
                                               " ret = domain_set_max_vcpus(d, 4);"))
    previous = (built.out("XSA-131") / "XSA-131.livepatch").read_bytes()
    line = one_line_failure(built.doit("build-patch", "XSA-131", check=False))
    assert "FAILED build-patched:minixen/XSA-131" in line
    assert "patches/XSA-131/minixen.patch: does not apply" in line and "common/domctl.c" in line
    # The previous good payload stays; nothing half-written replaces it.
    assert (built.out("XSA-131") / "XSA-131.livepatch").read_bytes() == previous
    assert not list(built.out("XSA-131").glob(".*tmp"))


def test_a_patch_that_does_not_apply_leaves_no_payload(checkout: Checkout) -> None:
    patch = checkout.root / "patches" / "XSA-131" / "minixen.patch"
    patch.write_text(patch.read_text().replace("case XEN_DOMCTL_max_vcpus:", "case XEN_DOMCTL_max_vcpu:"))
    one_line_failure(checkout.doit("build-patch", "XSA-131", check=False))
    assert not checkout.out("XSA-131").exists()


def test_a_toolchain_that_differs_from_the_lock_stops_the_build(checkout: Checkout) -> None:
    lock = checkout.root / "toolchain.lock"
    text = lock.read_text()
    ld_sha = re.search(r'\[ld\][^\[]*sha256 = "([0-9a-f]+)"', text).group(1)
    lock.write_text(text.replace(ld_sha, "0" * 64))
    line = one_line_failure(checkout.doit("build-patch", "XSA-131", check=False))
    assert "FAILED toolchain" in line
    assert "toolchain.lock: ld differs: sha256" in line and "doit lock-toolchain" in line
    assert not checkout.out("XSA-131").exists()
    assert not checkout.work("minixen", "base.json").exists()


def test_lock_toolchain_rewrites_the_lock_from_this_machine(checkout: Checkout) -> None:
    lock = checkout.root / "toolchain.lock"
    good = lock.read_text()
    lock.write_text(good.replace("GNU ld", "GNU ld (edited)"))
    checkout.doit("lock-toolchain")
    assert lock.read_text() == good
    checkout.doit("toolchain")


def test_doit_list_shows_every_stage_with_a_doc(checkout: Checkout) -> None:
    listing = checkout.doit("list").stdout
    for stage in ("checkout", "toolchain", "build-base", "build-orig", "build-patched", "diff", "payload", "sign",
                  "lock-toolchain"):
        line = next(line for line in listing.splitlines() if line.split()[0] == stage)
        assert len(line.split()) > 2, line


def test_a_supplied_image_is_trusted_only_when_the_baseline_rebuilds_to_it(built: Checkout, tmp_path) -> None:
    mine = tmp_path / "xen-syms-running"
    mine.write_bytes(built.work("minixen", "base", "tree", "xen-syms").read_bytes())
    built.doit("build-patch", "--image", str(mine), "XSA-131")
    assert built.report("XSA-131")["base_image"] == str(mine.resolve())
    other = built.work("minixen", "orig", "tree", "xen-syms")  # built with -ffunction-sections: another image
    line = one_line_failure(built.doit("build-patch", "--image", str(other), "regression-test", check=False))
    assert "FAILED build-base:minixen" in line and "rebuilds to" in line


def test_a_missing_supplied_image_is_refused(checkout: Checkout) -> None:
    line = one_line_failure(checkout.doit("build-patch", "--image", "/nonexistent/xen-syms", "XSA-131",
                                           check=False))
    assert "/nonexistent/xen-syms: no such image" in line
