"""A warm `doit build-patch` next to its physical limit (compile what really changed, then link), as ratios.

    .venv/bin/python benchmarks/patch_cost.py --patch inline-header --patch string-literal
    .venv/bin/python benchmarks/patch_cost.py --baseline xen-4.17 --patch iocap-deny-inverted-range \\
        --patch domctl-iomem-empty-range --rounds 2 --against /work/main

Setup (not timed): a copy of this checkout's sources and of a warm work/ (default: this
checkout's, where the baseline was built), and with --against a copy of another checkout
(e.g. main before this work) with its own warm work/. Then each round, interleaved, per patch:
  build-patch   `doit build-patch --baseline B P` with P's stage records removed (every stage of
                the pair runs: patched build, diff, payload, sign)
  no-reuse      the same with XSPLICE_NO_REUSE=1 (every translation unit make asks for is compiled)
  against       the same in the other checkout
  limit         the baseline's own make, in a copy of the original build tree with the patch applied
                where only the translation units whose object really changed (patched.json) are newer
                than their objects: their compiles and the link, nothing else
  no-op         the same `doit build-patch` again, everything up to date (doit's start, planning, checks)
  sandbox       one sandbox with a Python that does nothing (a sandboxed stage's start)
  floor         no-op + sandbox + limit: what a build through doit cannot go below
  interpreter   this virtualenv's Python doing nothing (the command's own start)
  bare sandbox  one sandbox running /bin/true (isolating the patch's build, nothing in it)
  bare floor    interpreter + bare sandbox + limit: what no sandboxed build started by a Python command
                goes below, before any diff, payload, signature or record
It prints each median and the paired ratios (median over rounds) to the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xsplice_build.files import read_json, sync_tree  # noqa: E402
from xsplice_build.project import Project, copy_sources  # noqa: E402
from xsplice_build.stages.build import apply_patch, run_build  # noqa: E402
from xsplice_build.stages.sandbox import bwrap_command, layout  # noqa: E402
from xsplice_build.stages.sandboxed_build import recorded_tools  # noqa: E402
from xsplice_build.target.baseline import load_baseline  # noqa: E402


def warm_copy(checkout: Path, work: Path, destination: Path) -> Path:
    copy_sources(checkout, destination, ("keys",))
    subprocess.run(["cp", "-a", str(work), str(destination / "work")], check=True)
    return destination


def timed(argv: list[str], **options: Any) -> float:
    """Seconds one run of argv takes (its output captured; a failure stops the benchmark)."""
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, **options)
    return time.perf_counter() - start


def build_patch(root: Path, doit: Path, baseline: str, patch: str, env: dict[str, str]) -> float:
    shutil.rmtree(root / "work" / baseline / "patches" / patch, ignore_errors=True)
    shutil.rmtree(root / "out" / baseline / patch, ignore_errors=True)
    return timed([str(doit), "build-patch", "--baseline", baseline, patch], cwd=root, env={**os.environ, **env})


def no_op(root: Path, doit: Path, baseline: str, patch: str) -> float:
    """The pair's `doit build-patch` with everything up to date: doit's start, planning and checks."""
    return timed([str(doit), "build-patch", "--baseline", baseline, patch], cwd=root)


def sandboxed(root: Path, scratch: Path, *program: str) -> list[str]:
    """argv running `program` in a sandbox as a stage's: the checkout read-only, `scratch` writable."""
    return [*bwrap_command(layout(Project(root), [scratch]), root), "--", *program]


def source_of(tree: Path, obj: str) -> Path:
    for suffix in (".c", ".S"):
        candidate = tree / (obj[:-2] + suffix)
        if candidate.is_file():
            return candidate
    raise SystemExit(f"{obj}: no source beside it in {tree}")


