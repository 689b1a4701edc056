"""The VM tier: Debian's real Xen 4.17 in QEMU judges the xen-4.17 payloads (pytest -m vm).

One boot per session (`xen-xsplice boot xen-4.17`, as a user would). Every xen-4.17 patch of
patches/ with a probe file must give a payload that loads, applies (its probes see the change),
reverts (they see the old answers) and unloads on the real hypervisor; a xen-4.17 patch without
one is a patch the build refuses (the xen tier checks that refusal). The payloads are built in a
copy of this checkout; its work/ is seeded from this checkout's when that holds a xen-4.17 build.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import BIN, REPO, Checkout, copy_checkout
from payload_edits import other_build_id, resign, unknown_symbol, unsigned_payload

from xsplice_build.patches import patch_names
from xsplice_build.project import Project
from xsplice_build.target.baseline import load_baseline
from xsplice_build.vm.channel import RunDir
from xsplice_build.vm.probes import load_probes, probe_file
from xsplice_build.vm.vm_runtime import boot_files, initramfs, load_runtime, unpacked_root
from xsplice_build.vm.xen_vm import XenVM

pytestmark = pytest.mark.vm

BASELINE = "xen-4.17"


@dataclass
class Built:
    checkout: Checkout
    results: dict[str, subprocess.CompletedProcess[str]]

    def payload(self, patch: str) -> Path:
        return self.checkout.out(patch, BASELINE) / f"{patch}.livepatch"


def _xen_patches(project: Project) -> list[str]:
    return [patch for patch in patch_names(project) if (project.patches_dir / patch / f"{BASELINE}.patch").is_file()]


def _proven_patches(project: Project) -> list[str]:
    """The xen-4.17 patches expected to give a payload: those with probes, or whose expect.toml says so."""
    return [patch for patch in _xen_patches(project) if probe_file(project, patch, BASELINE).is_file()
            or _expected_outcome(project, patch) == "payload"]


def _expected_outcome(project: Project, patch: str) -> str | None:
    expect = project.patches_dir / patch / "expect.toml"
    return tomllib.loads(expect.read_text()).get("outcome") if expect.is_file() else None


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    checkout = copy_checkout(tmp_path_factory.mktemp("vm") / "c")
    if (REPO / "work" / BASELINE / "base.json").is_file():
        shutil.copytree(REPO / "work", checkout.root / "work", symlinks=True,
                        ignore=lambda directory, names: {"run", "runtime", ".lock"} & set(names))
    results = {patch: checkout.doit("build-patch", "--baseline", BASELINE, patch, check=False, timeout=3600)
               for patch in _proven_patches(Project(checkout.root))}
    return Built(checkout, results)


def xen(checkout: Checkout, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "xen-xsplice"), *args], cwd=checkout.root, capture_output=True, text=True,
                          env={**os.environ, "XSPLICE_ROOT": str(checkout.root)}, check=False, timeout=timeout)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="session")
def vm(built: Built) -> Iterator[XenVM]:
    """Debian's hypervisor booted once by `xen-xsplice boot xen-4.17`, attached through the Python API."""
    boot = xen(built.checkout, "boot", BASELINE, timeout=1800)
    assert boot.returncode == 0, boot.stdout + boot.stderr + _console(built.checkout)
    machine = XenVM.attach(Project(built.checkout.root))
    yield machine
    machine.shutdown()


def _console(checkout: Checkout) -> str:
    log = checkout.work("run", "hypervisor.log")
    return "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.is_file() else ""


def _clean(vm: XenVM) -> None:
    assert vm.loaded() == [], "a payload stayed loaded"


def test_the_hypervisor_that_runs_is_the_baselines(built: Built, vm: XenVM) -> None:
    expected = load_baseline(Project(built.checkout.root), BASELINE).build.expected_build_id
    assert vm.build_id == expected
    info = ok(xen(built.checkout, "info")).splitlines()
    assert any(line.split(":", 1) == ["build_id               ", f" {expected}"] for line in info), info
    assert vm.run("cat /sys/hypervisor/version/major /sys/hypervisor/version/minor").lines == ["4", "17"]


