"""Pipeline timings on a baseline, next to the physical limit (gcc on the touched file).

    .venv/bin/python benchmarks/pipeline.py [--repeat N]                     # minixen
    .venv/bin/python benchmarks/pipeline.py --baseline xen-4.17 --repeat 1 \\
        --first regression-test --second domctl-iomem-empty-range --touched xen/common/domctl.c

Prints, for `doit build-patch` in a fresh copy of this checkout:
  cold        every stage from nothing (checkout, base and original builds, patch, sign)
  no-change   the same command again: every stage up to date
  second      another patch against the cached baseline
  gcc-only    compiling just the file the second patch touches, with the build's flags
Each figure is the median of N runs.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xsplice_build.project import copy_sources  # noqa: E402
from xsplice_build.target.layout import compile_flags, kbuild_command  # noqa: E402

DOIT = Path(sys.executable).parent / "doit"


def fresh_checkout(parent: Path) -> Path:
    root = parent / "checkout"
    copy_sources(REPO, root)
    return root


def timed(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def gcc_only(root: Path, baseline: str, touched: str) -> float:
    """One compile of the touched file with the flags its build used: what any tool must spend."""
    for tree in ("orig", "base"):
        build = root / "work" / baseline / tree / "tree"
        if build.is_dir():
            break
    source = Path(touched)
    command_file = build / source.parent / f".{source.stem}.o.cmd"
    if command_file.is_file():  # kbuild (Xen): the command is recorded beside the object
        argv = shlex.split(kbuild_command(command_file))
        directory = build / source.parts[0]
        flags, relative = compile_flags(argv[1:]), str(source.relative_to(source.parts[0]))
    else:  # plain make (minixen): ask make for CFLAGS
        listing = subprocess.run(["make", "-s", "-p", "-n", "xen-syms"], cwd=build, capture_output=True, text=True,
                                 check=False).stdout
        cflags = next(line.split("=", 1)[1] for line in listing.splitlines() if line.startswith("CFLAGS "))
        directory, flags, relative = build, [*cflags.split(), "-ffunction-sections", "-fdata-sections"], touched
    return timed(["gcc", *flags, "-c", relative, "-o", "/dev/null"], directory)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", default="minixen")
    parser.add_argument("--first", default="XSA-131")
    parser.add_argument("--second", default="regression-test")
    parser.add_argument("--touched", default="common/version.c", help="the file the second patch touches")
    arguments = parser.parse_args()
    figures: dict[str, list[float]] = {"cold": [], "no-change": [], "second": [], "gcc-only": []}
    build = [str(DOIT), "build-patch", "--baseline", arguments.baseline]
    for _ in range(arguments.repeat):
        with tempfile.TemporaryDirectory(prefix="xsplice-bench-") as scratch:
            root = fresh_checkout(Path(scratch))
            figures["cold"].append(timed([*build, arguments.first], root))
            figures["no-change"].append(timed([*build, arguments.first], root))
            figures["second"].append(timed([*build, arguments.second], root))
            figures["gcc-only"].append(gcc_only(root, arguments.baseline, arguments.touched))
    print(f"{arguments.baseline} pipeline ({arguments.first}, then {arguments.second}), "
          f"median of {arguments.repeat} run(s)")
    for name, values in figures.items():
        print(f"  {name:<10} {statistics.median(values):8.3f} s   (min {min(values):.3f}, max {max(values):.3f})")


if __name__ == "__main__":
    main()
