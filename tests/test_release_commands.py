"""`doit -n 2 nightly` over the corpus and `doit audit` of its release from another directory."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import MINIXEN_TIER, Checkout, copy_checkout

from xsplice_build.files import sha256_bytes, sha256_file
from xsplice_build.stages.sign import split

PAIRS = {("minixen", "XSA-131"), ("minixen", "regression-test"), ("minixen-1.1", "XSA-131"),
         ("minixen-1.1", "regression-test"), ("minixen-1.1", "version-code"),
         # The stacked chain (minixen only) and the cumulative payloads of its prefixes.
         ("minixen", "stack-1"), ("minixen", "stack-2"), ("minixen", "stack-3"), ("minixen", "stack-1+stack-2"),
         ("minixen", "stack-1+stack-2+stack-3")}
# The minixen tier: real Xen's pairs (baseline xen-4.17) take minutes and run in the xen tier.
KEYS = {"patch", "baseline", "status", "reason", "patch_sha256", "commit", "base_build_id",
        "toolchain_lock_sha256", "functions", "unsigned_payload_sha256", "payload_sha256"}


def _manifest(checkout: Checkout) -> list[dict]:
    return json.loads((checkout.root / "out" / "release" / "manifest.json").read_text())["payloads"]


def _started(output: str) -> list[str]:
    return re.findall(r"^xsplice: start (\S+)", output, re.MULTILINE)


def test_nightly_builds_every_pair_with_a_variant(nightly_once: Checkout) -> None:
    entries = _manifest(nightly_once)
    assert {(e["baseline"], e["patch"]) for e in entries} == PAIRS
    assert [(e["baseline"], e["patch"]) for e in entries] == sorted(PAIRS)
    release = nightly_once.root / "out" / "release"
    for entry in entries:
        assert set(entry) >= KEYS and entry["status"] == "ok" and entry["reason"] is None
        payload = release / entry["payload"]
        assert sha256_file(payload) == entry["payload_sha256"]
        unsigned, _ = split(payload.read_bytes(), str(payload))
        assert sha256_bytes(unsigned) == entry["unsigned_payload_sha256"]
    by_pair = {(e["baseline"], e["patch"]): e for e in entries}
    # Two releases of one hypervisor: different commits and build-ids, the same fix for each.
    old, new = by_pair[("minixen", "XSA-131")], by_pair[("minixen-1.1", "XSA-131")]
    assert old["commit"] != new["commit"] and old["base_build_id"] != new["base_build_id"]
    assert [f["name"] for f in old["functions"]] == [f["name"] for f in new["functions"]] == ["do_domctl"]
    # xen_version_code() is new in 1.1 and moves xen_extra_version: the same patch, another old address.
    assert by_pair[("minixen", "regression-test")]["functions"][0]["old_addr"] != \
        by_pair[("minixen-1.1", "regression-test")]["functions"][0]["old_addr"]
    assert [f["name"] for f in by_pair[("minixen-1.1", "version-code")]["functions"]] == ["xen_version_code"]


def test_a_second_nightly_reuses_everything_and_writes_the_same_manifest(nightly_once: Checkout,
                                                                        tmp_path: Path) -> None:
    again = copy_checkout(tmp_path / "again", nightly_once.root, with_state=True)
    before = (again.root / "out" / "release" / "manifest.json").read_bytes()
    result = again.doit("-n", "2", "nightly", *MINIXEN_TIER)
    assert _started(result.stdout) == []
    assert (again.root / "out" / "release" / "manifest.json").read_bytes() == before
    assert f"xsplice: nightly: {len(PAIRS)} ok, 0 failed" in result.stdout


def test_a_failing_pair_is_recorded_and_the_others_still_ship(tmp_path: Path) -> None:
    checkout = copy_checkout(tmp_path / "checkout")
    broken = checkout.root / "patches" / "broken" / "minixen-1.1.patch"
    broken.parent.mkdir()
    original = (checkout.root / "patches" / "XSA-131" / "minixen-1.1.patch").read_text()
    broken.write_text(original.replace("case XEN_DOMCTL_max_vcpus:", "case XEN_DOMCTL_max_vcpu:"))
    result = checkout.doit("-n", "2", "nightly", *MINIXEN_TIER, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    entries = {(e["baseline"], e["patch"]): e for e in _manifest(checkout)}
    assert set(entries) == PAIRS | {("minixen-1.1", "broken")}
    failed = entries[("minixen-1.1", "broken")]
    assert failed["status"] == "failed" and failed["payload_sha256"] is None
    assert failed["reason"].startswith("build-patched:minixen-1.1/broken: ")
    assert "patches/broken/minixen-1.1.patch: does not apply" in failed["reason"]
    assert failed["patch_sha256"] == sha256_file(broken) and failed["commit"] == entries[
        ("minixen-1.1", "XSA-131")]["commit"]
    assert all(e["status"] == "ok" for pair, e in entries.items() if pair != ("minixen-1.1", "broken"))
    assert not (checkout.root / "out" / "release" / "minixen-1.1" / "broken.livepatch").exists()
    assert "xsplice: nightly FAILED minixen-1.1/broken: build-patched:minixen-1.1/broken:" in result.stdout
    assert f"xsplice: nightly: {len(PAIRS)} ok, 1 failed" in result.stdout


def test_audit_of_the_manifest_from_another_directory_is_identical(nightly_once: Checkout, tmp_path: Path) -> None:
    auditor = copy_checkout(tmp_path / "elsewhere" / "auditor")
    manifest = nightly_once.root / "out" / "release" / "manifest.json"
    result = auditor.doit("audit", "-n", "2", "--manifest", str(manifest))
    lines = result.stdout
    for entry in _manifest(nightly_once):
        name = f"{entry['baseline']}/{entry['patch']}"
        digest = entry["unsigned_payload_sha256"]
        assert f"xsplice: audit {name}: identical: unsigned payload sha256 {digest}" in lines
        assert f"= {digest} (rebuilt" in lines
        # No key in the auditor's checkout: the release's own signature is checked instead.
        assert f"xsplice: audit {name}: the release's signature verifies with" in lines
    assert f"xsplice: audit: {len(PAIRS)} identical, 0 different or not rebuilt, 0 skipped" in lines
    rebuilt_in = re.search(r"rebuilt in (\S+) ", lines).group(1)
    assert rebuilt_in != str(nightly_once.root) and not Path(rebuilt_in).exists()


def test_audit_with_the_key_of_a_changed_patch_a_missing_one_and_a_damaged_one(nightly_once: Checkout,
                                                                             tmp_path: Path) -> None:
    # One audit, four verdicts: signed bytes compared with the release's key, a real difference named section
    # by section, an entry this checkout cannot rebuild, and a released file that is not what the manifest says.
    release = tmp_path / "release"
    shutil.copytree(nightly_once.root / "out" / "release", release)
    damaged = release / "minixen-1.1" / "regression-test.livepatch"
    data = bytearray(damaged.read_bytes())
    data[0x60] ^= 0x01
    damaged.write_bytes(bytes(data))
    auditor = copy_checkout(tmp_path / "auditor")
    shutil.copytree(nightly_once.root / "keys", auditor.root / "keys")
    patch = auditor.root / "patches" / "XSA-131" / "minixen.patch"
    patch.write_text(patch.read_text().replace("+        ret = -EINVAL;", "+        ret = -ERANGE;"))
    shutil.rmtree(auditor.root / "patches" / "version-code")
    result = auditor.doit("-n", "2", "audit", "--manifest", str(release / "manifest.json"), check=False)
    out = result.stdout
    assert result.returncode == 1
    # The three named below are not; every other pair is.
    assert out.count("signed bytes identical too (signed here with") == len(PAIRS) - 3
    assert "xsplice: audit minixen/XSA-131:   input differs: patches/XSA-131/minixen.patch" in out
    assert "xsplice: audit minixen/XSA-131: DIFFERENT (likely cause: real difference)" in out
    assert re.search(r"audit minixen/XSA-131:   section \.text\.do_domctl: \d+ byte\(s\) differ in do_domctl", out)
    assert "xsplice: audit minixen-1.1/version-code: NOT REBUILT: unknown patch 'version-code'" in out
    assert re.search(r"audit minixen-1\.1/regression-test: RELEASE DAMAGED: \S+: sha256 [0-9a-f]{64} is not the "
                     r"manifest's payload_sha256", out)
    assert f"xsplice: audit: {len(PAIRS) - 3} identical, 3 different or not rebuilt, 0 skipped" in out
    result = auditor.doit("audit", "--baseline", "minixen-1.1", "XSA-131", check=False)
    assert result.returncode == 2 and "no payload to audit" in result.stderr


def test_audit_of_a_checkout_build_and_of_a_tampered_release(built: Checkout) -> None:
    result = built.doit("audit", "XSA-131")
    assert "xsplice: audit minixen/XSA-131: identical" in result.stdout
    assert "signed bytes identical too" in result.stdout
    payload = built.out("XSA-131") / "XSA-131.livepatch"
    data = bytearray(payload.read_bytes())
    data[0x50] ^= 0xFF
    payload.write_bytes(bytes(data))
    result = built.doit("audit", "XSA-131", check=False)
    assert result.returncode == 1 and "xsplice: audit minixen/XSA-131: DIFFERENT" in result.stdout


def test_audit_of_a_cumulative_payload_asked_for_by_name(built: Checkout) -> None:
    # Not a chain's cumulative: the audit's rebuild must plan it from its name (runner --cumulative).
    built.doit("build-patch", "--replace", "XSA-131", "inline-header")
    result = built.doit("audit", "XSA-131+inline-header")
    assert "xsplice: audit minixen/XSA-131+inline-header: identical" in result.stdout
    assert "XSPLICE_CUMULATIVE" not in os.environ


def test_an_unknown_baseline_is_refused_in_one_line(checkout: Checkout) -> None:
    result = checkout.doit("nightly", "--baseline", "xen-9.9", check=False)
    assert result.returncode == 2 and "unknown baseline 'xen-9.9'" in result.stderr
    assert result.stderr.strip().count("\n") == 0


@pytest.mark.xen
def test_a_real_xen_nightly_is_reproduced_by_an_audit_elsewhere(tmp_path: Path) -> None:
    # The real-Xen tier (pytest -m xen, about 10 minutes): Debian's hypervisor, rebuilt twice in two directories.
    nightly = copy_checkout(tmp_path / "nightly" / "checkout")
    result = nightly.doit("-n", "2", "nightly", "--baseline", "xen-4.17", check=False, timeout=3600)
    entries = {e["patch"]: e for e in _manifest(nightly)}
    assert result.returncode == 1  # timer-slop-default changes data the running hypervisor owns: refused
    assert entries["timer-slop-default"]["status"] == "failed"
    assert "[rule: changed-data]" in entries["timer-slop-default"]["reason"]
    ok = sorted(patch for patch, entry in entries.items() if entry["status"] == "ok")
    # Each stacked payload is proven on top of the chain below it; the cumulatives replace nothing there.
    assert ok == ["domctl-iomem-empty-range", "iocap-deny-inverted-range", "regression-test", "stack-1",
                  "stack-1+stack-2", "stack-1+stack-2+stack-3", "stack-2", "stack-3"]
    auditor = copy_checkout(tmp_path / "elsewhere" / "auditor")
    result = auditor.doit("-n", "2", "audit", "--manifest", str(nightly.root / "out" / "release"), timeout=3600)
    for patch in ok:
        assert f"xsplice: audit xen-4.17/{patch}: identical: unsigned payload sha256 " \
               f"{entries[patch]['unsigned_payload_sha256']}" in result.stdout
    assert "xsplice: audit: 8 identical, 0 different or not rebuilt, 1 skipped" in result.stdout
