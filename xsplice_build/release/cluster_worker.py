"""The worker side of the distributed nightly: a slot per worker process, the toolchain gate, one job per pair.

Each Dask worker process claims a slot, a directory at a fixed path
($XSPLICE_WORKER_ROOT/slotN, default /var/tmp/xsplice-worker) that it holds with an
exclusive flock for its lifetime: one checkout per slot, kept between jobs and nights,
so a baseline's trees are built once per worker, and every tree sits at the same path
from one night and one machine to the next (what a compile cache needs from a build that
is not path-independent; the xsplice-cc wrapper makes ours so).

A job copies the coordinator's sources into the slot's checkout, checks the toolchain,
answers from the payload store when its key is there, and otherwise runs the ordinary
doit stages up to `payload:B/P` in its own process group. That process inherits the
slot's lock, so when a worker dies mid-build the slot stays locked until its orphans
are gone: the next process to claim it ends them first (their owner is dead) and no
orphaned compiler ever writes into a tree another job uses. Workers never hold the
signing key: the sources sent to them do not include keys/, and they stop before sign.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import itertools
import logging
import os
import signal
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin, get_worker

from ..errors import XspliceError
from ..files import read_json, remove_tree, write_atomic
from ..pipeline.runner import run_in_child
from ..project import SOURCES, Project
from ..records import Records
from ..stages import toolchain
from . import payload_store
from .manifest import Pair, _base_build_id, failure_reason

DEFAULT_ROOT = "/var/tmp/xsplice-worker"
_CLAIM_SECONDS = 60.0
logger = logging.getLogger("xsplice_build.release.cluster")


class WrongToolchain(XspliceError):
    """This worker's gcc, cc1, as or ld is not the coordinator's locked one: it must not build."""


def toolchain_resource(lock_sha256: str) -> str:
    """The Dask resource a worker holds only while its toolchain matches this lock (jobs require it)."""
    return f"xsplice-toolchain-{lock_sha256[:16]}"


# ---- sources -----------------------------------------------------------------------------------------------

def pack_sources(root: Path) -> tuple[bytes, str]:
    """The checkout's sources as a tar archive (no work/, out/ or keys/) and a digest of their content."""
    buffer = io.BytesIO()
    digest = hashlib.sha256()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in SOURCES:
            path = root / name
            if not path.exists():
                continue
            archive.add(path, arcname=name, recursive=True, filter=_normalised)
            for file in sorted([path] if path.is_file() else path.rglob("*")):
                if file.is_file() and not file.is_symlink():
                    digest.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes())
    return buffer.getvalue(), digest.hexdigest()


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def install_sources(checkout: Path, archive: bytes, digest: str) -> None:
    """Make the slot's checkout hold exactly these sources, keeping its work/ (the built trees)."""
    marker = checkout / ".sources-sha256"
    if marker.is_file() and marker.read_text() == digest:
        return
    marker.unlink(missing_ok=True)
    for name in SOURCES:
        remove_tree(checkout / name)
    checkout.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
        tar.extractall(checkout, filter="data")
    (checkout / "work").mkdir(exist_ok=True)
    write_atomic(marker, digest.encode())


# ---- slots -------------------------------------------------------------------------------------------------

@dataclass
class Slot:
    directory: Path
    lock_fd: int
    busy: threading.Lock

    @property
    def checkout(self) -> Path:
        return self.directory / "checkout"


_SLOT: Slot | None = None
_SLOT_GUARD = threading.Lock()


def worker_root() -> Path:
    return Path(os.environ.get("XSPLICE_WORKER_ROOT") or DEFAULT_ROOT)


def current_slot() -> Slot:
    """This process's slot, claimed on first use and held until the process ends."""
    global _SLOT
    with _SLOT_GUARD:
        if _SLOT is None:
            _SLOT = claim_slot(worker_root())
        return _SLOT


