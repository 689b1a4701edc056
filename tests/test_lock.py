"""Every command that writes work/ or out/ holds the checkout's lock: two of them in one checkout both finish."""

from __future__ import annotations

import os
import subprocess

from conftest import BIN, Checkout

from xsplice_build.lock import hold, holding
from xsplice_build.project import Project


def test_build_patch_and_a_parallel_nightly_in_one_checkout_both_succeed(checkout: Checkout) -> None:
    # Before: the nightly ignored the lock and both built the same tree (a compiler's dependency file vanished).
    env = {**os.environ, "XSPLICE_ROOT": str(checkout.root), "PYTHONUNBUFFERED": "1"}
    build = subprocess.Popen([str(BIN / "doit"), "build-patch", "XSA-131"], cwd=checkout.root, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert build.stdout is not None
    first = build.stdout.readline()  # the build holds the lock once it prints
    assert first.startswith("xsplice: start"), first
    nightly = checkout.doit("-n", "2", "nightly", "--baseline", "minixen", check=False)
    rest = build.stdout.read()
    assert build.wait(timeout=600) == 0, first + rest
    assert nightly.returncode == 0, nightly.stdout + nightly.stderr
    assert "waiting for another build in this checkout" in nightly.stdout
    assert " ok, 0 failed; out/release/manifest.json" in nightly.stdout  # every minixen pair shipped


def test_a_plain_doit_run_of_a_stage_waits_for_the_lock_too(checkout: Checkout) -> None:
    holder = subprocess.Popen([str(BIN / "python"), "-c", "import sys, time\n"
                               "from pathlib import Path\nfrom xsplice_build.lock import hold\n"
                               "from xsplice_build.project import Project\n"
                               f"hold(Project(Path({str(checkout.root)!r})))\nprint('held', flush=True)\n"
                               "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        for command in (["toolchain"], ["forget", "toolchain"], ["audit", "XSA-131"]):
            waited = checkout.doit(*command, check=False, env={"XSPLICE_LOCK_TIMEOUT": "0.5"})
            text = waited.stdout + waited.stderr
            assert "waiting for another build in this checkout" in text, (command, text)
            assert "still holds the lock after" in text, (command, text)
        listed = checkout.doit("list", env={"XSPLICE_LOCK_TIMEOUT": "0.5"})  # reading only: no wait
        assert "waiting" not in listed.stdout
    finally:
        holder.communicate("", timeout=30)


def test_the_lock_is_held_once_per_process(checkout: Checkout) -> None:
    project = Project(checkout.root)
    hold(project)
    hold(project)  # a command that locks, then runs the pipeline that locks: no wait on itself
    assert (checkout.root / "work" / ".lock").read_text().strip() == str(os.getpid())


def test_a_library_call_releases_the_lock_when_it_returns(checkout: Checkout) -> None:
    # runner.run_targets and hypervisor.boot called from a long-lived process (a test, a coordinator) must not
    # keep the checkout locked after they return: a build started afterwards would wait for the process to end.
    project = Project(checkout.root)
    with holding(project), holding(project):  # re-entrant: the outer block owns it
        hold(project)  # a command's hold inside changes nothing
    other = subprocess.run([str(BIN / "python"), "-c", "from pathlib import Path\n"
                            "from xsplice_build.lock import holding\nfrom xsplice_build.project import Project\n"
                            f"with holding(Project(Path({str(checkout.root)!r}))): print('took it')"],
                           capture_output=True, text=True, env={**os.environ, "XSPLICE_LOCK_TIMEOUT": "1"},
                           check=False, timeout=60)
    assert other.stdout == "took it\n", other.stdout + other.stderr
