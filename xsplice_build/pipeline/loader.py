"""doit's task loader for dodo.py: takes the checkout's lock for commands that write, and `-n N` before a command.

Every doit command that runs tasks or changes doit's state (`run`, `build-patch`, a bare
`doit TASK`, `clean`, `forget`, `ignore`, `reset-dep`) holds the checkout's lock (lock.hold)
from the moment it loads the tasks until it exits, so it never shares work/ or the
dependency database with another build; `list` and `info` only read and do not wait.

doit parses options that come before a command name as the task loader's own (anything
else turns the command name into a task name for `doit run`), so the number of worker
processes is offered here too; doit hands it to the command, as `doit nightly -n 2` would.
Importing it also lets an empty argument through doit's command-line parsing (see below).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from doit.cmd_base import DodoTaskLoader
from doit.cmd_run import opt_num_process
from doit.doit_cmd import DoitMain

from ..lock import hold
from ..project import Project

# doit's own commands that write work/ or doit's database without running tasks.
_WRITING_COMMANDS = frozenset({"clean", "forget", "ignore", "reset-dep"})


class DodoLoader(DodoTaskLoader):
    cmd_options = (*DodoTaskLoader.cmd_options, opt_num_process)

    def load_tasks(self, cmd: Any, pos_args: list[str]) -> list[Any]:
        if getattr(cmd, "execute_tasks", False) or cmd.name in _WRITING_COMMANDS:
            hold(Project(Path(self.namespace["__file__"]).resolve().parent))
        return super().load_tasks(cmd, pos_args)


# No argument of a command line can hold a NUL byte: it stands for an empty one while doit looks.
_EMPTY = "\0"


def _keeping_empty_arguments(process_args: Callable[[DoitMain, list[str]], list[str]]) -> Callable[..., list[str]]:
    """doit 0.37 reads `arg[0]` of every argument and raised IndexError on an empty one (`build-patch ''`):
    empty arguments are passed through untouched, for the command to refuse by name."""

    def process(main: DoitMain, arguments: list[str]) -> list[str]:
        kept = process_args(main, [argument or _EMPTY for argument in arguments])
        return ["" if argument == _EMPTY else argument for argument in kept]

    return process


DoitMain.process_args = _keeping_empty_arguments(DoitMain.process_args)  # type: ignore[method-assign]
