"""The one output boundary of every console face: a user-facing refusal becomes one line and an exit code.

`xsplice-build`, `xen-xsplice` and the doit commands (`build-patch`, `nightly`, `audit`)
all run their work through `run_command`: an XspliceError prints `PROGRAM: [error: ]message`
on stderr and exits with its code (the doit commands: 2, a run refused before any stage);
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from .errors import XspliceError

DOIT_REFUSED = 2  # a doit command refused before running a stage (doit itself: 1 a task failed, 3 bad usage)


def run_command(program: str, command: Callable[[], int | None], exit_code: int | None = None,
                label: str = "") -> int:
    """Run `command`; a refusal is `program: label message` on stderr and its exit code (or `exit_code`)."""
    for stream in (sys.stdout, sys.stderr):
        # Names from hostile files may hold undecodable bytes: escape them rather than crash printing.
        stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    try:
        return int(command() or 0)
    except XspliceError as error:
        sys.stdout.flush()
        print(f"{program}: {label}{error.message}", file=sys.stderr)
        return exit_code if exit_code is not None else error.exit_code


def doit_command(execute: Callable[..., int]) -> Callable[..., int]:
    """A doit command's `execute` behind the boundary: `xsplice: error: ...` and exit 2 on a refusal."""

    @functools.wraps(execute)
    def bounded(self: Any, params: Any, args: list[str]) -> int:
        return run_command("xsplice", lambda: execute(self, params, args), DOIT_REFUSED, "error: ")

    return bounded
