"""What the struct-layout check costs, against the incremental build it follows.

    .venv/bin/python benchmarks/layout_check.py [--baseline xen-4.17] [--change inline|layout]

Applies a one-line fix to a widely included header (Xen's xen/include/xen/sched.h: about
220 units include it) to a copy of the baseline's original build tree: `inline` (default)
changes a static inline a few units use, the shape of a security fix; `layout` inserts a
member into struct vcpu, the worst case, where nearly every rebuilt unit changes (and the
check refuses). Then it measures, in one run:

- the incremental build (make recompiles every unit that includes the header);
- the debug compiles the layout check adds (each changed unit once more with -g: the
  patched one, and the original one, which later patches find cached);
- the diff of the changed objects without and with the layout check (reading the DWARF of
  both units and comparing every aggregate).

It prints each figure and the check's cost as a share of the incremental build (the goal:
under 20%). Needs the baseline built (`doit build-patch --baseline xen-4.17 regression-test`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xsplice_build.diff.engine import DebugPair, diff_pairs  # noqa: E402
from xsplice_build.diff.profile import profile_named  # noqa: E402
from xsplice_build.files import copy_tree, read_json, remove_tree  # noqa: E402
from xsplice_build.project import Project  # noqa: E402
from xsplice_build.stages.build import SPLIT_SECTIONS_FLAGS, run_build  # noqa: E402
from xsplice_build.stages.debuginfo import debug_objects  # noqa: E402
from xsplice_build.stages.steps import Records, _tools  # noqa: E402
from xsplice_build.target.baseline import load_baseline  # noqa: E402

HEADER = "xen/include/xen/sched.h"
CHANGES = {
    "inline": ("            cpumask_weight(v->sched_unit->cpu_hard_affinity) == 1);",
               "            cpumask_weight(v->sched_unit->cpu_hard_affinity) <= 1);"),
    "layout": ("    int              vcpu_id;\n", "    int              vcpu_id;\n    int              vcpu_spare;\n"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="xen-4.17")
    parser.add_argument("--change", default="inline", choices=sorted(CHANGES))
    arguments = parser.parse_args()
    project = Project(REPO)
    definition = load_baseline(project, arguments.baseline)
    records = Records(project, definition.name)
    orig = read_json(records.build_orig, "original build record")
    orig_tree = project.root / orig["tree"]
    with tempfile.TemporaryDirectory(prefix="layout-bench-", dir=records.base) as scratch_name:
        scratch = Path(scratch_name)
        tree = scratch / "tree"
        copy_tree(orig_tree, tree)
        header = tree / HEADER
        before, after = CHANGES[arguments.change]
        header.write_text(header.read_text().replace(before, after, 1))
        flags = SPLIT_SECTIONS_FLAGS if definition.build.split_sections == "wrapper" else ""
        start = time.perf_counter()
        output = run_build(definition, tree, _tools(project), flags, scratch / "build.log", prepare=False,
                           bin_dir=records.bin)
        build = time.perf_counter() - start
        changed = [{"object": name, "original": name, "original_sha256": orig["objects"][name]}
                   for name, digest in sorted(output.objects.items())
                   if name in orig["objects"] and orig["objects"][name] != digest]
        start = time.perf_counter()
        debug = debug_objects(definition, changed, orig_tree, tree, scratch / "debug-cache", scratch, project.root)
        compiles = time.perf_counter() - start
        start = time.perf_counter()
        debug_objects(definition, changed, orig_tree, tree, scratch / "debug-cache", scratch, project.root)
        compiles_cached = time.perf_counter() - start
        pairs = [(c["object"], orig_tree / c["object"], tree / c["object"]) for c in changed]
        profile = profile_named(definition.profile)
        start = time.perf_counter()
        diff_pairs(pairs, profile)
        plain = time.perf_counter() - start
        pair_debug = {name: DebugPair(project.root / str(entry["original"]), project.root / str(entry["patched"]))
                      for name, entry in debug.items()}
        start = time.perf_counter()
        checked = diff_pairs(pairs, profile, pair_debug)
        with_layouts = time.perf_counter() - start
        compared = sum(len(d.types or []) for d in checked)
        refused = sum(1 for d in checked for r in d.refusals if "[rule: struct-layout]" in r)
        remove_tree(tree)
    cost = compiles + with_layouts - plain
    cost_cached = compiles_cached + with_layouts - plain
    print(f"{HEADER} ({arguments.change}): {len(output.objects)} objects rebuilt, {len(changed)} changed; "
          f"{compared} aggregates compared, {refused} struct-layout refusals")
    print(f"incremental build        {build:8.2f} s")
    print(f"debug compiles           {compiles:8.2f} s  (originals cached: {compiles_cached:.2f} s)")
    print(f"diff without the check   {plain:8.2f} s")
    print(f"diff with the check      {with_layouts:8.2f} s")
    print(f"layout check cost        {cost:8.2f} s = {100 * cost / build:.1f}% of the incremental build "
          f"({100 * cost_cached / build:.1f}% with the originals cached; goal under 20%)")


if __name__ == "__main__":
    main()
