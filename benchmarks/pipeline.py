"""Pipeline timings on the bundled baseline, next to the physical limit (gcc on the touched files).

    .venv/bin/python benchmarks/pipeline.py [--repeat N]

Prints, for `doit build-patch` in a fresh copy of this checkout:
  cold        every stage from nothing (checkout, both baseline builds, patch, sign)
  no-change   the same command again: every stage up to date
  second      another patch against the cached baseline
  gcc-only    compiling just the files the second patch touches, with the build's flags
Each figure is the median of N runs (default 3).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOIT = Path(sys.executable).parent / "doit"
COPIED = ("dodo.py", "pyproject.toml", "toolchain.lock", "baseline", "patches")


def fresh_checkout(parent: Path) -> Path:
    root = parent / "checkout"
    root.mkdir()
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name)
        else:
            shutil.copy2(source, root / name)
    return root


def timed(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def gcc_only(root: Path, source: str) -> float:
    """One compile of `source` with minixen's flags plus function sections: what any tool must spend."""
    tree = root / "work" / "minixen" / "orig" / "tree"
    flags = subprocess.run(["make", "-s", "-p", "-n", "-f", "Makefile", "xen-syms"], cwd=tree, capture_output=True,
                           text=True, check=False).stdout
    cflags = next(line.split("=", 1)[1] for line in flags.splitlines() if line.startswith("CFLAGS "))
    argv = ["gcc", *cflags.split(), "-ffunction-sections", "-fdata-sections", "-c", source, "-o", "/dev/null"]
    return timed(argv, tree)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    figures: dict[str, list[float]] = {"cold": [], "no-change": [], "second": [], "gcc-only": []}
    for _ in range(arguments.repeat):
        with tempfile.TemporaryDirectory(prefix="xsplice-bench-") as scratch:
            root = fresh_checkout(Path(scratch))
            figures["cold"].append(timed([str(DOIT), "build-patch", "XSA-131"], root))
            figures["no-change"].append(timed([str(DOIT), "build-patch", "XSA-131"], root))
            figures["second"].append(timed([str(DOIT), "build-patch", "regression-test"], root))
            figures["gcc-only"].append(gcc_only(root, "common/version.c"))
    print(f"minixen pipeline, median of {arguments.repeat} runs")
    for name, values in figures.items():
        print(f"  {name:<10} {statistics.median(values):7.3f} s   (min {min(values):.3f}, max {max(values):.3f})")


if __name__ == "__main__":
    main()
