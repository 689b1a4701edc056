"""doit commands of this project: `doit build-patch [--baseline NAME] PATCH`.

A command plugin maps the advisory name onto the ordinary per-(baseline, patch)
subtasks of dodo.py, so each keeps its own dependency state and `doit list`, `info`,
`forget` and `clean` keep working on them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from doit.cmd_run import Run

from .baseline import DEFAULT_BASELINE, load_baseline, supply_image
from .errors import XspliceError
from .lock import exclusive, lock_timeout
from .patches import patch_file
from .project import Project
from .sign import configured_keys, key_mode_warning

opt_baseline = {
    "name": "baseline",
    "long": "baseline",
    "type": str,
    "default": DEFAULT_BASELINE,
    "help": f"baseline to build against (a name from baseline/*.toml) [default: {DEFAULT_BASELINE}]",
}


opt_image = {
    "name": "image",
    "long": "image",
    "type": str,
    "default": "",
    "help": "the xen-syms of the hypervisor you run: the baseline must rebuild to its build-id, and the payload "
            "depends on it",
}


class BuildPatch(Run):
    name = "build-patch"
    doc_purpose = "build a signed live-patch payload for PATCH against a baseline"
    doc_usage = "[--baseline NAME] PATCH"
    doc_description = ("Runs every stage that is not up to date (checkout, toolchain, build-base, build-orig, "
                       "build-patched, diff, payload, sign) and writes out/<baseline>/<patch>/.")
    cmd_options = (*Run.cmd_options, opt_baseline, opt_image)

    def execute(self, params: Any, args: list[str]) -> int:
        try:
            project = Project.find()
            # doit opens its dependency database inside execute: one build at a time may hold it.
            with exclusive(project.work_dir / ".lock", lock_timeout(),
                           lambda text: print(f"xsplice: {text}", flush=True)):
                baseline, patch = self._selection(params, args)
                if params["image"]:
                    supply_image(baseline, Path(params["image"]))
                warning = key_mode_warning(configured_keys(project.root))
                if warning:
                    print(f"xsplice: warning: {warning}", flush=True)
                result = super().execute(params, ["toolchain", f"sign:{baseline}/{patch}"])
        except XspliceError as error:
            print(f"xsplice: error: {error.message}", file=sys.stderr)
            return 2
        if result == 0:
            self._summary(baseline, patch)
        return result

    @staticmethod
    def _selection(params: Any, args: list[str]) -> tuple[str, str]:
        if len(args) != 1:
            raise XspliceError(f"usage: doit build-patch [--baseline NAME] PATCH (got {len(args)} arguments)")
        project = Project.find()
        baseline = load_baseline(project, params["baseline"]).name
        patch_file(project, args[0], baseline)
        return baseline, args[0]

    @staticmethod
    def _summary(baseline: str, patch: str) -> None:
        project = Project.find()
        out = project.patch_out(baseline, patch)
        report = json.loads((out / "report.json").read_text())
        functions = ", ".join(f["name"] for f in report["functions"])
        for warning in report["warnings"]:
            if "[rule: bring-up-only]" in warning:
                print(f"xsplice: warning: {warning}", flush=True)
        print(f"xsplice: payload {out.relative_to(project.root) / report['payload']} "
              f"(signed; replaces {functions}; depends on build-id {report['base_build_id']})")
