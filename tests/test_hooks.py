"""Payload hooks (.livepatch.hooks.*): carried by the diff, run by minixen's loader as Xen's runs them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Checkout, minixen_running, ok, one_line_failure, xen_xsplice

from xsplice_build.project import Project
from xsplice_build.vm.channel import RunDir


@pytest.fixture
def running(stacks_built: Checkout, tmp_path: Path) -> Iterator[Checkout]:
    yield from minixen_running(stacks_built, tmp_path / "running")


def _upload(checkout: Checkout, name: str) -> None:
    ok(xen_xsplice(checkout, "upload", name, str(checkout.out(name) / f"{name}.livepatch")))


def test_the_hooks_run_on_apply_and_revert(running: Checkout) -> None:
    """Load +1 and post-apply +10 once applied; pre-revert -10 and unload -1 once reverted (the probes)."""
    said = ok(xen_xsplice(running, "prove", "hook-counter"))
    assert "every probe held before, applied and reverted" in said
    report = running.report("hook-counter")
    assert report["new_functions"] == ["common/domctl.o: after_apply", "common/domctl.o: before_revert",
                                       "common/domctl.o: count_apply", "common/domctl.o: count_revert"]
    assert [f["name"] for f in report["functions"]] == ["do_domctl"]  # hooks are never replacements


def test_a_failing_pre_apply_hook_stops_the_apply(running: Checkout) -> None:
    _upload(running, "hook-preapply-fails")
    refused = xen_xsplice(running, "apply", "hook-preapply-fails")
    assert refused.returncode != 0 and "pre-apply hook failed (rc=-16), aborting" in refused.stderr
    with RunDir.of(Project(running.root)).connect() as connection:
        answer = connection.request("livepatch apply hook-preapply-fails")
        assert answer.rc == -16
        assert connection.request("info").value("xen_changeset") == "minixen"  # nothing was patched
        assert connection.request("livepatch get hook-preapply-fails").value("state") == "CHECKED"
    ok(xen_xsplice(running, "unload", "hook-preapply-fails"))


def test_replace_is_refused_while_a_payload_with_vetoing_hooks_is_applied(running: Checkout) -> None:
    _upload(running, "hook-counter")
    ok(xen_xsplice(running, "apply", "hook-counter"))
    _upload(running, "stack-1+stack-2")
    refused = xen_xsplice(running, "replace", "stack-1+stack-2")
    assert "REPLACE action is not supported on livepatches with vetoing hooks" in refused.stderr
    ok(xen_xsplice(running, "revert", "hook-counter"))
    for name in ("stack-1+stack-2", "hook-counter"):
        ok(xen_xsplice(running, "unload", name))


def test_hooks_for_a_loader_without_them_are_refused(checkout: Checkout) -> None:
    definition = checkout.root / "baseline" / "minixen.toml"
    text = definition.read_text()
    assert 'profile = "xen-x86_64"\n' in text
    limited = 'profile = "xen-x86_64"\nhooks = ["load", "unload"]\n'
    definition.write_text(text.replace('profile = "xen-x86_64"\n', limited))
    line = one_line_failure(checkout.doit("build-patch", "hook-counter", check=False))
    assert ".livepatch.hooks.prerevert: this baseline's loader does not run such hooks (it runs: load, unload)" \
        in line and "[rule: hooks-unsupported]" in line
