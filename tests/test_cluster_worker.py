"""Worker slots: one live worker per slot, and a dead worker's orphaned build ended before its slot is reused."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import psutil

from xsplice_build.release.cluster_worker import claim_slot, install_sources, pack_sources

_DYING_OWNER = """
import os, subprocess, sys
from pathlib import Path
from xsplice_build.release.cluster_worker import claim_slot
slot = claim_slot(Path(sys.argv[1]))
slot.checkout.mkdir(parents=True, exist_ok=True)
# A build left running, in its own process group and holding the slot's lock, as a job's doit is.
build = subprocess.Popen(["sleep", "300"], cwd=slot.checkout, start_new_session=True, pass_fds=(slot.lock_fd,),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
(slot.directory / "job.pgid").write_text(str(build.pid))
print(slot.directory.name, build.pid, flush=True)
os._exit(0)
"""


def test_a_dead_workers_orphaned_build_is_ended_before_its_slot_is_reused(tmp_path: Path) -> None:
    owner = subprocess.run([sys.executable, "-c", _DYING_OWNER, str(tmp_path)], capture_output=True, text=True,
                           check=True, timeout=60)
    name, orphan = owner.stdout.split()
    assert name == "slot0" and psutil.pid_exists(int(orphan))  # the owner is gone, its build is not
    slot = claim_slot(tmp_path)
    try:
        assert slot.directory.name == "slot0"
        assert not _running(int(orphan))
        assert (slot.directory / "owner.pid").read_text() == str(os.getpid())
        # A slot whose owner lives is never taken: the next claim gets the next slot.
        second = claim_slot(tmp_path)
        assert second.directory.name == "slot1"
        os.close(second.lock_fd)
    finally:
        os.close(slot.lock_fd)


def test_sources_are_installed_without_keys_and_the_built_trees_are_kept(tmp_path: Path) -> None:
    from conftest import REPO

    archive, digest = pack_sources(REPO)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = tar.getnames()
    assert "toolchain.lock" in names and not any(n.startswith(("keys", "work", "out")) for n in names)
    checkout = tmp_path / "checkout"
    install_sources(checkout, archive, digest)
    kept = checkout / "work" / "minixen" / "base.json"
    kept.parent.mkdir(parents=True)
    kept.write_text("{}")
    (checkout / "patches" / "stale").mkdir()
    install_sources(checkout, archive, "another digest")  # new sources: replaced, work/ kept
    assert kept.read_text() == "{}" and not (checkout / "patches" / "stale").exists()
    assert (checkout / "toolchain.lock").read_bytes() == (REPO / "toolchain.lock").read_bytes()


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
