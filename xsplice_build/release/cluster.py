"""The coordinator of the distributed nightly (`doit nightly --scheduler tcp://HOST:PORT`), on Dask distributed.

One Dask task per (baseline, patch) pair runs on a worker (cluster_worker.run_job) and
returns a small record: the stage records and the unsigned payload. Jobs of one baseline
are pinned to one worker (loosely: if it dies they run elsewhere), so its trees are
built once per worker. Only workers whose toolchain matches the lock hold the resource
jobs require, and every result whose lock hash is not the coordinator's is refused.
The coordinator alone signs (the same sign stage as the one-machine nightly, over the
workers' records copied into its work/) and writes out/release/ and the manifest, so the
two nightlies give the same bytes. A real-Xen pair ships, as in the one-machine nightly, only
once the real hypervisor loaded, applied and reverted it: the coordinator proves it after
signing (the same prove stage, one VM for the run), since what ships is what it signed.
"""

from __future__ import annotations

import json
import time
from typing import Any, TextIO

from distributed import Client, as_completed
from distributed.comm.core import CommClosedError

from ..errors import XspliceError
from ..files import sha256_bytes, write_atomic
from ..patches import build_spec
from ..project import Project
from ..records import PayloadRecord, Records
from ..stages import steps as stages
from ..stages import toolchain
from ..vm.vm_runtime import has_runtime
from ..vm.xen_vm import stop_stage_vm
from . import manifest as release
from . import payload_store
from .cluster_worker import ToolchainGate, pack_sources, record_names, run_job, toolchain_resource
from .manifest import Pair

RETRIES = 3
_WAIT_FOR_WORKERS = 60.0


def run_nightly(project: Project, pairs: list[Pair], scheduler: str, store: str | None,
                stream: TextIO) -> list[dict[str, Any]]:
    """Build every pair on the cluster, sign here; the manifest entries, in the order of `pairs`."""
    lock = project.lock_path.read_bytes()
    lock_sha256 = toolchain.lock_digest(project.lock_path)
    archive, digest = pack_sources(project.root)
    try:
        client = Client(scheduler)  # connect timeout: Dask's distributed.comm.timeouts.connect (30 s)
    except OSError as error:
        raise XspliceError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({error}); start it with "
                           "`dask scheduler` and give its tcp://HOST:PORT") from None
    with client:
        stages.stage_dev_keys(project)
        try:
            client.register_plugin(ToolchainGate(lock, payload_store.stages_code()))
        except (OSError, CommClosedError) as error:
            # A worker lost while it ran the gate; the scheduler keeps the plugin for every worker that joins.
            _say(stream, f"cluster: a worker was lost while checking its toolchain ({error}); going on")
        workers = _eligible_workers(client, toolchain_resource(lock_sha256), scheduler)
        _say(stream, f"cluster: {len(workers)} worker(s) with the locked toolchain at {scheduler}")
        shared = client.scatter(archive, broadcast=True, hash=True)
        futures = _submit(client, pairs, workers, shared, digest, lock_sha256, store)
        results = {}
        # Gathered as they finish: a result in hand is never lost (or rebuilt) when its worker dies later.
        for future in as_completed(list(futures)):
            pair = futures[future]
            results[pair] = _result(future, pair)
            future.release()
            _report_job(stream, pair, results[pair])
    entries = [_entry(project, pair, results[pair], lock_sha256) for pair in pairs]
    return _proven(project, pairs, entries, stream)


def _proven(project: Project, pairs: list[Pair], entries: list[dict[str, Any]],
            stream: TextIO) -> list[dict[str, Any]]:
    """`entries` with each signed real-Xen pair proven on its hypervisor here, or failed with the reason."""
    failed = {pair for pair, item in zip(pairs, entries, strict=True) if item["status"] != "ok"}
    proven = list(entries)
    try:
        for number, pair in enumerate(pairs):
            if proven[number]["status"] != "ok" or not has_runtime(project, pair.baseline):
                continue
            reason = _prove(project, pair, failed)
            if reason is not None:
                proven[number] = release.entry(project, pair, reason)
                failed.add(pair)
            _say(stream, f"cluster: {pair.name} {'proven on the real hypervisor' if reason is None else reason}")
    finally:
        stop_stage_vm(str(project.root))  # the VM the prove stage booted, as the one-machine nightly does
    return proven


def _prove(project: Project, pair: Pair, failed: set[Pair]) -> str | None:
    """Why the real hypervisor did not take the pair's signed payload, or None when it did."""
    try:
        below = [earlier for earlier in build_spec(project, pair.patch, pair.baseline).stack
                 if Pair(pair.baseline, earlier) in failed]
        if below:  # its proof applies those first: their payloads are not this run's
            return f"prove:{pair.name}: {', '.join(below)}, which it goes on top of, failed"
        stages.stage_prove(project, pair.baseline, pair.patch)
    except XspliceError as error:
        return f"prove:{pair.name}: {error.message}"
    return None


