"""Running the pipeline: one function runs doit for a set of targets and returns what happened, as data.

`run_targets` is what every face uses (build-patch, the nightly, the audit's rebuild, the
cluster worker, `xen-xsplice boot`): it takes the checkout's lock, runs doit's `run`
command in this process through its public entry point (`DoitMain`) with doit's own
`--continue`/`-n`, and a reporter plugin (registered by name, doit's REPORTER plugin
section) that prints as the project's reporter does and records each task's outcome.
Callers read a `RunResult`, never console lines.

`python -m xsplice_build.pipeline.runner --result FILE [-n N] TARGET...` runs it in a child
process (the cluster worker's process group; the audit's fresh directory) and writes the
result as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..errors import XspliceError
from ..lock import holding
from ..project import Project

REPORTER_NAME = "xsplice-recording"


@dataclass
class RunResult:
    """What one doit run did: its exit code, the tasks it started, failed (with their one line) and skipped."""

    code: int = 0
    started: list[str] = field(default_factory=list)
    uptodate: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_run: list[str] = field(default_factory=list)  # a stage they need failed
    warnings: list[str] = field(default_factory=list)

    @property
    def ran(self) -> bool:
        """doit ran tasks (0, 1, 2); 3 and above: nothing ran (a dodo.py or command-line error)."""
        return self.code in (0, 1, 2)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> RunResult:
        return RunResult(**json.loads(text))


_CURRENT: list[tuple[RunResult, bool]] = []  # the run in progress in this process and whether it prints


def recording_reporter() -> type:
    """The reporter class doit instantiates for REPORTER_NAME: prints as XspliceReporter, records into the run."""
    from doit.exceptions import UnmetDependency

    from .reporter import XspliceReporter, one_line

    class RecordingReporter(XspliceReporter):
        desc = "xsplice-build progress, recorded for the caller"

        def __init__(self, outstream: TextIO, options: dict[str, Any]) -> None:
            result, echo = _CURRENT[-1]
            super().__init__(outstream if echo else open(os.devnull, "w"), options)  # noqa: SIM115
            self.result = result

        def execute_task(self, task: Any) -> None:
            if task.actions:
                self.result.started.append(task.name)
            super().execute_task(task)

        def add_failure(self, task: Any, fail: Any) -> None:
            if isinstance(fail, UnmetDependency):
                self.result.not_run.append(task.name)
            else:
                self.result.failed[task.name] = one_line(fail)
            super().add_failure(task, fail)

        def skip_uptodate(self, task: Any) -> None:
            if task.actions:
                self.result.uptodate.append(task.name)
            super().skip_uptodate(task)

        def add_warning(self, task: str, text: str) -> None:
            self.result.warnings.append(f"{task}: {text}")
            super().add_warning(task, text)

    return RecordingReporter


@contextmanager
def _in_directory(path: Path) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def run_targets(project: Project, targets: list[str], processes: int = 0, echo: bool = True,
                announce: Callable[[str], None] | None = None) -> RunResult:
    """Run doit for `targets` in `project` (continuing past failures), holding the checkout's lock meanwhile."""
    from doit.doit_cmd import DoitMain

    result = RunResult()
    # Reporter plugins are named "module:attribute"; doit imports and calls nothing else of ours. This module's
    # own name (also "__main__" in `python -m xsplice_build.pipeline.runner`), so the reporter finds _CURRENT here.
    config = {"REPORTER": {REPORTER_NAME: f"{__name__}:RecordingReporter"}}
    arguments = ["run", "--continue", "--reporter", REPORTER_NAME]
    if processes > 1:
        arguments += ["-n", str(processes)]
    with holding(project, announce), _in_directory(project.root):
        _CURRENT.append((result, echo))
        try:
            with doit_database(project):
                result.code = DoitMain(extra_config=config).run([*arguments, *targets])
        finally:
            _CURRENT.pop()
    return result


@contextmanager
def doit_database(project: Project) -> Iterator[None]:
    """doit's dependency database failing (damaged, disk full, read-only) as a refusal that says what to do."""
    import sqlite3

    from doit.dependency import DatabaseException

    database = project.work_dir / ".doit.db"
    try:
        yield
    except DatabaseException:
        raise XspliceError(f"{database}: doit's dependency database is damaged; delete it (rm {database}) and run "
                           "again: every stage is checked against its record, so its outputs are kept or "
                           "remade") from None
    except sqlite3.Error as error:
        raise XspliceError(f"{database}: doit's dependency database cannot be written ({error}); make room on its "
                           "file system or make it writable (or delete it if it is damaged), and run again") from None


def __getattr__(name: str) -> Any:
    # doit's plugin loader imports this module and takes RecordingReporter from it: built on first use,
    # so importing the runner does not import doit and rich.
    if name == "RecordingReporter":
        return recording_reporter()
    raise AttributeError(name)


def run_in_child(root: Path, targets: list[str], processes: int = 0,
                 started: Callable[[Any], None] | None = None, cumulative: Sequence[str] = (),
                 **popen: Any) -> RunResult:
    """run_targets in a child process in `root`: its result, read from a JSON file.

    `cumulative`: cumulative payloads the child's tasks must include besides every pair and chain.

    `popen` goes to subprocess.Popen (a new session, inherited descriptors); `started` is called with the
    process as soon as it runs (the cluster worker records its process group).
    """
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="xsplice-run-") as scratch:
        output = Path(scratch) / "result.json"
        command = [sys.executable, "-m", __name__, "--result", str(output), "-n", str(processes),
                   *(f"--cumulative={name}" for name in cumulative), *targets]
        environment = {**os.environ, "XSPLICE_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(command, cwd=root, env=environment, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
        if started is not None:
            started(process)
        output_text, _ = process.communicate()
        if not output.is_file():
            detail = output_text.strip().splitlines()[-1:] or ["no output"]
            raise XspliceError(f"doit in {root} did not run (exit {process.returncode}): {detail[0]}")
        return RunResult.from_json(output.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xsplice_build.pipeline.runner",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--result", required=True, type=Path, help="write the RunResult here as JSON")
    parser.add_argument("-n", dest="processes", type=int, default=0, help="doit worker processes")
    parser.add_argument("--cumulative", action="append", default=[], help="a cumulative payload to plan too")
    parser.add_argument("targets", nargs="+")
    arguments = parser.parse_args(argv)
    try:
        if arguments.cumulative:
            from .tasks import plan_cumulative

            plan_cumulative(arguments.cumulative)
        result = run_targets(Project.find(), arguments.targets, arguments.processes)
    except XspliceError as error:
        print(f"xsplice: error: {error.message}", file=sys.stderr)
        return 2
    arguments.result.write_text(result.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
