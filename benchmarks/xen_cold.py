"""Cold `doit build-patch` on real Xen next to a plain `make -C xen` of the same tree, in one run.

    .venv/bin/python benchmarks/xen_cold.py [--rounds 1] [--baseline xen-4.17] [--patch regression-test]
                                            [--keep DIR]

Setup (not timed): a copy of this checkout's sources with work/sources, the baseline's cached
source download (fetching and unpacking it is a network download, not building). Then each
round, in alternating order:
  build-patch   `doit build-patch --baseline B P` from an empty work/ (but sources): the checkout
                from the cached download, the toolchain probe, the base build, the patched build,
                diff, payload and sign; each stage's time is printed as doit reports it
  make          the reference: the baseline's own prepare and build commands (make olddefconfig,
                make -C xen) with the plain compiler, in a fresh copy of the same pristine tree
                with the same config (the copy is not timed: a user's tree is already there)
It prints both medians and the paired ratio build-patch / make, for wall time and for CPU time
(every process each half ran, read from a cgroup of its own): on a machine others share, the wall time of
each half depends on their load, while the CPU time is what the half itself costs.
--keep DIR keeps the last build-patch checkout (its work/ holds every stage's output and log).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xsplice_build.project import Project, copy_sources  # noqa: E402
from xsplice_build.target.baseline import load_baseline  # noqa: E402

DONE = re.compile(r"done (\S+) \(([\d.]+) s\)")


_CPUACCT = Path("/sys/fs/cgroup/cpuacct")


def timed(argv: list[str], **options: object) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Wall and CPU seconds of one command and everything it starts, the build sandbox's processes included.

    CPU is read from a cgroup of its own (cgroup v1 cpuacct, where this machine's root may make one):
    resource usage of waited-for children misses what runs in a PID namespace (bwrap's). Without
    that cgroup the CPU figure is NaN.
    """
    group = _CPUACCT / f"xsplice-cold-{os.getpid()}-{time.monotonic_ns()}"
    try:
        group.mkdir()
    except OSError:
        group = None
    if group is not None:
        argv = ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh", *argv]
    start = time.perf_counter()
    result = subprocess.run(argv, check=True, capture_output=True, text=True, **options)  # type: ignore[call-overload]
    wall = time.perf_counter() - start
    if group is None:
        return wall, math.nan, result
    cpu = int((group / "cpuacct.usage").read_text()) / 1e9
    with contextlib.suppress(OSError):  # a process it left behind still runs: the group goes with the machine
        group.rmdir()
    return wall, cpu, result


def cold_build_patch(scratch: Path, baseline: str, patch: str, number: int) -> tuple[float, float, Path]:
    root = scratch / f"ours-{number}"
    copy_sources(REPO, root, ("keys",))
    (root / "work").mkdir()
    subprocess.run(["cp", "-a", str(REPO / "work" / "sources"), str(root / "work" / "sources")], check=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith("XSPLICE_")}
    wall, cpu, result = timed([str(REPO / ".venv" / "bin" / "doit"), "build-patch", "--baseline", baseline, patch],
                              cwd=root, env=env)
    for task, seconds in DONE.findall(result.stdout):
        print(f"    round {number}: {task:<44} {float(seconds):7.1f} s", flush=True)
    print(f"    round {number}: build-patch {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    return wall, cpu, root


def plain_make(scratch: Path, pristine: Path, baseline: str, number: int) -> tuple[float, float]:
    definition = load_baseline(Project(REPO), baseline)
    tree = scratch / f"make-{number}"
    shutil.copytree(pristine, tree, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    if definition.build.config and definition.build.config_dest:
        shutil.copy(definition.build.config, tree / definition.build.config_dest)
    env = {**{k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "CFLAGS", "CC", "LD")},
           "LC_ALL": "C", "TZ": "UTC", **definition.build.env}
    compiler = shutil.which(definition.build.compiler) or definition.build.compiler
    linker = shutil.which("ld") or "ld"
    commands = [definition.build.prepare] if definition.build.prepare else []
    commands.append(definition.build.command)
    wall = cpu = 0.0
    for template in commands:
        argv = [word.format(jobs=os.cpu_count() or 1, cc=compiler, ld=linker) for word in template]
        seconds, used, _ = timed(argv, cwd=tree, env=env)
        wall, cpu = wall + seconds, cpu + used
    shutil.rmtree(tree)
    print(f"    round {number}: make {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    return wall, cpu


def keep_pristine(root: Path, baseline: str, pristine: Path) -> None:
    if not pristine.exists():
        shutil.copytree(root / "work" / baseline / "src", pristine, symlinks=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--baseline", default="xen-4.17")
    parser.add_argument("--patch", default="regression-test")
    parser.add_argument("--keep", type=Path, help="move the last build-patch checkout here (to inspect its work/)")
    arguments = parser.parse_args()
    walls: dict[str, list[float]] = {"build-patch": [], "make": []}
    cpus: dict[str, list[float]] = {"build-patch": [], "make": []}
    with tempfile.TemporaryDirectory(prefix="xsplice-cold-") as temporary:
        scratch = Path(temporary)
        pristine = scratch / "pristine"
        for number in range(arguments.rounds):
            order = ["make", "build-patch"] if number % 2 else ["build-patch", "make"]
            for name in order:
                if name == "build-patch":
                    wall, cpu, root = cold_build_patch(scratch, arguments.baseline, arguments.patch, number)
                    keep_pristine(root, arguments.baseline, pristine)
                    if arguments.keep:
                        shutil.rmtree(arguments.keep, ignore_errors=True)
                        shutil.move(root, arguments.keep)
                    else:
                        shutil.rmtree(root)
                else:
                    if not pristine.exists():  # the tree build-patch checks out, once, untimed
                        _, _, root = cold_build_patch(scratch, arguments.baseline, arguments.patch, -1)
                        keep_pristine(root, arguments.baseline, pristine)
                        shutil.rmtree(root)
                    wall, cpu = plain_make(scratch, pristine, arguments.baseline, number)
                walls[name].append(wall)
                cpus[name].append(cpu)
    print(f"cold {arguments.baseline}: build-patch {arguments.patch} against make of the same tree, "
          f"{arguments.rounds} round(s)")
    for name in walls:
        print(f"  {name:<12} {statistics.median(walls[name]):8.1f} s wall {statistics.median(cpus[name]):8.1f} s CPU")
    for what, figures in (("wall", walls), ("CPU", cpus)):
        ratios = [ours / make for ours, make in zip(figures["build-patch"], figures["make"], strict=True)]
        print(f"  paired build-patch / make, {what} time, median of rounds: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
