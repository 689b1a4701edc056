"""doit commands for releases: `doit nightly` (every pair, out/release/) and `doit audit` (rebuild, compare).

`nightly` runs the ordinary per-(baseline, patch) subtasks of dodo.py for every pair
that has a patch variant, with doit's --continue semantics (a failing pair does not
stop the others; a failing baseline stage fails only that baseline's pairs), and works
with `doit -n N nightly`: workers run the stages, the main process alone writes the
dependency database, and no two tasks write the same file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from doit.cmd_base import Command
from rich.console import Console
from rich.table import Table

from ..console import ProjectCommand, doit_command, opt_baseline, opt_processes
from ..errors import XspliceError
from ..lock import hold
from ..patches import release_pairs
from ..pipeline.runner import run_targets
from ..project import Project
from ..release import audit
from ..release import manifest as release
from ..target.baseline import DEFAULT_BASELINE, load_all, load_baseline
from ..vm.vm_runtime import has_runtime
from ..vm.xen_vm import stop_stage_vm

opt_scheduler = {
    "name": "scheduler",
    "long": "scheduler",
    "type": str,
    "default": "",
    "help": "run the jobs on a Dask distributed scheduler at URL (tcp://HOST:PORT; needs the cluster extra)",
}
opt_store = {
    "name": "store",
    "long": "store",
    "type": str,
    "default": "",
    "help": "with --scheduler: the payload store, a directory every worker sees at this path (shared filesystem)",
}
opt_baselines = {
    "name": "baselines",
    "long": "baseline",
    "type": list,
    "default": [],
    "help": "only pairs of this baseline (repeat for several) [default: every baseline in baseline/]",
}
opt_manifest = {
    "name": "manifest",
    "long": "manifest",
    "type": str,
    "default": "",
    "help": "audit every ok entry of this release manifest (out/release/manifest.json of any checkout)",
}
opt_keep = {
    "name": "keep",
    "long": "keep",
    "type": bool,
    "default": False,
    "help": "keep the fresh rebuild directory for inspection (its path is printed)",
}


class Nightly(ProjectCommand, Command):
    name = "nightly"
    doc_purpose = "build every (patch, baseline) pair that has a variant and write out/release/"
    doc_usage = "[-n N] [--baseline NAME]... [--scheduler tcp://HOST:PORT [--store DIR]]"
    doc_description = ("Runs every stage of every pair that is not up to date, continuing past failures, then "
                       "writes out/release/<baseline>/<patch>.livepatch and out/release/manifest.json (one entry "
                       "per pair, ok or failed with its reason). Exits 1 when any pair failed.")
    cmd_options = (opt_processes, opt_baselines, opt_scheduler, opt_store)
    own_options = cmd_options

    @doit_command
    def execute(self, params: Any, args: list[str]) -> int:
        pairs = self._selection(params, args)
        project = Project.find()
        hold(project)
        if params.get("scheduler"):
            return _distributed(pairs, params["scheduler"], params.get("store") or None)
        # A real-Xen pair ships only once the real hypervisor loaded, applied and reverted it.
        tasks = ["toolchain", *(f"{'prove' if has_runtime(project, pair.baseline) else 'sign'}:{pair.name}"
                                for pair in pairs)]
        try:
            result = run_targets(project, tasks, params["num_process"])
        finally:
            # With -n N, doit registers the prove tasks' teardown in its workers and never runs it: stop the VM here.
            stop_stage_vm(str(project.root))
        if not result.ran:
            return result.code
        entries = [release.entry(project, pair, release.failure_reason(pair, result.failed)) for pair in pairs]
        directory = release.write_release(project, entries)
        _print_summary(Console(file=sys.stdout, highlight=False, soft_wrap=True), entries,
                       directory.relative_to(project.root))
        return 0 if all(item["status"] == "ok" for item in entries) else 1

    @staticmethod
    def _selection(params: Any, args: list[str]) -> list[release.Pair]:
        if params.get("store") and not params.get("scheduler"):
            raise XspliceError("--store is for the distributed nightly: give --scheduler tcp://HOST:PORT too")
        if args:
            raise XspliceError(f"usage: doit nightly [-n N] [--baseline NAME]... (takes no arguments, got "
                               f"{' '.join(args)})")
        project = Project.find()
        chosen = [load_baseline(project, name).name for name in params.get("baselines") or []]
        baselines = chosen or [b.name for b in load_all(project)]
        selected = [release.Pair(b, p) for b, p in release_pairs(project, baselines)]
        if not selected:
            raise XspliceError(f"no (baseline, patch) pairs for {', '.join(baselines) or 'any baseline'}: add "
                               "patches/NAME/BASELINE.patch")
        return selected


def _distributed(pairs: list[release.Pair], scheduler: str, store: str | None) -> int:
    """The nightly on a Dask cluster: workers build up to the unsigned payloads, this process signs and releases."""
    try:
        from ..release import cluster
    except ImportError:
        raise XspliceError(f"--scheduler {scheduler}: the distributed nightly needs the cluster extra "
                           "(pip install -e '.[cluster]'), which this installation does not have; run "
                           "without --scheduler to build on this machine") from None
    project = Project.find()
    entries = cluster.run_nightly(project, pairs, scheduler, store, sys.stdout)
    directory = release.write_release(project, entries)
    _print_summary(Console(file=sys.stdout, highlight=False, soft_wrap=True), entries,
                   directory.relative_to(project.root))
    return 0 if all(item["status"] == "ok" for item in entries) else 1


def _print_summary(console: Console, entries: list[dict[str, Any]], directory: Path) -> None:
    failed = [item for item in entries if item["status"] != "ok"]
    if console.is_terminal:
        table = Table(title=f"nightly: {directory}/{release.MANIFEST}")
        for column in ("baseline", "patch", "status", "functions / reason", "payload sha256"):
            table.add_column(column)
        for item in sorted(entries, key=lambda e: (e["baseline"], e["patch"])):
            ok = item["status"] == "ok"
            table.add_row(item["baseline"], item["patch"], "[green]ok[/]" if ok else "[bold red]failed[/]",
                          _functions(item) if ok else item["reason"], (item["payload_sha256"] or "")[:16])
        console.print(table)
    else:
        for item in sorted(entries, key=lambda e: (e["baseline"], e["patch"])):
            name = f"{item['baseline']}/{item['patch']}"
            if item["status"] == "ok":
                console.print(f"xsplice: nightly ok {name}: {_functions(item)} (payload sha256 "
                              f"{item['payload_sha256']})", markup=False)
            else:
                console.print(f"xsplice: nightly FAILED {name}: {item['reason']}", markup=False)
    console.print(f"xsplice: nightly: {len(entries) - len(failed)} ok, {len(failed)} failed; "
                  f"{directory}/{release.MANIFEST}", markup=False)


def _functions(item: dict[str, Any]) -> str:
    return ", ".join(function["name"] for function in item["functions"])


class Audit(ProjectCommand, Command):
    name = "audit"
    doc_purpose = "rebuild released payloads from scratch in a fresh directory and compare them bit for bit"
    doc_usage = "[--baseline NAME] PATCH | --manifest PATH"
    doc_description = ("Copies this checkout's sources (dodo.py, pyproject.toml, toolchain.lock, baseline/, "
                       "patches/) to a new directory with empty work/ and out/, rebuilds the payloads there and "
                       "compares the unsigned bytes with the released ones; on a difference, names it section by "
                       "section and symbol by symbol. With a signing key here, also signs and compares the signed "
                       f"bytes. Default baseline: {DEFAULT_BASELINE}.")
    cmd_options = (opt_baseline, opt_manifest, opt_processes, opt_keep)
    own_options = cmd_options

    @doit_command
    def execute(self, params: Any, args: list[str]) -> int:
        project = Project.find()
        hold(project)  # it reads out/, which a build in this checkout rewrites
        if params["manifest"]:
            if args:
                raise XspliceError("usage: doit audit --manifest PATH (no PATCH with --manifest)")
            targets = audit.targets_from_manifest(Path(params["manifest"]))
        else:
            if len(args) != 1:
                raise XspliceError(f"usage: doit audit [--baseline NAME] PATCH | --manifest PATH "
                                   f"(got {len(args)} arguments)")
            targets = audit.targets_from_checkout(project, params["baseline"], args[0])
        return audit.run(project, targets, params["num_process"], params["keep"], sys.stdout)