def claim_slot(root: Path) -> Slot:
    """The first slot under `root` no live worker holds; a dead worker's slot is freed of its orphans first."""
    root.mkdir(parents=True, exist_ok=True)
    for number in itertools.count():
        directory = root / f"slot{number}"
        directory.mkdir(exist_ok=True)
        fd = os.open(directory / "slot.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if _lock(fd) or (_owner_dead(directory) and _end_orphans(directory) and _lock(fd, _CLAIM_SECONDS)):
            write_atomic(directory / "owner.pid", str(os.getpid()).encode())
            return Slot(directory, fd, threading.Lock())
        os.close(fd)
    raise AssertionError("unreachable")


def _lock(fd: int, wait: float = 0.0) -> bool:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)


def _owner_dead(directory: Path) -> bool:
    try:
        pid = int((directory / "owner.pid").read_text())
    except (OSError, ValueError):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _end_orphans(directory: Path) -> bool:
    """SIGKILL the process group of the dead owner's last job (doit, make, the compilers)."""
    try:
        group = int((directory / "job.pgid").read_text())
    except (OSError, ValueError):
        return True
    if not _group_works_in(group, directory):
        return True  # gone already (a recycled group number is somebody else's: left alone)
    try:
        os.killpg(group, signal.SIGKILL)
        logger.warning("xsplice: ended the orphaned job (process group %d) of %s", group, directory)
    except (ProcessLookupError, PermissionError):
        pass
    return True


def _group_works_in(group: int, directory: Path) -> bool:
    """Whether a live process of this process group has its working directory in the slot."""
    inside = str(directory.resolve()) + "/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group and fields[0] != "Z" and os.readlink(entry / "cwd").startswith(inside):
                return True
        except (OSError, IndexError, ValueError):
            continue
    return False


# ---- the toolchain gate ------------------------------------------------------------------------------------

def toolchain_problem(slot: Slot, lock: bytes) -> str | None:
    """Why this machine's toolchain is not the one in `lock`, or None when it is exactly that one."""
    expected = slot.directory / "coordinator-toolchain.lock"
    write_atomic(expected, lock)
    try:
        toolchain.check(expected)
    except XspliceError as error:
        return error.message
    return None


class ToolchainGate(WorkerPlugin):
    """Runs on every worker before it takes work: claims the slot; a match gets the job resource, else it leaves.

    Leaving (worker and nanny close) rather than holding the resource at zero: Dask's work
    stealing may hand a loosely restricted task to any idle worker, and a task sent to a worker
    without the resource would wait there forever.
    """

    name = "xsplice-toolchain-gate"

    def __init__(self, lock: bytes, code_sha256: str) -> None:
        self.lock = lock
        self.code_sha256 = code_sha256
        self.resource = toolchain_resource(hashlib.sha256(lock).hexdigest())

    async def setup(self, worker: Any) -> None:
        import asyncio

        slot = await asyncio.to_thread(current_slot)
        problem = await asyncio.to_thread(toolchain_problem, slot, self.lock)
        if problem is None and payload_store.stages_code() != self.code_sha256:
            problem = "its xsplice-build code is not the coordinator's; install the same version on every machine"
        if problem is not None:
            logger.error("xsplice: this worker leaves the cluster, it must not build payloads: %s", problem)
            asyncio.get_running_loop().create_task(worker.close(nanny=True, reason="xsplice: wrong toolchain"))
            return
        await worker.set_resources(**{self.resource: 1})


# ---- one job -----------------------------------------------------------------------------------------------

def record_names(baseline: str, patch: str) -> list[str]:
    """The records the coordinator signs from, relative to work/BASELINE (records.Records says which)."""
    records = Records(Project(Path("/")), baseline, patch)
    return [path.relative_to(records.base).as_posix() for path in records.signing_inputs()]


def run_job(baseline: str, patch: str, archive: bytes, digest: str, lock_sha256: str,
            store: str | None) -> dict[str, Any]:
    """Build one pair up to its unsigned payload in this worker's slot; a small record for the coordinator."""
    result = _run_job(baseline, patch, archive, digest, lock_sha256, store)
    return {**result, "code_sha256": payload_store.stages_code()}


