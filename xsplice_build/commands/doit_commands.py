"""doit commands of this project: `doit build-patch [--baseline NAME] PATCH`, and what all of them share.

A command plugin maps the advisory name onto the ordinary per-(baseline, patch)
subtasks of dodo.py, so each keeps its own dependency state and `doit list`, `info`,
`forget` and `clean` keep working on them.

Every project command (`ProjectCommand`) answers `--help`, `doit help CMD` and a misspelled
option with its own short usage (not doit's list of every run option), and takes options
after its arguments too (`doit build-patch XSA-131 --baseline minixen-1.1`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from doit.cmd_clean import Clean as DoitClean
from doit.cmd_run import Run

from ..console import ProjectCommand, doit_command, opt_baseline, opt_processes
from ..errors import XspliceError, printable
from ..keys import configured_keys, key_mode_warning
from ..lock import hold
from ..patches import CUMULATIVE_JOIN, build_spec
from ..pipeline.runner import doit_database
from ..pipeline.tasks import plan_only
from ..project import Project, check_name
from ..records import Records, Report
from ..target.baseline import DEFAULT_BASELINE, load_baseline, supplied_image

opt_image = {
    "name": "image",
    "long": "image",
    "type": str,
    "default": "",
    "help": "the xen-syms of the hypervisor you run: the baseline must rebuild to its build-id, and the payload "
            "depends on it",
}


class Clean(DoitClean):
    """doit's `clean` without the loader's `-n N` (the number of processes), so `doit clean -n` is its dry run."""

    def get_options(self) -> list[Any]:
        return [option for option in super().get_options() if option.name != "num_process"]


opt_replace = {
    "name": "replace",
    "long": "replace",
    "type": bool,
    "default": False,
    "help": "one cumulative payload with the fixes of every PATCH named, against the baseline, for Xen's "
            "REPLACE action (`xen-xsplice replace`): it swaps out whatever payloads are applied",
}


class BuildPatch(ProjectCommand, Run):
    name = "build-patch"
    doc_purpose = "build a signed live-patch payload for PATCH against a baseline"
    doc_usage = "[--baseline NAME] [--image XEN-SYMS] PATCH | --replace PATCH PATCH..."
    doc_description = ("Runs every stage that is not up to date (checkout, toolchain, build-base, build-orig, "
                       "build-patched, diff, payload, sign) and writes out/<baseline>/<patch>/.")
    own_options = (opt_baseline, opt_image, opt_processes, opt_replace)
    cmd_options = (*Run.cmd_options, opt_baseline, opt_image, opt_replace)

    def help(self) -> str:
        return (f"{super().help()}\nPATCH is an advisory under patches/ (patches/PATCH/BASELINE.patch), or the "
                "path of such a file. doit's run options (-a, -c, -v ...) apply too.")

    @doit_command
    def execute(self, params: Any, args: list[str]) -> int:
        project = Project.find()
        # doit opens its dependency database inside execute: one build at a time may hold it.
        hold(project)
        baseline, patch = self._selection(project, params, args)
        image = supplied_image(Path(params["image"])) if params["image"] else None
        os.chdir(project.root)  # run from any directory of the checkout: doit finds dodo.py here
        warning = key_mode_warning(configured_keys(project.root))
        if warning:
            print(f"xsplice: warning: {warning}", flush=True)
        # A stacked payload is applied on top of its stack's: the operator gets all of them.
        stack = build_spec(project, patch, baseline).stack
        plan_only(baseline, [*stack, patch], image)
        with doit_database(project):
            result = super().execute(params, ["toolchain", *(f"sign:{baseline}/{name}" for name in stack),
                                              f"sign:{baseline}/{patch}"])
        if result == 0:
            self._summary(baseline, patch)
        return result

    @staticmethod
    def _selection(project: Project, params: Any, args: list[str]) -> tuple[str, str]:
        if params["replace"] and len(args) < 2:
            raise XspliceError(f"usage: doit build-patch [--baseline NAME] --replace PATCH PATCH... (a cumulative "
                               f"payload carries two or more advisories; got {len(args)})")
        if not params["replace"] and len(args) != 1:
            raise XspliceError(f"usage: doit build-patch [--baseline NAME] PATCH (got {len(args)} arguments)")
        if params["replace"]:
            baseline = load_baseline(project, params["baseline"]).name
            name = CUMULATIVE_JOIN.join(args)
            build_spec(project, check_name("patch", name), baseline)
            return baseline, name
        patch, baseline = _patch_argument(project, args[0], params["baseline"])
        baseline = load_baseline(project, baseline).name
        build_spec(project, check_name("patch", patch), baseline)
        return baseline, patch

    @staticmethod
    def _summary(baseline: str, patch: str) -> None:
        project = Project.find()
        out = project.patch_out(baseline, patch)
        report = Report.read(Records(project, baseline, patch).report)
        functions = ", ".join(function.name for function in report.functions)
        action = "for Xen's REPLACE action; " if report.action == "replace" else ""
        for warning in report.warnings:
            if "[rule: bring-up-only]" in warning:
                print(printable(f"xsplice: warning: {warning}"), flush=True)  # names come from the objects
        print(f"xsplice: payload {out.relative_to(project.root) / report.payload} "
              f"(signed; {action}replaces {functions}; depends on build-id {report.depends_build_id})")


def _patch_argument(project: Project, argument: str, baseline: str) -> tuple[str, str]:
    """(patch, baseline) from an advisory name, or from the path of patches/NAME/BASELINE.patch."""
    if not argument.endswith(".patch"):
        return argument, baseline  # a name: patch_file checks it (no separators, nothing leading out)
    path = Path(argument).resolve()
    try:
        name, file = path.relative_to(project.patches_dir.resolve()).parts
    except ValueError:
        raise XspliceError(f"{argument}: not a patch of this checkout; patches live in "
                           f"{project.patches_dir}/NAME/BASELINE.patch: add it there and give NAME") from None
    if not file.endswith(".patch"):
        raise XspliceError(f"{argument}: a patch file is patches/NAME/BASELINE.patch")
    from_file = file.removesuffix(".patch")
    if baseline not in (DEFAULT_BASELINE, from_file):
        raise XspliceError(f"{argument} is the variant for baseline {from_file}, not --baseline {baseline}")
    return name, from_file
