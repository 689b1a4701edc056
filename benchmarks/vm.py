"""Real Xen in a VM: how long a boot takes, and how long each xen-4.17 payload's proof takes.

    .venv/bin/python benchmarks/vm.py [--repeat N]

Needs the xen-4.17 payloads built in this checkout (`doit build-patch --baseline xen-4.17 PATCH`
for each patch with a xen-4.17.probe.toml) and QEMU (`./setup --xen`). Boots Debian's
hypervisor (baseline/runtime/xen-4.17.toml) in a copy of this checkout's sources, so the
checkout's own work/run/ is untouched, then prints:
  prepare     unpacking the fetched packages and building the initramfs (once per set of pins)
  boot        `XenVM.boot` until dom0 answers and the build-id is checked (accelerator named)
  prove P     probes before, upload, apply, probes, revert, probes, unload of each payload
  ratio       each proof against the boot: what one boot per nightly saves per pair
Each proof is the median of N runs (default 3) on the one VM.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from xsplice_build.project import Project, copy_sources
from xsplice_build.stages.sign import split
from xsplice_build.vm.probes import load_probes, probe_file
from xsplice_build.vm.vm_runtime import boot_files, load_runtime
from xsplice_build.vm.xen_vm import XenVM

REPO = Path(__file__).resolve().parents[1]
BASELINE = "xen-4.17"


def payloads(project: Project) -> dict[str, Path]:
    found = {}
    for directory in sorted(project.patches_dir.iterdir()):
        signed = project.patch_out(BASELINE, directory.name) / f"{directory.name}.livepatch"
        if probe_file(project, directory.name, BASELINE).is_file() and signed.is_file():
            found[directory.name] = signed
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    source = Project(REPO)
    signed = payloads(source)
    if not signed:
        print(f"benchmarks/vm.py: no {BASELINE} payloads in out/; build them first", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="xsplice-vm-bench-") as scratch:
        root = Path(scratch) / "c"
        copy_sources(REPO, root)
        if (REPO / "work" / "runtime" / "debs").is_dir():  # the fetched packages (checked by sha256 again)
            shutil.copytree(REPO / "work" / "runtime" / "debs", root / "work" / "runtime" / "debs")
        project = Project(root)
        start = time.perf_counter()
        boot_files(project, load_runtime(project, BASELINE))
        print(f"prepare     {time.perf_counter() - start:7.1f} s  (unpack the pinned packages, build the initramfs)")
        start = time.perf_counter()
        vm = XenVM.boot(project, BASELINE)
        boot = time.perf_counter() - start
        print(f"boot        {boot:7.1f} s  ({vm.record['accel']}, build-id {vm.build_id})")
        try:
            for patch, path in signed.items():
                payload = split(path.read_bytes(), str(path))[0]
                probes = load_probes(probe_file(source, patch, BASELINE))
                times = []
                for _ in range(arguments.repeat):
                    start = time.perf_counter()
                    verdict = vm.prove(patch, payload, probes)
                    times.append(time.perf_counter() - start)
                    if not verdict.ok:
                        print(f"prove {patch}: refused: {verdict.reason}")
                        break
                median = statistics.median(times)
                print(f"prove {patch:<36} {median:6.1f} s  (median of {len(times)}; boot/prove {boot / median:.1f}x)")
        finally:
            vm.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
