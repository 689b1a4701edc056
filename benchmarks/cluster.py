"""The distributed nightly against one machine, and what the compile cache and the payload store save.

    .venv/bin/python benchmarks/cluster.py [--repeat N] [--baseline NAME]...

Prints, for `doit nightly` over the pairs of the chosen baselines (default: minixen and
minixen-1.1), in fresh copies of this checkout, each the median of N runs (default 1):
  one process       the ordinary nightly, no cluster
  cluster cold      --scheduler on a two-worker LocalCluster, empty slots, compile cache and store
  cache warm        new workers (empty slots, as on new machines) with the compile cache warm,
                    store empty: every tree rebuilt from cache hits
  cache+store warm  new workers, cache and store warm: every job answered from the store
and the compile cache's hit rate in each cluster run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distributed import LocalCluster

from xsplice_build.project import copy_sources

REPO = Path(__file__).resolve().parents[1]
DOIT = Path(sys.executable).parent / "doit"


def fresh_checkout(parent: Path, name: str) -> Path:
    root = parent / name
    copy_sources(REPO, root)
    return root


def nightly(root: Path, baselines: list[str], extra: list[str]) -> tuple[float, str]:
    argv = [str(DOIT), "nightly", *(f"--baseline={name}" for name in baselines), *extra]
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=root, capture_output=True, text=True,
                            env={**os.environ, "XSPLICE_ROOT": str(root)}, check=False)
    seconds = time.perf_counter() - start
    if result.returncode not in (0, 1):  # 1: some pair failed, as xen-4.17's timer-slop-default does by design
        raise SystemExit(f"nightly failed in {root}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds, result.stdout


def ccache_stats(directory: Path) -> dict[str, int]:
    output = subprocess.run(["ccache", "--print-stats"], env={**os.environ, "CCACHE_DIR": str(directory)},
                            capture_output=True, text=True, check=True).stdout
    return {name: int(value) for name, value in (line.split("\t") for line in output.splitlines())}


def zero(directory: Path) -> None:
    subprocess.run(["ccache", "--zero-stats"], env={**os.environ, "CCACHE_DIR": str(directory)},
                   capture_output=True, check=True)


def hit_rate(directory: Path) -> str:
    stats = ccache_stats(directory)
    hits = stats.get("direct_cache_hit", 0) + stats.get("preprocessed_cache_hit", 0)
    total = hits + stats.get("cache_miss", 0)
    return f"compile cache {hits}/{total} hits ({100 * hits / total:.0f}%)" if total else "no compiles"


def on_cluster(parent: Path, name: str, baselines: list[str], cache: Path, store: Path) -> tuple[float, str, str]:
    """A nightly on a new two-worker cluster (new slots, as on machines that never built these trees)."""
    zero(cache)
    env = {"XSPLICE_WORKER_ROOT": str(parent / f"{name}-workers"), "XSPLICE_CCACHE_DIR": str(cache)}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", env=env) as local:
        seconds, output = nightly(fresh_checkout(parent, name), baselines,
                                  ["--scheduler", local.scheduler_address, "--store", str(store)])
    return seconds, output, hit_rate(cache)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--baseline", action="append", dest="baselines")
    arguments = parser.parse_args()
    baselines = arguments.baselines or ["minixen", "minixen-1.1"]
    rows: dict[str, list[tuple[float, str]]] = {}
    pairs = 0
    for number in range(arguments.repeat):
        parent = Path(tempfile.mkdtemp(prefix="xsplice-cluster-bench-"))
        cache, store = parent / "ccache", parent / "store"
        seconds, output = nightly(fresh_checkout(parent, "one"), baselines, [])
        pairs = len(re.findall(r"^xsplice: nightly (?:ok|FAILED) ", output, re.MULTILINE))
        rows.setdefault("one process", []).append((seconds, ""))
        cold = on_cluster(parent, "cold", baselines, cache, store)
        rows.setdefault("cluster cold", []).append(cold[::2])
        warm_cache = on_cluster(parent, "cache-warm", baselines, cache, parent / f"empty-store-{number}")
        rows.setdefault("cache warm", []).append(warm_cache[::2])
        warm = on_cluster(parent, "warm", baselines, cache, store)
        stored = len(re.findall(r"from the payload store", warm[1]))
        rows.setdefault("cache+store warm", []).append((warm[0], f"{warm[2]}; {stored}/{pairs} from the store"))
        shutil.rmtree(parent, ignore_errors=True)
    print(f"nightly over {pairs} (baseline, patch) pairs of {', '.join(baselines)}; two-worker LocalCluster on "
          f"{os.cpu_count()} cores; median of {arguments.repeat}")
    serial = statistics.median(s for s, _ in rows["one process"])
    for label, runs in rows.items():
        seconds = statistics.median(s for s, _ in runs)
        print(f"  {label:17} {seconds:7.2f} s  ({serial / seconds:.2f}x)  {runs[-1][1]}")


if __name__ == "__main__":
    main()
