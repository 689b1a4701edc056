"""Nightly timings on the bundled corpus: serial against two workers, and what a second nightly reuses.

    .venv/bin/python benchmarks/nightly.py [--repeat N]

Prints, for `doit nightly --baseline minixen --baseline minixen-1.1` in fresh copies of
this checkout (every pair of patches/ with a variant for those baselines):
  serial      a cold nightly with one process
  -n 2        a cold nightly with two worker processes
  second      the same nightly again, nothing changed: stage results reused vs rerun
  audit       `doit audit --manifest` of the release from another directory
Each time is the median of N runs (default 3).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from xsplice_build.project import copy_sources

REPO = Path(__file__).resolve().parents[1]
DOIT = Path(sys.executable).parent / "doit"
# The minixen tier; real Xen's pairs (xen-4.17) are a build of minutes each, outside this benchmark.
BASELINES = ("--baseline", "minixen", "--baseline", "minixen-1.1")


def fresh_checkout(parent: Path, name: str) -> Path:
    root = parent / name
    copy_sources(REPO, root)
    return root


def timed(argv: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True,
                            env={**os.environ, "XSPLICE_ROOT": str(cwd)})
    return time.perf_counter() - start, result.stdout


def cold(parallel: list[str], repeat: int) -> tuple[float, str, Path]:
    times, output, root = [], "", Path()
    for number in range(repeat):
        parent = Path(tempfile.mkdtemp(prefix="xsplice-nightly-bench-"))
        root = fresh_checkout(parent, f"run{number}")
        seconds, output = timed([str(DOIT), *parallel, "nightly", *BASELINES], root)
        times.append(seconds)
    return statistics.median(times), output, root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    serial, output, _ = cold([], arguments.repeat)
    stages = len(re.findall(r"^xsplice: start ", output, re.MULTILINE))
    two, _, warm = cold(["-n", "2"], arguments.repeat)
    manifest = json.loads((warm / "out" / "release" / "manifest.json").read_text())["payloads"]
    pairs = len(manifest)
    second, again = timed([str(DOIT), "-n", "2", "nightly", *BASELINES], warm)
    reran = len(re.findall(r"^xsplice: start ", again, re.MULTILINE))
    reused = len(re.findall(r"^xsplice: up-to-date ", again, re.MULTILINE))
    auditor = fresh_checkout(warm.parent, "auditor")
    audit, _ = timed([str(DOIT), "audit", "-n", "2", "--manifest", str(warm / "out" / "release")], auditor)
    print(f"nightly over {pairs} (baseline, patch) pairs, {stages} stage runs cold; median of {arguments.repeat}")
    print(f"  serial         {serial:6.2f} s")
    print(f"  -n 2           {two:6.2f} s   ({serial / two:.2f}x)")
    print(f"  second (-n 2)  {second:6.2f} s   {reused} stage results reused, {reran} rerun (toolchain is "
          "always checked)")
    print(f"  audit (-n 2)   {audit:6.2f} s   rebuild of every payload from scratch in another directory")


if __name__ == "__main__":
    main()
