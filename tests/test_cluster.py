"""`doit nightly --scheduler` on a real two-worker dask.distributed.LocalCluster: the same release, byte for byte."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import BIN, MINIXEN_TIER, REPO, Checkout, copy_checkout
from distributed import Client, LocalCluster

from xsplice_build.project import Project
from xsplice_build.release.cluster import _refusal
from xsplice_build.vm.channel import RunDir

PAIRS = 10  # 5 advisory variants, the stacked chain's 3 and its 2 cumulative payloads
_JOB_RE = re.compile(r"^xsplice: cluster: (\S+) (ok|failed) on (\S+): (built|from the payload store)[^\n]*?"
                     r"(?: \(ran ([^)]*)\))?$", re.MULTILINE)


def start_cluster(workers: Path, n_workers: int = 2) -> LocalCluster:
    """A real local cluster of worker processes (restarted ones too) claiming their slots under `workers`."""
    return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                        env={"XSPLICE_WORKER_ROOT": str(workers)})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with start_cluster(tmp_path_factory.mktemp("workers")) as local:
        yield local


def coordinator(path: Path, reference: Checkout) -> Checkout:
    """A fresh checkout with the reference's signing key: signatures are deterministic per key."""
    checkout = copy_checkout(path)
    shutil.copytree(reference.root / "keys", checkout.root / "keys")
    return checkout


def release_files(checkout: Checkout) -> dict[str, bytes]:
    root = checkout.root / "out"
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*"))
            if path.is_file()}


def jobs(output: str) -> list[tuple[str, str, str, str, list[str]]]:
    return [(pair, status, worker, how, ran.split()) for pair, status, worker, how, ran in _JOB_RE.findall(output)]


def test_the_distributed_nightly_releases_the_same_bytes_and_builds_each_tree_once_per_worker(
        nightly_once: Checkout, cluster: LocalCluster, tmp_path: Path) -> None:
    checkout = coordinator(tmp_path / "coordinator", nightly_once)
    store = tmp_path / "store"
    result = checkout.doit("nightly", *MINIXEN_TIER, "--scheduler", cluster.scheduler_address, "--store", str(store))
    assert f"xsplice: nightly: {PAIRS} ok, 0 failed" in result.stdout
    # Every file of out/ (release, manifest, signer, each report.json) is the one-machine nightly's.
    assert release_files(checkout) == release_files(nightly_once)
    done = jobs(result.stdout)
    assert sorted(pair for pair, *_ in done) == sorted(f"{b}/{p}" for b, p in _pairs(nightly_once))
    assert all(status == "ok" and how == "built" for _, status, _, how, _ in done)
    # Affinity: a baseline's trees are built at most once per worker that ran its jobs, never per job
    # (minixen-1.1 has three pairs, and there are two workers).
    for baseline in ("minixen", "minixen-1.1"):
        ran_on = {worker for pair, _, worker, _, _ in done if pair.split("/")[0] == baseline}
        builds = [worker for _, _, worker, _, ran in done if f"build-base:{baseline}" in ran]
        assert sorted(set(builds)) == sorted(builds) and 1 <= len(builds) <= len(ran_on) <= 2
    # A second coordinator (another directory) with the store warm: every job returns at once, same bytes.
    again = coordinator(tmp_path / "again", nightly_once)
    warm = again.doit("nightly", *MINIXEN_TIER, "--scheduler", cluster.scheduler_address, "--store", str(store))
    assert {how for *_, how, _ in jobs(warm.stdout)} == {"from the payload store"} and len(jobs(warm.stdout)) == PAIRS
    assert release_files(again) == release_files(nightly_once)
    assert not (again.root / "work" / "minixen" / "base").exists()  # the coordinator built nothing


def _pairs(checkout: Checkout) -> list[tuple[str, str]]:
    manifest = json.loads((checkout.root / "out" / "release" / "manifest.json").read_text())
    return [(entry["baseline"], entry["patch"]) for entry in manifest["payloads"]]


