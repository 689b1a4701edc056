"""Advisory to release: `doit nightly` for one new advisory on every real-Xen baseline, from a warm cache.

    .venv/bin/python benchmarks/advisory.py [--work DIR] [--like domctl-iomem-empty-range]

Setup (not timed): a copy of this checkout's sources, keys and a warm work/ (default: this
checkout's), and a first nightly of those baselines so every existing pair is up to date. Then a
new advisory appears (patches/embargo-day/: the fix of advisory --like, under a new name) and
`doit nightly --baseline B...` is timed: the wall time, and each stage that ran with its time
(from the nightly's own lines), so a security team knows what an embargo-day build costs here.
The stages are whatever the nightly runs (a real-hypervisor proof stage too, once it exists).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xsplice_build.project import Project, copy_sources  # noqa: E402
from xsplice_build.target.baseline import load_all  # noqa: E402

DONE = re.compile(r"^xsplice: done (\S+) \(([\d.]+) s\)", re.MULTILINE)


def real_xen_baselines() -> list[str]:
    return [b.name for b in load_all(Project(REPO)) if b.source.debian or b.source.git]


def nightly(root: Path, baselines: list[str]) -> tuple[float, str]:
    argv = [str(REPO / ".venv" / "bin" / "doit"), "nightly"]
    for name in baselines:
        argv += ["--baseline", name]
    start = time.perf_counter()
    # A pair refused by design (a patch with nothing to patch) makes the nightly exit 1: still a release.
    result = subprocess.run(argv, cwd=root, capture_output=True, text=True, check=False)
    return time.perf_counter() - start, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=REPO / "work")
    parser.add_argument("--like", default="domctl-iomem-empty-range")
    arguments = parser.parse_args()
    baselines = real_xen_baselines()
    with tempfile.TemporaryDirectory(prefix="xsplice-advisory-") as temporary:
        root = Path(temporary) / "checkout"
        copy_sources(REPO, root, ("keys",))
        subprocess.run(["cp", "-a", str(arguments.work), str(root / "work")], check=True)
        settle, _ = nightly(root, baselines)
        for name in baselines:
            fix = REPO / "patches" / arguments.like / f"{name}.patch"
            (root / "patches" / "embargo-day").mkdir(exist_ok=True)
            shutil.copy(fix, root / "patches" / "embargo-day" / f"{name}.patch")
        wall, output = nightly(root, baselines)
    print(f"advisory to release on {', '.join(baselines)} (warm; settling nightly took {settle:.0f} s)")
    print(f"  doit nightly wall time: {wall:.1f} s")
    stages = DONE.findall(output)
    for task, seconds in stages:
        print(f"    {task:<48} {float(seconds):7.1f} s")
    accounted = sum(float(seconds) for _, seconds in stages)
    print(f"    {'(doit, release assembly, signing summary)':<48} {wall - accounted:7.1f} s")


if __name__ == "__main__":
    main()
