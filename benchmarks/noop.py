"""A no-op `doit build-patch` next to a bare interpreter start, as ratios measured in one run.

    .venv/bin/python benchmarks/noop.py [--rounds N] [--patch XSA-131] [--against /path/to/other/checkout]

In a fresh copy of this checkout's sources the patch is built once, then each round runs,
interleaved (so a loaded machine slows all alike):
  interpreter   `python -c pass` with this virtualenv (site and the editable install's finder)
  import-doit   `python -c "import doit.doit_cmd"`: what any doit command pays before it reads dodo.py
  no-op         `doit build-patch PATCH` again, every stage up to date: the virtualenv's `doit` script,
                which answers it from the stamp the previous no-op left (xsplice_build/noop.py)
  doit-no-op    the same no-op through doit's own entry point (`python -m doit`): doit checks every stage
  against       (with --against) the same no-op with another checkout's code and virtualenv, e.g. main
It prints each median and its ratio to the interpreter's median, and the median of the per-round
ratios no-op / interpreter (the paired figure).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xsplice_build.project import copy_sources  # noqa: E402


def timed(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def warm_copy(checkout: Path, scratch: Path, patch: str) -> tuple[Path, list[str]]:
    """A copy of `checkout`'s sources with `patch` built, and the no-op command for it."""
    root = scratch / checkout.name
    copy_sources(checkout, root)
    doit = [str(checkout / ".venv" / "bin" / "doit"), "build-patch", patch]
    subprocess.run(doit, cwd=root, check=True, capture_output=True)
    # Settles what the first run left; the first no-op leaves the stamp the next ones are answered from.
    for _ in range(2):
        subprocess.run(doit, cwd=root, check=True, capture_output=True)
    return root, doit


def without_doit(argv: list[str], cwd: Path) -> bool:
    """Whether `argv` (run with `python -X importtime`) imported no doit module."""
    imports = subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True).stderr
    modules = {line.rsplit("|", 1)[1].strip() for line in imports.splitlines() if line.startswith("import time:")}
    return not any(name == "doit" or name.startswith("doit.") for name in modules)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--patch", default="XSA-131")
    parser.add_argument("--against", type=Path, help="another checkout (with its .venv) to measure the same way")
    arguments = parser.parse_args()
    python = str(REPO / ".venv" / "bin" / "python")
    with tempfile.TemporaryDirectory(prefix="xsplice-noop-") as scratch:
        root, noop = warm_copy(REPO, Path(scratch), arguments.patch)
        commands = {"interpreter": ([python, "-c", "pass"], root),
                    "import-doit": ([python, "-c", "import doit.doit_cmd"], root),
                    "no-op": (noop, root),
                    "doit-no-op": ([python, "-m", "doit", *noop[1:]], root)}
        if arguments.against:
            commands["against"] = warm_copy(arguments.against.resolve(), Path(scratch) / "against",
                                            arguments.patch)[::-1]
        figures: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(arguments.rounds):
            for name, (argv, cwd) in commands.items():
                figures[name].append(timed(argv, cwd))
        stamped_answer = without_doit([python, "-X", "importtime", *noop], root)
    base = statistics.median(figures["interpreter"])
    print(f"no-op `doit build-patch {arguments.patch}` (minixen), {arguments.rounds} interleaved rounds")
    for name, values in figures.items():
        median = statistics.median(values)
        print(f"  {name:<12} {median:7.3f} s   {median / base:5.1f}x interpreter   (min {min(values):.3f})")
    paired = [noop / bare for noop, bare in zip(figures["no-op"], figures["interpreter"], strict=True)]
    print(f"  paired no-op / interpreter, median of rounds: {statistics.median(paired):.1f}x")
    stamped = [noop / doit for noop, doit in zip(figures["no-op"], figures["doit-no-op"], strict=True)]
    print(f"  paired no-op / doit-no-op, median of rounds: {statistics.median(stamped):.2f}x")
    print(f"  no-op answered from the stamp, without importing doit: {'yes' if stamped_answer else 'NO'}")
    if arguments.against:
        against = [other / noop for other, noop in zip(figures["against"], figures["no-op"], strict=True)]
        print(f"  paired against / no-op, median of rounds: {statistics.median(against):.1f}x")


if __name__ == "__main__":
    main()
