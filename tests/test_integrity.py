"""Damaged caches are rebuilt, never trusted; runs killed mid-stage give the same bytes when run again."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, Checkout, copy_checkout

FAULTS = Path(__file__).resolve().parent / "fault_injection"


def _started(output: str) -> list[str]:
    return re.findall(r"^xsplice: start (\S+)", output, re.MULTILINE)


def _flip(path: Path, offset: int = 0x40) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


DAMAGE = [
    ("truncated diff record", "work/minixen/patches/XSA-131/diff.json", _truncate, "diff:minixen/XSA-131"),
    ("truncated patched record", "work/minixen/patches/XSA-131/patched.json", _truncate,
     "build-patched:minixen/XSA-131"),
    ("tampered original object", "work/minixen/orig/tree/common/domctl.o", _flip, "build-orig:minixen"),
    ("tampered base image", "work/minixen/base/tree/xen-syms", _flip, "build-base:minixen"),
    ("tampered patched object", "work/minixen/patches/XSA-131/objects/common/domctl.o.XSPLICE", _flip,
     "build-patched:minixen/XSA-131"),
    ("tampered extract", "work/minixen/patches/XSA-131/extract.o", _flip, "diff:minixen/XSA-131"),
    ("tampered unsigned payload", "work/minixen/patches/XSA-131/XSA-131.livepatch.unsigned", _flip,
     "payload:minixen/XSA-131"),
    ("truncated unsigned payload", "work/minixen/patches/XSA-131/XSA-131.livepatch.unsigned", _truncate,
     "payload:minixen/XSA-131"),
    ("tampered signed payload", "out/minixen/XSA-131/XSA-131.livepatch", _flip, "sign:minixen/XSA-131"),
    ("edited pristine source", "work/minixen/src/common/domctl.c", lambda p: p.write_text(p.read_text() + "\n"),
     "checkout:minixen"),
]


@pytest.mark.parametrize(("damage", "relative", "harm", "stage"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_cache_entry_is_rebuilt_not_trusted(built: Checkout, damage: str, relative: str, harm,
                                                      stage: str) -> None:
    payload = built.out("XSA-131") / "XSA-131.livepatch"
    good = payload.read_bytes()
    harm(built.root / relative)
    result = built.doit("build-patch", "XSA-131")
    assert stage in _started(result.stdout), result.stdout
    assert payload.read_bytes() == good
    # Repaired: the next run trusts it again.
    assert _started(built.doit("build-patch", "XSA-131").stdout) == []


def _killed_mid_stage(checkout: Checkout, pause: str, marker: Path) -> None:
    """Run build-patch until the fault hook freezes it inside a stage, then SIGKILL its process group."""
    env = {**os.environ, "XSPLICE_ROOT": str(checkout.root), "PYTHONPATH": str(FAULTS),
           "XSPLICE_TEST_PAUSE": pause, "XSPLICE_TEST_PAUSED": str(marker)}
    process = subprocess.Popen([str(BIN / "doit"), "build-patch", "XSA-131"], cwd=checkout.root, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert process.poll() is None, "the build ended before reaching the pause point"
            assert time.monotonic() < deadline, "the build never reached the pause point"
            time.sleep(0.01)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize(("pause", "record", "stage"), [
    ("copy2:domctl.o.XSPLICE", "patched.json", "build-patched:minixen/XSA-131"),
    ("replace:XSA-131.livepatch.unsigned", "payload.json", "payload:minixen/XSA-131"),
], ids=["during-build-patched", "during-payload"])
def test_a_run_killed_mid_stage_gives_the_same_bytes_when_run_again(built_once: Checkout, tmp_path: Path,
                                                                     pause: str, record: str, stage: str) -> None:
    checkout = copy_checkout(tmp_path / "checkout")
    shutil.copytree(built_once.root / "keys", checkout.root / "keys")  # same key: signed bytes comparable too
    # Where the stage can write: build-patched runs in the build sandbox, which sees nothing of tmp_path.
    _killed_mid_stage(checkout, pause, checkout.work("minixen", "patches", "XSA-131", "paused"))
    assert not checkout.work("minixen", "patches", "XSA-131", record).exists()
    assert not checkout.out("XSA-131").exists()
    result = checkout.doit("build-patch", "XSA-131")
    assert stage in _started(result.stdout)
    for name in ("XSA-131.livepatch", "report.json"):
        assert (checkout.out("XSA-131") / name).read_bytes() == (built_once.out("XSA-131") / name).read_bytes()
    unsigned = Path("work/minixen/patches/XSA-131/XSA-131.livepatch.unsigned")
    assert (checkout.root / unsigned).read_bytes() == (built_once.root / unsigned).read_bytes()
    assert not list((checkout.root / unsigned).parent.glob(".*.tmp"))  # what the killed write left is gone


def test_a_run_killed_during_payload_after_a_good_one_keeps_the_old_payload_then_rebuilds(built: Checkout,
                                                                                         tmp_path: Path) -> None:
    payload = built.out("XSA-131") / "XSA-131.livepatch"
    good = payload.read_bytes()
    (built.root / "work" / "minixen" / "patches" / "XSA-131" / "payload.json").unlink()
    _killed_mid_stage(built, "replace:XSA-131.livepatch.unsigned", tmp_path / "paused")
    assert payload.read_bytes() == good
    result = built.doit("build-patch", "XSA-131")
    assert "payload:minixen/XSA-131" in _started(result.stdout)
    assert payload.read_bytes() == good


def _git_logging_each_call(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose git (first on PATH) logs each call to the returned file, then runs the real git."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "git-calls"
    bin_dir.mkdir()
    wrapper = bin_dir / "git"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {shutil.which("git")} "$@"\n')
    wrapper.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, calls


def test_a_no_op_starts_no_git_and_no_stage(built: Checkout, tmp_path: Path) -> None:
    env, calls = _git_logging_each_call(tmp_path)
    built.doit("build-patch", "XSA-131", env=env)  # a new PATH: the toolchain is probed again, once
    calls.unlink(missing_ok=True)
    result = built.doit("build-patch", "XSA-131", env=env)
    assert _started(result.stdout) == [], result.stdout
    assert not calls.exists(), calls.read_text()
    # The pristine tree changed: git is asked again, and the checkout redone.
    source = built.root / "work/minixen/src/common/domctl.c"
    source.write_text(source.read_text() + "\n")
    result = built.doit("build-patch", "XSA-131", env=env)
    assert "checkout:minixen" in _started(result.stdout)
    assert calls.exists()


def test_a_pristine_file_only_touched_is_asked_of_git_once(built: Checkout, tmp_path: Path) -> None:
    env, calls = _git_logging_each_call(tmp_path)
    built.doit("build-patch", "XSA-131", env=env)  # a new PATH: the toolchain is probed again, once
    os.utime(built.root / "work/minixen/src/common/domctl.c")  # same bytes, a new mtime: only git can tell
    calls.unlink(missing_ok=True)
    result = built.doit("build-patch", "XSA-131", env=env)
    assert _started(result.stdout) == [] and calls.exists()  # intact, so nothing runs again
    calls.unlink()
    result = built.doit("build-patch", "XSA-131", env=env)
    assert _started(result.stdout) == [] and not calls.exists()  # what git found is not asked again


def test_a_changed_toolchain_lock_or_record_is_checked_again(built: Checkout) -> None:
    lock = built.root / "toolchain.lock"
    lock.write_text(lock.read_text() + "# reviewed again\n")
    assert "toolchain" in _started(built.doit("build-patch", "XSA-131").stdout)
    record = built.root / "work/toolchain.json"
    record.write_text(record.read_text().replace('"tools"', '"tools" ', 1))
    result = built.doit("build-patch", "XSA-131")
    assert "toolchain" in _started(result.stdout)
    assert _started(built.doit("build-patch", "XSA-131").stdout) == []