@pytest.mark.parametrize("patch", _proven_patches(Project(REPO)))
def test_each_xen_patch_with_probes_is_proven_on_the_real_hypervisor(built: Built, vm: XenVM, patch: str) -> None:
    result = built.results[patch]
    assert result.returncode == 0, result.stdout + result.stderr
    if not probe_file(Project(built.checkout.root), patch, BASELINE).is_file():
        # No probe of its own yet: the shipped file must still load, apply, revert and unload.
        verdict = vm.try_payload(patch.replace(".", "_"), built.payload(patch).read_bytes())
        assert verdict.ok, verdict.reason
        assert any("finished APPLY with rc=0" in line for line in verdict.livepatch_lines)
        _clean(vm)
        return
    proof = ok(xen(built.checkout, "prove", patch))
    assert f"{patch}: proven on {BASELINE} (pid {vm.pid})" in proof
    assert f"{patch}: State is 0x2, ok are 0x2. Commencing revert:completed!" in proof
    _clean(vm)


def test_the_xen_patches_without_probes_are_the_refused_ones() -> None:
    # Their refusal at build time is checked by the xen tier (tests/test_xen.py).
    project = Project(REPO)
    unproven = set(_xen_patches(project)) - set(_proven_patches(project))
    assert "timer-slop-default" in unproven
    # Every one the VM does not prove is expected to be refused or to give nothing to patch.
    assert {patch: _expected_outcome(project, patch) for patch in unproven if patch != "timer-slop-default"} == {
        patch: outcome for patch in unproven if patch != "timer-slop-default"
        for outcome in [_expected_outcome(project, patch)] if outcome in ("unpatchable", "nothing-to-patch")}


def test_the_probes_see_each_fix_while_it_is_applied() -> None:
    """What the proofs above checked is a change: applied answers differ, reverted ones are the old."""
    project = Project(REPO)
    changed = set()
    for patch in _proven_patches(project):
        path = probe_file(project, patch, BASELINE)
        if not path.is_file():  # proven loaded, applied and reverted, without a probe of its own
            continue
        probes = load_probes(path)
        assert all(p.expected["before"] == p.expected["reverted"] for p in probes)
        if any(p.expected["applied"] != p.expected["before"] for p in probes):
            changed.add(patch)
    # iocap-deny-inverted-range's fix cannot be reached by any hypercall (its probe file says why).
    assert changed >= {"regression-test", "domctl-iomem-empty-range"}


def test_the_console_session_on_real_xen(built: Built, vm: XenVM) -> None:
    payload = str(built.payload("regression-test"))
    assert ok(xen(built.checkout, "upload", "regression-test", payload)).startswith(f"Uploading {payload} (")
    try:
        assert ok(xen(built.checkout, "list")).splitlines()[2].split() == ["regression-test", "|", "CHECKED"]
        assert "State is 0x1" in ok(xen(built.checkout, "check", "regression-test"))
        assert ok(xen(built.checkout, "apply", "regression-test")).endswith("Commencing apply:completed!\n")
        assert vm.run("cat /sys/hypervisor/version/extra").lines == ["-Hello_World"]
        refused = xen(built.checkout, "unload", "regression-test")
        assert refused.returncode == 1 and "cannot unload a payload that is APPLIED" in refused.stderr
        ok(xen(built.checkout, "revert", "regression-test"))
        assert vm.run("cat /sys/hypervisor/version/extra").lines == [".5"]
    finally:
        vm.clean("regression-test")
    _clean(vm)


def test_a_payload_xen_refuses_shows_the_hypervisors_line(built: Built, vm: XenVM, tmp_path: Path) -> None:
    """Signed and for this build-id, so only Xen's loader can refuse it: its own line is the reason."""
    bad = tmp_path / "bad.livepatch"
    keys = built.checkout.root / "keys" / "development"
    bad.write_bytes(resign(unknown_symbol(unsigned_payload(built.payload("regression-test"))), keys))
    result = xen(built.checkout, "upload", "bad", str(bad))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("xen-xsplice: upload bad: refused by Xen")
    assert "livepatch: bad: Unknown symbol:" in result.stderr
    assert any(line.startswith("(XEN) livepatch: bad: Unknown symbol:") for line in result.stdout.splitlines())
    _clean(vm)


