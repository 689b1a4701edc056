"""Cold `doit build-patch` on real Xen next to a plain `make -C xen` of the same tree, in one run.

    .venv/bin/python benchmarks/xen_cold.py [--rounds 1] [--baseline xen-4.17] [--patch regression-test]

Setup (not timed): a copy of this checkout's sources with work/sources (the baseline's source
repository: fetching and unpacking it is not building). Then each round, in alternating order:
  build-patch   `doit build-patch --baseline B P` from an empty work/ (but sources): checkout, the
                base build, the patched build, diff, payload and sign
  make          the baseline's own prepare and build commands (make olddefconfig, make -C xen) with
                the plain compiler, in a fresh copy of the same pristine tree with the same config
It prints both medians and the paired ratio build-patch / make.
"""

from __future__ import annotations

import argparse
import os
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


def cold_build_patch(scratch: Path, baseline: str, patch: str, number: int) -> tuple[float, Path]:
    root = scratch / f"ours-{number}"
    copy_sources(REPO, root, ("keys",))
    (root / "work").mkdir()
    subprocess.run(["cp", "-a", str(REPO / "work" / "sources"), str(root / "work" / "sources")], check=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith("XSPLICE_")}
    start = time.perf_counter()
    subprocess.run([str(REPO / ".venv" / "bin" / "doit"), "build-patch", "--baseline", baseline, patch], cwd=root,
                   check=True, capture_output=True, env=env)
    return time.perf_counter() - start, root


def plain_make(scratch: Path, pristine: Path, baseline: str, number: int) -> float:
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
    start = time.perf_counter()
    for template in commands:
        argv = [word.format(jobs=os.cpu_count() or 1, cc=compiler, ld=linker) for word in template]
        subprocess.run(argv, cwd=tree, env=env, check=True, capture_output=True)
    elapsed = time.perf_counter() - start
    shutil.rmtree(tree)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--baseline", default="xen-4.17")
    parser.add_argument("--patch", default="regression-test")
    arguments = parser.parse_args()
    figures: dict[str, list[float]] = {"build-patch": [], "make": []}
    with tempfile.TemporaryDirectory(prefix="xsplice-cold-") as temporary:
        scratch = Path(temporary)
        pristine = None
        for number in range(arguments.rounds):
            order = ["make", "build-patch"] if number % 2 else ["build-patch", "make"]
            for name in order:
                if name == "build-patch":
                    elapsed, root = cold_build_patch(scratch, arguments.baseline, arguments.patch, number)
                    pristine = pristine or scratch / "pristine"
                    if not pristine.exists():
                        shutil.copytree(root / "work" / arguments.baseline / "src", pristine, symlinks=True)
                    shutil.rmtree(root)
                else:
                    if pristine is None:  # the tree build-patch checks out, once, untimed
                        _, root = cold_build_patch(scratch, arguments.baseline, arguments.patch, -1)
                        pristine = scratch / "pristine"
                        shutil.copytree(root / "work" / arguments.baseline / "src", pristine, symlinks=True)
                        shutil.rmtree(root)
                    elapsed = plain_make(scratch, pristine, arguments.baseline, number)
                figures[name].append(elapsed)
    print(f"cold {arguments.baseline}: build-patch {arguments.patch} against make of the same tree, "
          f"{arguments.rounds} round(s)")
    for name, values in figures.items():
        print(f"  {name:<12} {statistics.median(values):8.1f} s")
    ratios = [ours / make for ours, make in zip(figures["build-patch"], figures["make"], strict=True)]
    print(f"  paired build-patch / make, median of rounds: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
