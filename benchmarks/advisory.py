"""Advisory to release: `doit nightly` for one new advisory on every real-Xen baseline, from a warm cache.

    .venv/bin/python benchmarks/advisory.py [--work DIR] [--like domctl-iomem-empty-range] [--log FILE]
                                            [--keep-settled DIR]

Setup (not timed): a copy of this checkout's sources, keys and a warm work/ (default: this
checkout's), and a first nightly of those baselines so every existing pair is up to date (it
builds what the copied work/ lacks, the VM's runtime included). Then a new advisory appears
(patches/embargo-day/: the fix of advisory --like, under a new name) and `doit nightly
--baseline B...` is timed: the wall time, and each stage that ran with its time (from the
nightly's own lines), summed per stage, so a security team knows what an embargo-day build
costs here. The stages are whatever the nightly runs: with a VM runtime for the baseline, the
proof on the real hypervisor too (one VM booted for the run). --log keeps both nightlies' output.
The settling nightly builds every pair the copied work/ lacks (on xen-4.17, 19 patches, each
proven in the VM: tens of minutes on a loaded machine); --keep-settled DIR keeps the settled
work/ (before the new advisory) for the next run's --work, which then settles in seconds.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xsplice_build.project import Project, copy_sources  # noqa: E402
from xsplice_build.target.baseline import load_all  # noqa: E402

DONE = re.compile(r"^xsplice: done (\S+) \(([\d.]+) s\)", re.MULTILINE)
FAILED = re.compile(r"^xsplice: FAILED (\S+): (.*)$", re.MULTILINE)
NEW = "embargo-day"


def real_xen_baselines() -> list[str]:
    return [b.name for b in load_all(Project(REPO)) if b.source.debian or b.source.git]


def nightly(root: Path, baselines: list[str], log: Path | None, title: str) -> tuple[float, str]:
    argv = [str(REPO / ".venv" / "bin" / "doit"), "nightly"]
    for name in baselines:
        argv += ["--baseline", name]
    start = time.perf_counter()
    # A pair refused by design (a patch with nothing to patch) makes the nightly exit 1: still a release.
    result = subprocess.run(argv, cwd=root, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if log is not None:
        with log.open("a") as stream:
            stream.write(f"== {title}: exit {result.returncode}, {elapsed:.1f} s\n{result.stdout}{result.stderr}\n")
    return elapsed, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=REPO / "work")
    parser.add_argument("--like", default="domctl-iomem-empty-range")
    parser.add_argument("--log", type=Path)
    parser.add_argument("--keep-settled", type=Path)
    arguments = parser.parse_args()
    baselines = real_xen_baselines()
    with tempfile.TemporaryDirectory(prefix="xsplice-advisory-") as temporary:
        root = Path(temporary) / "checkout"
        copy_sources(REPO, root, ("keys",))
        subprocess.run(["cp", "-a", str(arguments.work), str(root / "work")], check=True)
        settle, _ = nightly(root, baselines, arguments.log, "settling nightly")
        if arguments.keep_settled:
            shutil.rmtree(arguments.keep_settled, ignore_errors=True)
            subprocess.run(["cp", "-a", str(root / "work"), str(arguments.keep_settled)], check=True)
        for name in baselines:
            (root / "patches" / NEW).mkdir(exist_ok=True)
            shutil.copy(REPO / "patches" / arguments.like / f"{name}.patch", root / "patches" / NEW / f"{name}.patch")
        wall, output = nightly(root, baselines, arguments.log, f"nightly with {NEW}")
    print(f"advisory to release on {', '.join(baselines)} (warm; settling nightly took {settle:.0f} s)")
    print(f"  doit nightly wall time: {wall:.1f} s")
    stages = [(task, float(seconds)) for task, seconds in DONE.findall(output)]
    for task, seconds in stages:
        print(f"    {task:<48} {seconds:7.1f} s")
    refused = FAILED.findall(output)
    rest = "doit, up-to-date checks, release assembly" + (f", {len(refused)} refused stage(s)" if refused else "")
    print(f"    {f'({rest})':<48} {wall - sum(s for _, s in stages):7.1f} s")
    per_stage: dict[str, float] = defaultdict(float)
    for task, seconds in stages:
        per_stage[task.split(":")[0]] += seconds
    print("  per stage: " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in per_stage.items()))
    for task, reason in refused:  # a pair refused by design (a fix that changes data) runs again every night
        print(f"  failed: {task}: {reason[:160]}")
    if not any(task.endswith(f"/{NEW}") and task.startswith("sign:") for task, _ in stages):
        print(f"  the new advisory was not released (no sign:<baseline>/{NEW} ran): see --log")


if __name__ == "__main__":
    main()
