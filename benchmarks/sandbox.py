"""What the build sandbox costs on minixen: the same builds with and without it, in one run.

    .venv/bin/python benchmarks/sandbox.py [--repeat N] [--patch XSA-131]

Prints, for each mode (bubblewrap, and XSPLICE_UNSAFE_NO_SANDBOX=1), the median of N runs of:
  cold      `doit build-patch PATCH` in a fresh copy of this checkout (base, original and
            patched builds, diff, payload, sign)
  patched   the same after forgetting build-patched and diff (one patch rebuilt: where the
            sandbox's fixed cost per stage weighs most)
and the ratio sandboxed / unsandboxed of each, then the same per sandboxed stage of the cold runs
(the stage times doit's reporter prints). Runs alternate between the modes so that the load of a
shared machine falls on both alike.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xsplice_build.project import copy_sources  # noqa: E402
from xsplice_build.stages.sandbox import UNSANDBOXED_ENV  # noqa: E402

DOIT = Path(sys.executable).parent / "doit"
MODES = {"sandboxed": {}, "unsandboxed": {UNSANDBOXED_ENV: "1"}}
SANDBOXED_STAGES = ("build-base", "build-orig", "build-patched", "diff")
_DONE = re.compile(r"^xsplice: done ([a-z-]+):\S+ \(([0-9.]+) s\)$", re.MULTILINE)


def timed(argv: list[str], root: Path, extra: dict[str, str]) -> tuple[float, dict[str, float]]:
    """Wall time of the command, and the seconds of each stage it ran."""
    environment = {**os.environ, "XSPLICE_ROOT": str(root), **extra}
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=root, env=environment, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, {stage: float(seconds) for stage, seconds in _DONE.findall(result.stdout)}


def one_round(parent: Path, patch: str, extra: dict[str, str]) -> tuple[float, float, dict[str, float]]:
    root = parent / "checkout"
    copy_sources(REPO, root)
    cold, stages = timed([str(DOIT), "build-patch", patch], root, extra)
    timed([str(DOIT), "forget", f"build-patched:minixen/{patch}", f"diff:minixen/{patch}"], root, extra)
    patched, _ = timed([str(DOIT), "build-patch", patch], root, extra)
    return cold, patched, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--patch", default="XSA-131")
    options = parser.parse_args()
    names = ("cold", "patched", *SANDBOXED_STAGES)
    figures: dict[str, dict[str, list[float]]] = {mode: {name: [] for name in names} for mode in MODES}
    for number in range(options.repeat):
        for mode, extra in MODES.items():
            with tempfile.TemporaryDirectory(prefix=f"xsplice-bench-sandbox-{mode}-") as scratch:
                cold, patched, stages = one_round(Path(scratch), options.patch, extra)
            figures[mode]["cold"].append(cold)
            figures[mode]["patched"].append(patched)
            for stage in SANDBOXED_STAGES:
                figures[mode][stage].append(stages.get(stage, 0.0))
            print(f"run {number + 1} {mode:12} cold {cold:6.2f} s  patched {patched:6.2f} s", flush=True)
    print(f"\nminixen, {options.patch}, median of {options.repeat}:")
    print(f"{'':13} {'sandboxed':>10} {'unsandboxed':>12} {'ratio':>7}")
    for figure in names:
        inside = statistics.median(figures["sandboxed"][figure])
        outside = statistics.median(figures["unsandboxed"][figure])
        ratio = f"{inside / outside:7.2f}" if outside else "      -"
        print(f"{figure:13} {inside:9.2f}s {outside:11.2f}s {ratio}")


if __name__ == "__main__":
    main()