def _run_job(baseline: str, patch: str, archive: bytes, digest: str, lock_sha256: str,
             store: str | None) -> dict[str, Any]:
    slot = current_slot()
    with slot.busy:
        started = time.monotonic()
        install_sources(slot.checkout, archive, digest)
        project = Project(slot.checkout)
        _refuse_wrong_toolchain(project, lock_sha256)
        key = payload_store.store_key(project, baseline, patch, lock_sha256)
        stored = payload_store.lookup(Path(store), key) if store else None
        result: dict[str, Any] = {"baseline": baseline, "patch": patch, "worker": _address(),
                                  "slot": str(slot.directory), "toolchain_lock_sha256": lock_sha256, "store_key": key}
        _journal(slot, f"start {baseline}/{patch} {key}")
        if stored is not None:
            _journal(slot, f"stored {baseline}/{patch} {key}")
            return {**result, "status": "ok", "reason": None, "source": "store", "ran": [], "records":
                    stored.records, "unsigned": stored.unsigned, "seconds": time.monotonic() - started}
        result.update(_build(slot, project, Pair(baseline, patch)))
        if result["status"] == "ok" and store:
            payload_store.put(Path(store), key, payload_store.StoredResult(result["records"], result["unsigned"]))
        result["seconds"] = time.monotonic() - started
        _journal(slot, f"{result['status']} {baseline}/{patch} {key}")
        return result


def _journal(slot: Slot, line: str) -> None:
    """One line per job event in the slot's jobs.log: what ran where, for operators (and the tests)."""
    with (slot.directory / "jobs.log").open("a") as journal:
        journal.write(f"{os.getpid()} {line}\n")


def _refuse_wrong_toolchain(project: Project, lock_sha256: str) -> None:
    if toolchain.lock_digest(project.lock_path) != lock_sha256:
        raise WrongToolchain(f"worker {_address()}: the sources' toolchain.lock is not the one the coordinator "
                             f"checks results against ({lock_sha256})")
    try:
        toolchain.check(project.lock_path)
    except XspliceError as error:
        _leave()
        raise WrongToolchain(f"worker {_address()}: {error.message}") from None


def _leave() -> None:
    """This worker's toolchain changed under it: close it (and its nanny), so the retry runs on another."""
    try:
        worker = get_worker()
    except ValueError:
        return
    worker.loop.add_callback(worker.close, nanny=True, reason="xsplice: wrong toolchain")


def _address() -> str:
    try:
        return get_worker().address
    except ValueError:
        return f"pid {os.getpid()}"


def _build(slot: Slot, project: Project, pair: Pair) -> dict[str, Any]:
    root = project.root
    # Its own session and process group, holding the slot's lock: ended as a group if this worker dies.
    run = run_in_child(root, ["toolchain", f"payload:{pair.name}"], start_new_session=True, pass_fds=(slot.lock_fd,),
                       started=lambda process: write_atomic(slot.directory / "job.pgid", str(process.pid).encode()))
    failures, ran = run.failed, run.started
    if "toolchain" in failures:
        _leave()
        raise WrongToolchain(f"worker {_address()}: {failures['toolchain']}")
    if not run.ran:
        raise XspliceError(f"worker {_address()}: doit in {root} did not run (exit {run.code})")
    reason = failure_reason(pair, failures)
    records = Path(project.baseline_work(pair.baseline))
    unsigned = records / "patches" / pair.patch / f"{pair.patch}.livepatch.unsigned"
    if reason is None and not unsigned.is_file():
        reason = f"payload:{pair.name}: no unsigned payload was made"
    if reason is not None:
        reason = reason.replace(f"{root.resolve()}/", "").replace(f"{root}/", "")
        return {"status": "failed", "reason": reason, "source": "built", "ran": ran, "records": {}, "unsigned": b"",
                "base_build_id": _base_build_id(project, pair, reason)}
    texts = {name: (records / name).read_text() for name in record_names(pair.baseline, pair.patch)}
    lock_state = read_json(project.toolchain_state, "toolchain check record")
    return {"status": "ok", "reason": None, "source": "built", "ran": ran, "records": texts,
            "unsigned": unsigned.read_bytes(), "toolchain_lock_sha256": lock_state["lock_sha256"]}