def test_a_worker_with_another_assembler_never_contributes(nightly_once: Checkout, tmp_path: Path) -> None:
    # A real difference: gcc finds `as` through PATH, so this worker's builds would use another assembler.
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "as").write_text("#!/bin/sh\nexec /usr/bin/as \"$@\"\n")
    (fake / "as").chmod(0o755)
    workers = tmp_path / "workers"
    with start_cluster(workers, n_workers=1) as local, Client(local) as client:
        good = set(client.scheduler_info()["workers"])
        bad_env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "XSPLICE_WORKER_ROOT": str(workers)}
        bad = subprocess.Popen([str(BIN / "dask"), "worker", local.scheduler_address, "--nthreads", "1",
                                "--no-dashboard", "--name", "wrong-assembler"], env=bad_env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client.wait_for_workers(2, timeout=60)
            checkout = coordinator(tmp_path / "coordinator", nightly_once)
            result = checkout.doit("nightly", *MINIXEN_TIER, "--scheduler", local.scheduler_address)
            # The gate closed it (worker and nanny): it is gone, and every job ran on the good worker.
            assert bad.wait(timeout=60) == 0 and set(client.scheduler_info()["workers"]) == good
            assert {worker for _, _, worker, _, _ in jobs(result.stdout)} == good
            assert release_files(checkout) == release_files(nightly_once)
            # The check inside every job: sources whose toolchain.lock is not the coordinator's are refused.
            from xsplice_build.release.cluster_worker import WrongToolchain, pack_sources, run_job

            archive, digest = pack_sources(checkout.root)
            future = client.submit(run_job, "minixen", "XSA-131", archive, digest, "0" * 64, None, pure=False)
            with pytest.raises(WrongToolchain, match="is not the one the coordinator checks"):
                future.result(timeout=60)
        finally:
            if bad.poll() is None:
                bad.terminate()
                bad.wait(timeout=30)


def test_an_unreachable_scheduler_and_a_store_without_one_are_refused_in_one_line(checkout: Checkout) -> None:
    quick = {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}  # Dask's own setting, to fail fast here
    result = checkout.doit("nightly", *MINIXEN_TIER, "--scheduler", "tcp://127.0.0.1:9", check=False, env=quick)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().count("\n") == 0 and "cannot reach the Dask scheduler" in result.stderr
    result = checkout.doit("nightly", *MINIXEN_TIER, "--store", str(checkout.root / "store"), check=False)
    assert result.returncode == 2 and "give --scheduler" in result.stderr
    assert not (checkout.root / "out").exists()


def test_the_coordinator_refuses_a_result_built_against_another_lock_or_code() -> None:
    from xsplice_build.release.manifest import Pair
    from xsplice_build.release.payload_store import stages_code

    pair, lock = Pair("minixen", "XSA-131"), "1" * 64
    result = {"toolchain_lock_sha256": "0" * 64, "code_sha256": stages_code(), "worker": "tcp://10.0.0.9:4000",
              "records": {}, "unsigned": b""}
    reason = _refusal(pair, result, lock)
    assert reason is not None and "refused the result of tcp://10.0.0.9:4000: built against toolchain lock" in reason
    reason = _refusal(pair, {**result, "toolchain_lock_sha256": lock, "code_sha256": "2" * 64}, lock)
    assert reason is not None and "other xsplice-build code" in reason


def test_a_worker_killed_mid_build_costs_nothing_but_time(nightly_once: Checkout, tmp_path: Path) -> None:
    workers, store = tmp_path / "workers", tmp_path / "store"
    with start_cluster(workers) as local, Client(local) as client:
        pids = client.run(os.getpid)
        checkout = coordinator(tmp_path / "coordinator", nightly_once)
        nightly = subprocess.Popen([str(BIN / "doit"), "nightly", *MINIXEN_TIER, "--scheduler", local.scheduler_address,
                                    "--store", str(store)], cwd=checkout.root, text=True,
                                   env={**os.environ, "XSPLICE_ROOT": str(checkout.root)},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        victim = _worker_compiling(pids.values(), deadline=time.monotonic() + 120)
        os.kill(victim, signal.SIGKILL)
        output, _ = nightly.communicate(timeout=300)
    assert nightly.returncode == 0, output
    assert release_files(checkout) == release_files(nightly_once)
    # A job that finished was not built again: one "ok" per pair over every slot's journal.
    journal = "".join(path.read_text() for path in workers.glob("slot*/jobs.log"))
    built = re.findall(r"^\d+ ok (\S+) ", journal, re.MULTILINE)
    assert sorted(built) == sorted(f"{b}/{p}" for b, p in _pairs(nightly_once)), journal + output
    assert any(line.startswith(f"{victim} start ") for line in journal.splitlines())


def _worker_compiling(pids: object, deadline: float) -> int:
    """The worker process that has a build (make and its compilers) running under it right now."""
    while time.monotonic() < deadline:
        for pid in pids:  # type: ignore[attr-defined]
            try:
                names = {child.name() for child in psutil.Process(pid).children(recursive=True)}
            except psutil.NoSuchProcess:
                continue
            if "make" in names:  # a build, not the toolchain check (which runs gcc, cc1 and as too)
                return pid
        time.sleep(0.02)
    raise AssertionError("no worker started a build")


@pytest.mark.xen
def test_a_distributed_real_xen_nightly_ships_only_what_the_real_hypervisor_took(tmp_path: Path) -> None:
    # The real-Xen tier: a worker builds xen-4.17's pairs, the coordinator signs and proves each on Debian's
    # hypervisor in a VM, as the one-machine nightly does. regression-test's probe is edited here to expect
    # what the fix does not print: the hypervisor applies it, the probe refuses it, and it must not ship.
    workers = tmp_path / "workers"
    checkout = copy_checkout(tmp_path / "coordinator")
    if (REPO / "work" / "xen-4.17" / "base.json").is_file():  # a warm worker: this checkout's build
        shutil.copytree(REPO / "work", workers / "slot0" / "checkout" / "work", symlinks=True,
                        ignore=lambda directory, names: {"run", "runtime", ".lock", ".noop"} & set(names))
    probe = checkout.root / "patches" / "regression-test" / "xen-4.17.probe.toml"
    probe.write_text(probe.read_text().replace('applied = ["-Hello_World"', 'applied = ["-Not_This_Fix"'))
    with start_cluster(workers, n_workers=1) as local:
        result = checkout.doit("nightly", "--baseline", "xen-4.17", "--scheduler", local.scheduler_address,
                               check=False, timeout=3600)
    entries = {entry["patch"]: entry for entry in json.loads(
        (checkout.root / "out" / "release" / "manifest.json").read_text())["payloads"]}
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[rule: changed-data]" in entries["timer-slop-default"]["reason"]  # refused at build, never proven
    refused = entries["regression-test"]
    assert refused["status"] == "failed" and refused["reason"].startswith("prove:xen-4.17/regression-test: ")
    assert "'-Not_This_Fix'" in refused["reason"] and not (checkout.root / "out" / "release" / "xen-4.17" /
                                                           "regression-test.livepatch").exists()
    proven = sorted(patch for patch, entry in entries.items() if entry["status"] == "ok")
    assert proven == ["domctl-iomem-empty-range", "iocap-deny-inverted-range", "stack-1", "stack-1+stack-2",
                      "stack-1+stack-2+stack-3", "stack-2", "stack-3"]
    for patch in proven:
        assert f"xsplice: cluster: xen-4.17/{patch} proven on the real hypervisor" in result.stdout
        proof = json.loads(checkout.work("xen-4.17", "patches", patch, "proof.json").read_text())
        assert proof["payload_sha256"] == entries[patch]["payload_sha256"]
        assert proof["hypervisor_build_id"] == "39a640e6f1412319235087391df9f1c5e13ae920"
    assert RunDir.of(Project(checkout.root)).pid() is None  # the VM the proofs booted is stopped