def limit(root: Path, scratch: Path, baseline: str, patch: str) -> float:
    """make in the original tree with the patch applied, only the really changed translation units stale."""
    project = Project(root)
    definition = load_baseline(project, baseline)
    original = root / read_json(root / "work" / baseline / "orig.json", "orig record")["tree"]
    changed = [c["object"] for c in read_json(root / "work" / baseline / "patches" / patch / "patched.json",
                                              "patched record")["changed"]]
    tree = scratch / "limit-tree"
    sync_tree(original, tree, lambda name: name == ".git" or name.endswith((".xsplice-orig", ".xsplice-argv")))
    touched = apply_patch(project.patches_dir / patch / f"{baseline}.patch", tree)
    for name in touched:  # back to the original times: only what really changed is stale
        if (original / name).exists():
            stat = (original / name).stat()
            os.utime(tree / name, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    now = time.time()
    for obj in changed:
        os.utime(source_of(tree, obj), (now, now))
    flags = "-ffunction-sections -fdata-sections" if definition.build.split_sections == "wrapper" else ""
    # The PATH a sandboxed build sees: only the system directories are there (Xen's build picks python3 from
    # PATH, and another one changes its recorded commands: everything would be rebuilt).
    path = os.environ["PATH"]
    os.environ["PATH"] = os.pathsep.join(entry for entry in path.split(os.pathsep)
                                         if entry.startswith(("/usr/", "/bin", "/sbin")))
    try:
        start = time.perf_counter()
        run_build(definition, tree, recorded_tools(project), flags, scratch / "limit.log", prepare=False,
                  bin_dir=root / "work" / baseline / "bin")
        return time.perf_counter() - start
    finally:
        os.environ["PATH"] = path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default="minixen")
    parser.add_argument("--patch", action="append", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=REPO / "work", help="a warm work/ for this checkout's code")
    parser.add_argument("--against", type=Path, help="another checkout (with .venv) to time the same way")
    parser.add_argument("--against-work", type=Path, help="its warm work/ (default: its own)")
    parser.add_argument("--in-place", action="store_true",
                        help="run in this checkout's own work/ (a copied Xen tree recompiles everything once)")
    arguments = parser.parse_args()
    doit = REPO / ".venv" / "bin" / "doit"
    with tempfile.TemporaryDirectory(prefix="xsplice-cost-") as temporary:
        scratch = Path(temporary)
        root = REPO if arguments.in_place else warm_copy(REPO, arguments.work, scratch / "ours")
        other = None
        if arguments.against:
            against = arguments.against.resolve()
            other = (warm_copy(against, arguments.against_work or against / "work", scratch / "against"),
                     against / ".venv" / "bin" / "doit")
        for patch in arguments.patch:  # settle: the baseline's stages, the pair's first run
            build_patch(root, doit, arguments.baseline, patch, {})
            if other:
                build_patch(other[0], other[1], arguments.baseline, patch, {})
        figures: dict[tuple[str, str], list[float]] = {}
        for _ in range(arguments.rounds):
            for patch in arguments.patch:
                runs = {"build-patch": lambda p=patch: build_patch(root, doit, arguments.baseline, p, {}),
                        "no-reuse": lambda p=patch: build_patch(root, doit, arguments.baseline, p,
                                                                {"XSPLICE_NO_REUSE": "1"}),
                        "limit": lambda p=patch: limit(root, scratch, arguments.baseline, p)}
                if other:
                    runs["against"] = lambda p=patch: build_patch(other[0], other[1], arguments.baseline, p, {})
                runs["no-op"] = lambda p=patch: no_op(root, doit, arguments.baseline, p)
                runs["sandbox"] = lambda: timed(sandboxed(root, scratch, sys.executable, "-c", "pass"))
                runs["interpreter"] = lambda: timed([sys.executable, "-c", "pass"])
                runs["bare sandbox"] = lambda: timed(sandboxed(root, scratch, "/bin/true"))
                for name, run in runs.items():
                    figures.setdefault((patch, name), []).append(run())
                # What no build through doit can go below: its no-op, one sandboxed start, the compile and link.
                figures.setdefault((patch, "floor"), []).append(
                    sum(figures[(patch, name)][-1] for name in ("no-op", "sandbox", "limit")))
                figures.setdefault((patch, "bare floor"), []).append(
                    sum(figures[(patch, name)][-1] for name in ("interpreter", "bare sandbox", "limit")))
        report(arguments, figures, root)


def report(arguments: argparse.Namespace, figures: dict[tuple[str, str], list[float]], root: Path) -> None:
    print(f"{arguments.baseline}: warm build-patch against compile-what-changed + link, "
          f"{arguments.rounds} interleaved round(s)")
    for patch in arguments.patch:
        record = json.loads((root / "work" / arguments.baseline / "patches" / patch / "patched.json").read_text())
        print(f"  {patch}: touches {', '.join(record['touched'])}; make recompiled {len(record['recompiled'])}, "
              f"{len(record['changed'])} changed")
        limits = figures[(patch, "limit")]
        for name in ("build-patch", "no-reuse", "against", "limit", "no-op", "sandbox", "floor", "interpreter",
                     "bare sandbox", "bare floor"):
            values = figures.get((patch, name))
            if not values:
                continue
            ratio = statistics.median(v / lim for v, lim in zip(values, limits, strict=True))
            print(f"    {name:<12} {statistics.median(values):8.2f} s   {ratio:5.2f}x limit")


if __name__ == "__main__":
    main()