def test_the_api_gives_a_verdict_and_leaves_nothing_loaded(built: Built, vm: XenVM) -> None:
    good = unsigned_payload(built.payload("regression-test"))
    verdict = vm.try_payload("regression-test", good)
    assert verdict.ok and verdict.action == "unload", verdict.reason
    assert any("finished APPLY with rc=0" in line for line in verdict.livepatch_lines)
    refused = vm.try_payload("regression-test", other_build_id(good))
    assert not refused.ok and refused.action == "upload"
    assert "Error 22" in refused.reason and "check against hypervisor build-id failed" in refused.reason
    _clean(vm)


def test_a_hypervisor_that_is_not_the_baselines_is_refused_at_boot(built: Built, vm: XenVM, tmp_path: Path) -> None:
    # The payloads depend on the baseline's build-id: a VM running another hypervisor must never judge them.
    # Here the baseline expects another build-id than the one Debian's hypervisor has (same boot files).
    other = copy_checkout(tmp_path / "other")
    shutil.copytree(built.checkout.root / "work" / "runtime", other.root / "work" / "runtime", symlinks=True)
    definition = other.root / "baseline" / f"{BASELINE}.toml"
    running = vm.build_id
    assert load_baseline(Project(other.root), BASELINE).build.expected_build_id == running
    definition.write_text(definition.read_text().replace(running, "0" * 40))
    result = xen(other, "boot", BASELINE, timeout=1800)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    refusal = result.stderr.splitlines()[-1]  # after the progress lines
    assert refusal.startswith(f"xen-xsplice: {BASELINE}: the hypervisor booted with build-id {running}, the "
                              f"baseline expects {'0' * 40}; refusing it"), result.stderr
    assert RunDir.of(Project(other.root)).pid() is None  # shut down, not left running


def test_the_initramfs_is_the_same_bytes_from_any_directory(built: Built, tmp_path: Path) -> None:
    project = Project(built.checkout.root)
    runtime = load_runtime(project, BASELINE)
    booted = boot_files(project, runtime).initrd.read_bytes()
    root = unpacked_root(project, runtime)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        assert initramfs(runtime, root, tmp_path / name) == booted


def test_the_prove_stage_records_the_hypervisors_lines_on_the_running_vm(built: Built, vm: XenVM) -> None:
    """`doit prove:B/P` uses the VM a user booted (and leaves it running), and records what Xen said."""
    result = built.checkout.doit(f"prove:{BASELINE}/regression-test")
    assert f"done prove:{BASELINE}/regression-test" in result.stdout, result.stdout
    record = json.loads(built.checkout.work(BASELINE, "patches", "regression-test", "proof.json").read_text())
    assert record["hypervisor_build_id"] == vm.build_id and record["probes"] == 1
    assert "(XEN) livepatch: regression-test finished APPLY with rc=0" in record["console"]
    assert "(XEN) livepatch: regression-test finished REVERT with rc=0" in record["console"]
    assert XenVM.attach(Project(built.checkout.root)).pid == vm.pid
    _clean(vm)


def test_the_chain_is_replaced_by_its_cumulative_payload_on_the_real_hypervisor(built: Built, vm: XenVM) -> None:
    """Xen's REPLACE (`xen-livepatch replace`): stack-1 applied, then swapped for stack-1+stack-2+stack-3."""
    cumulative = "stack-1+stack-2+stack-3"
    result = built.checkout.doit("build-patch", "--baseline", BASELINE, "--replace", "stack-1", "stack-2", "stack-3",
                                 check=False, timeout=3600)
    assert result.returncode == 0, result.stdout + result.stderr
    proof = ok(xen(built.checkout, "prove", cumulative))
    assert f"applied stack-1, replaced it with {cumulative} (the probes of stack-3 held)" in proof
    _clean(vm)
