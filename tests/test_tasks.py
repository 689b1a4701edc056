"""Task wiring: each stage declares every record it reads, so any order doit picks (-n 2) is a valid one."""

from __future__ import annotations

from conftest import Checkout


def test_each_pair_stage_runs_alone_from_its_declared_dependencies(checkout: Checkout) -> None:
    # Selecting one stage runs only what its file_dep names: a record read but not declared is missing here
    # (the diff stage reads base.json; a parallel nightly once ran it before build-base).
    for stage in ("diff", "payload", "sign"):
        result = checkout.doit(f"{stage}:minixen-1.1/XSA-131")
        assert "FAILED" not in result.stdout
    assert (checkout.out("XSA-131", "minixen-1.1") / "XSA-131.livepatch").is_file()
