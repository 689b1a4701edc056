"""The one place that prints while doit runs stages: progress, results and one-line failures.

In a terminal rich shows a spinner over the running stages; elsewhere (CI logs, pipes)
every event is a plain line starting with "xsplice:", easy to grep.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, TextIO

from doit.exceptions import BaseFail, TaskFailed, UnmetDependency

from .. import noop
from ..stages import sandbox

if TYPE_CHECKING:
    from rich.console import Console
    from rich.status import Status



class XspliceReporter:
    desc = "xsplice-build progress"

    def __init__(self, outstream: TextIO, options: dict[str, Any]) -> None:
        self.outstream = outstream
        self._console: Console | None = None
        self.started: dict[str, float] = {}
        self.failures: list[tuple[str, BaseFail]] = []
        self.status: Status | None = None

    @property
    def console(self) -> Console:
        # rich is imported once something runs: a no-op build prints plain lines only.
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.outstream, highlight=False, soft_wrap=True)
        return self._console

    # doit's reporter protocol
    def initialize(self, tasks: dict[str, Any], selected_tasks: list[str]) -> None:
        if sandbox.disabled():
            self._line(sandbox.UNSANDBOXED_WARNING)

    def get_status(self, task: Any) -> None:
        pass

    def execute_task(self, task: Any) -> None:
        if not task.actions:
            return
        noop.observe("a task ran")
        self.started[task.name] = time.monotonic()
        if self.console.is_terminal:
            self._show_running()
        else:
            self._line(f"start {task.name}")

    def add_success(self, task: Any) -> None:
        if task.name not in self.started:
            return
        seconds = time.monotonic() - self.started.pop(task.name)
        self._line(f"[green]done[/] {_escape(task.name)} ({seconds:.1f} s)", markup=True)
        # Warnings a stage returned (tasks.run_stage keeps them in the task's values): shown, never dropped.
        for warning in task.values.get("warnings", []):
            self.add_warning(task.name, warning)
        self._show_running()

    def add_warning(self, task: str, text: str) -> None:
        self._line(f"warning: {task}: {' '.join(str(text).split())}")

    def add_failure(self, task: Any, fail: BaseFail) -> None:
        noop.observe("a task failed")
        self.started.pop(task.name, None)
        if isinstance(fail, UnmetDependency):
            self._line(f"skipped {task.name}: a stage it needs failed")
        else:
            self.failures.append((task.name, fail))
            self._line(f"[bold red]FAILED[/] {_escape(task.name)}: {_escape(one_line(fail))}", markup=True)
        self._show_running()

    def skip_uptodate(self, task: Any) -> None:
        noop.observe("up-to-date")
        if task.actions:
            self._line(f"up-to-date {task.name}")

    def skip_ignore(self, task: Any) -> None:
        noop.observe("a task was ignored")
        self._line(f"ignored {task.name}")

    def cleanup_error(self, exception: BaseFail) -> None:
        noop.observe("a clean-up failed")
        self._line(f"cleanup error: {exception.get_msg()}")

    def runtime_error(self, msg: str) -> None:
        noop.observe("doit met a runtime error")
        self._stop_status()
        self.console.print(f"xsplice: error: {msg}", markup=False)

    def teardown_task(self, task: Any) -> None:
        pass

    def complete_run(self) -> None:
        noop.observe("complete")
        self._stop_status()
        for name, fail in self.failures:
            if not isinstance(fail, TaskFailed):
                # Not a user error but a bug in this tool: keep the traceback for the report.
                self.console.print(f"xsplice: internal error in {name}:\n{fail.get_msg()}", markup=False)

    def _line(self, text: str, markup: bool = False) -> None:
        self._stop_status()
        if markup or self._console is not None:
            self.console.print(f"xsplice: {text}", markup=markup)
        else:  # what rich prints for plain text without highlighting, without importing it
            self.outstream.write(f"xsplice: {text}\n")
            self.outstream.flush()

    def _show_running(self) -> None:
        if not self.console.is_terminal or not self.started:
            self._stop_status()
            return
        message = "running " + ", ".join(sorted(self.started))
        if self.status is None:
            self.status = self.console.status(message)
            self.status.start()
        else:
            self.status.update(message)

    def _stop_status(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def one_line(fail: BaseFail) -> str:
    if isinstance(fail, TaskFailed) and not fail.traceback:
        return " ".join(fail.message.split())
    return f"{fail.get_name()}: {' '.join(str(fail.message).split())} (internal error; details below)"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
