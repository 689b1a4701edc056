"""The parity table on the real judge: Debian's Xen 4.17 in QEMU answers each bad payload (pytest -m vm).

Every case of tests/payload_edits.CASES is made from a good xen-4.17 payload and uploaded to the
running hypervisor through xen-livepatch (payload_edits.judge_on): one boot for all the cases Xen
survives, then one boot for each case the table says crashes it, which must panic in the function
the table names. verify and minixen run the same table in test_verify.py and test_xen_xsplice.py.
Runs where the VM runtime (xsplice_build.vm.xen_vm) is present.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import REPO, Checkout, copy_checkout
from payload_edits import CASES, Case, Good, judge_on, unsigned_payload

from xsplice_build.project import Project
from xsplice_build.target.image import BaseImage
from xsplice_build.vm.channel import RunDir

pytestmark = pytest.mark.vm
xen_vm = pytest.importorskip("xsplice_build.vm.xen_vm", reason="no VM runtime (xsplice_build.vm) in this checkout")

BASELINE = "xen-4.17"
GOOD = "domctl-iomem-empty-range"
SURVIVED = [case for case in CASES if case.xen.outcome != "crash"]
CRASHES = [case for case in CASES if case.xen.outcome == "crash"]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Checkout:
    """A copy of this checkout (its work/ too, when it holds a xen-4.17 build) with the good payload built."""
    checkout = copy_checkout(tmp_path_factory.mktemp("parity-vm") / "c")
    if (REPO / "work" / BASELINE / "base.json").is_file():
        shutil.copytree(REPO / "work", checkout.root / "work", symlinks=True,
                        ignore=lambda directory, names: {"run", ".lock"} & set(names))
    checkout.doit("build-patch", "--baseline", BASELINE, GOOD, timeout=3600)
    return checkout


@pytest.fixture(scope="module")
def good(checkout: Checkout) -> Good:
    return Good(unsigned_payload(checkout.out(GOOD, BASELINE) / f"{GOOD}.livepatch"),
                BaseImage.load(checkout.work(BASELINE, "base", "tree", "xen", "xen-syms")))


def _stop(checkout: Checkout) -> None:
    if RunDir.of(Project(checkout.root)).pid() is not None:
        xen_vm.XenVM.attach(Project(checkout.root)).shutdown()


@pytest.fixture(scope="module")
def machine(checkout: Checkout) -> Iterator[Any]:
    vm = xen_vm.XenVM.boot(Project(checkout.root), BASELINE)
    yield vm
    _stop(checkout)


@pytest.mark.parametrize("case", SURVIVED, ids=[case.name for case in SURVIVED])
def test_the_real_loader_judges_each_case_as_the_table_says(machine: Any, good: Good, case: Case) -> None:
    outcome, reason = judge_on(machine, case, good)
    assert outcome == case.xen.outcome, reason
    assert case.xen.says in reason
    assert machine.loaded() == []


@pytest.mark.parametrize("case", CRASHES, ids=[case.name for case in CRASHES])
def test_what_xen_trusts_brings_it_down_where_the_table_says(checkout: Checkout, good: Good, case: Case) -> None:
    """Each in a hypervisor of its own (after the shared one is stopped): verify and minixen refuse these."""
    _stop(checkout)
    vm = xen_vm.XenVM.boot(Project(checkout.root), BASELINE)
    try:
        with pytest.raises(xen_vm.HypervisorCrashed, match=case.xen.says):
            vm.upload("parity", case.make(good))
    finally:
        vm.shutdown()