def _eligible_workers(client: Client, resource: str, scheduler: str) -> list[str]:
    deadline = time.monotonic() + _WAIT_FOR_WORKERS
    while True:
        info = client.scheduler_info()["workers"]
        eligible = sorted(address for address, worker in info.items()
                          if worker.get("resources", {}).get(resource, 0) >= 1)
        if eligible:
            return eligible
        if time.monotonic() > deadline:
            raise XspliceError(f"--scheduler {scheduler}: no worker with the locked toolchain joined within "
                               f"{_WAIT_FOR_WORKERS:.0f} s ({len(info)} worker(s) connected); start `dask worker` "
                               "on machines whose gcc, cc1, as and ld match toolchain.lock")
        time.sleep(0.5)


def _submit(client: Client, pairs: list[Pair], workers: list[str], archive: Any, digest: str, lock_sha256: str,
            store: str | None) -> dict[Any, Pair]:
    """One task per pair; the pairs of one baseline go to the same worker, baselines spread round robin."""
    baselines = sorted({pair.baseline for pair in pairs})
    home = {baseline: workers[number % len(workers)] for number, baseline in enumerate(baselines)}
    futures = {}
    for pair in pairs:
        future = client.submit(run_job, pair.baseline, pair.patch, archive, digest, lock_sha256, store,
                               key=f"xsplice-{pair.baseline}/{pair.patch}-{digest[:12]}", pure=False,
                               workers=[home[pair.baseline]], allow_other_workers=True,
                               resources={toolchain_resource(lock_sha256): 1}, retries=RETRIES)
        futures[future] = pair
    return futures


def _result(future: Any, pair: Pair) -> dict[str, Any]:
    try:
        return future.result()
    except Exception as error:  # the job's own exception, re-raised here by Dask after its retries
        message = " ".join(str(error).split()) or type(error).__name__
        return {"status": "failed", "reason": f"cluster:{pair.name}: {message}", "source": "none", "ran": [],
                "worker": None, "records": {}, "unsigned": b"", "toolchain_lock_sha256": None}


def _report_job(stream: TextIO, pair: Pair, result: dict[str, Any]) -> None:
    how = {"store": "from the payload store", "built": "built", "none": "not built"}[result["source"]]
    ran = f" (ran {' '.join(result['ran'])})" if result["ran"] else ""
    _say(stream, f"cluster: {pair.name} {result['status']} on {result['worker']}: {how}"
                 f" in {result.get('seconds', 0):.1f} s{ran}")


def _entry(project: Project, pair: Pair, result: dict[str, Any], lock_sha256: str) -> dict[str, Any]:
    reason = result["reason"]
    if result["status"] == "ok":
        reason = _refusal(pair, result, lock_sha256) or _sign(project, pair, result)
    item = release.entry(project, pair, reason)
    if item["status"] != "ok" and reason == result["reason"]:
        item["base_build_id"] = result.get("base_build_id")  # the worker's, not this machine's stale one
    return item


def _refusal(pair: Pair, result: dict[str, Any], lock_sha256: str) -> str | None:
    """Why a worker's result must not be signed: another toolchain lock, or a payload not its record's."""
    if result["toolchain_lock_sha256"] != lock_sha256:
        return (f"cluster:{pair.name}: refused the result of {result['worker']}: built against toolchain lock "
                f"{result['toolchain_lock_sha256']}, not this checkout's {lock_sha256}")
    if result.get("code_sha256") != payload_store.stages_code():
        return (f"cluster:{pair.name}: refused the result of {result['worker']}: built by other xsplice-build "
                "code than this one's; install the same version on every machine")
    try:
        name = next(name for name in record_names(pair.baseline, pair.patch) if name.endswith(PayloadRecord.FILE))
        recorded = PayloadRecord.from_json(json.loads(result["records"][name]), name).sha256
    except (KeyError, TypeError, ValueError, XspliceError):
        recorded = None
    if recorded != sha256_bytes(result["unsigned"]):
        return f"cluster:{pair.name}: refused the result of {result['worker']}: the payload is not its record's"
    return None


def _sign(project: Project, pair: Pair, result: dict[str, Any]) -> str | None:
    """Sign here, with the one-machine nightly's sign stage, over the worker's records; None when signed."""
    base = project.baseline_work(pair.baseline)
    if set(result["records"]) != set(record_names(pair.baseline, pair.patch)):
        return f"cluster:{pair.name}: the result of {result['worker']} lacks stage records"
    for name, text in result["records"].items():
        write_atomic(base / name, text.encode())
    records = Records(project, pair.baseline, pair.patch)
    write_atomic(records.unsigned, result["unsigned"])
    try:
        stages.stage_sign(project, pair.baseline, pair.patch)
    except XspliceError as error:
        return f"sign:{pair.name}: {error.message}"
    return None


def _say(stream: TextIO, line: str) -> None:
    print(f"xsplice: {line}", file=stream, flush=True)
