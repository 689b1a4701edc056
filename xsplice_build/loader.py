"""doit's task loader for dodo.py, also taking `-n N` before a command name: `doit -n 2 nightly`.

doit parses options that come before a command name as the task loader's own (anything
else turns the command name into a task name for `doit run`), so the number of worker
processes is offered here too; doit hands it to the command, as `doit nightly -n 2` would.
"""

from __future__ import annotations

from doit.cmd_base import DodoTaskLoader
from doit.cmd_run import opt_num_process


class DodoLoader(DodoTaskLoader):
    cmd_options = (*DodoTaskLoader.cmd_options, opt_num_process)
