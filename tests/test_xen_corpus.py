"""The diff corpus on real Xen (pytest -m xen): patches written against Debian's Xen 4.17 tree.

Each patches/<case>/ with a xen-4.17.patch and an expect.toml (corpus = true) is built through
the pipeline against the real hypervisor and checked against its expectation, with the keys the
minixen corpus uses (README, "The diff corpus"): struct layouts from the compiler's DWARF,
per-CPU variables compared one by one, a .data.paramhypfs table into moved init code, lines
reaching a shared printk through a jump, and a fix only CPU bring-up runs; each unsafe case
with its safe twin.
"""

from __future__ import annotations

import tomllib

import pytest
from conftest import REPO, copy_checkout
from corpus_cases import Built, check_outcome, expectation

pytestmark = pytest.mark.xen

BASELINE = "xen-4.17"
# A case with a minixen variant too (hook-counter) has an expect.toml that describes the minixen variant:
# the VM tier proves its xen-4.17 payload.
CASES = sorted(p.parent.name for p in (REPO / "patches").glob(f"*/{BASELINE}.patch")
               if (p.parent / "expect.toml").is_file() and not (p.parent / "minixen.patch").is_file()
               and tomllib.loads((p.parent / "expect.toml").read_text()).get("corpus") is True)


@pytest.fixture(scope="module")
def xen_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    # A checkout whose Xen base build is already in work/ starts from it (every record is checked before
    # it is trusted); otherwise this builds Debian's hypervisor first, a few minutes.
    warm = (REPO / "work" / BASELINE / "base.json").is_file()
    checkout = copy_checkout(tmp_path_factory.mktemp("xen-corpus") / "checkout", REPO, with_state=warm)
    built = {}
    for case in CASES:
        result = checkout.doit("build-patch", "--baseline", BASELINE, case, check=False, timeout=1800)
        built[case] = Built(case, BASELINE, result, checkout)
    return built


def test_each_class_has_an_unsafe_case_and_a_safe_twin() -> None:
    outcomes = {case: tomllib.loads((REPO / "patches" / case / "expect.toml").read_text())["outcome"]
                for case in CASES}
    for prefix in ("xen-gnttab-struct", "xen-percpu", "xen-paramhypfs", "xen-line-shared-tail", "xen-bringup"):
        kinds = {outcome for case, outcome in outcomes.items() if case.startswith(prefix)}
        assert len(kinds) >= 2 or prefix == "xen-bringup", (prefix, kinds)


@pytest.mark.parametrize("case", CASES)
def test_xen_case_outcome(xen_corpus: dict[str, Built], case: str) -> None:
    expect, built = expectation(case), xen_corpus[case]
    check_outcome(built, expect)
    if expect["outcome"] == "payload":
        report = built.checkout.report(case, BASELINE)
        assert sorted(f["name"] for f in report["functions"]) == sorted(expect["patched"])
        assert report["new_functions"] == sorted(expect["new"])
    explained = (built.work / "diff.explain.txt").read_text()
    assert "types  " in explained  # the type comparison of every changed unit is shown
