"""What every console face shares: one output boundary (a refusal is one line and an exit code), and usage.

`xsplice-build`, `xen-xsplice` and the doit commands (`build-patch`, `nightly`, `audit`)
all run their work through `run_command`: an XspliceError prints `PROGRAM: [error: ]message`
on stderr and exits with its code (the doit commands: 2, a run refused before any stage);
any other exception is a bug and keeps its traceback.

`ProjectCommand` gives the doit commands their own short usage for `--help`, `doit help
CMD` and a misspelled option, and GNU-style options anywhere among the arguments; the
options several commands share are declared here once.
"""

from __future__ import annotations

import functools
import getopt
import os
import sys
from collections.abc import Callable
from typing import Any

from .errors import XspliceError
from .project import DEFAULT_BASELINE

DOIT_REFUSED = 2  # a doit command refused before running a stage (doit itself: 1 a task failed, 3 bad usage)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C stopped


def run_command(program: str, command: Callable[[], int | None], exit_code: int | None = None,
                label: str = "") -> int:
    """Run `command`; a refusal is `program: label message` on stderr and its exit code (or `exit_code`).

    Besides refusals: a closed stdout or stderr stops the run before it starts, and an interrupt
    (Ctrl-C, exit 130) or a reader that went away (`| head -1`) ends it in one line too; outputs are
    written atomically, so none of them leaves a half-written file.
    """
    closed = check_standard_streams()
    if closed:
        return _say(program, label + closed, exit_code if exit_code is not None else 1)
    for stream in (sys.stdout, sys.stderr):
        # Names from hostile files may hold undecodable bytes: escape them rather than crash printing.
        stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    try:
        code = int(command() or 0)
        sys.stdout.flush()
        return code
    except XspliceError as error:
        sys.stdout.flush()
        return _say(program, label + error.message, exit_code if exit_code is not None else error.exit_code)
    except BrokenPipeError:
        # Whatever is still buffered can go nowhere: point stdout at /dev/null so the exit flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _say(program, "standard output was closed by its reader (broken pipe); the output is incomplete", 1)
    except KeyboardInterrupt:
        return _say(program, "interrupted; nothing was half-written (outputs are replaced whole or not at all)",
                    EXIT_INTERRUPTED)


def check_standard_streams() -> str | None:
    """A refusal when stdout or stderr is closed (`>&-`), with the closed descriptors held on /dev/null.

    A closed descriptor 1 or 2 would be handed to the next file opened, and a print or a compiler's
    messages would land in an output file: nothing runs until both are open.
    """
    closed = [name for number, name in ((1, "standard output"), (2, "standard error")) if not _is_open(number)]
    for number in (1, 2):
        if not _is_open(number):
            os.dup2(os.open(os.devnull, os.O_WRONLY), number)
    if not closed:
        return None
    return f"{' and '.join(closed)} closed; redirect to a file or /dev/null instead of closing"


def _is_open(descriptor: int) -> bool:
    try:
        os.fstat(descriptor)
    except OSError:
        return False
    return True


def _say(program: str, message: str, code: int) -> int:
    if sys.stderr is not None:
        print(f"{program}: {message}", file=sys.stderr, flush=True)
    return code


def doit_command(execute: Callable[..., int]) -> Callable[..., int]:
    """A doit command's `execute` behind the boundary: `xsplice: error: ...` and exit 2 on a refusal."""

    @functools.wraps(execute)
    def bounded(self: Any, params: Any, args: list[str]) -> int:
        return run_command("xsplice", lambda: execute(self, params, args), DOIT_REFUSED, "error: ")

    return bounded


opt_baseline = {
    "name": "baseline",
    "long": "baseline",
    "type": str,
    "default": DEFAULT_BASELINE,
    "help": f"baseline to build against (a name from baseline/*.toml) [default: {DEFAULT_BASELINE}]",
}

opt_processes = {
    "name": "num_process",
    "short": "n",
    "long": "process",
    "type": int,
    "default": 0,
    "help": "run the stages in this many parallel doit worker processes [default: 0, serial]",
}


class ProjectCommand:
    """Short usage for --help, `doit help CMD` and bad options; GNU-style options anywhere among the arguments."""

    name: str
    doc_purpose: str
    doc_usage: str
    own_options: tuple[dict[str, Any], ...] = ()

    def help(self) -> str:
        lines = [f"usage: doit {self.name} {self.doc_usage}", "", self.doc_purpose, ""]
        for option in self.own_options:
            flags = ", ".join(flag for flag in (f"-{option['short']}" if option.get("short") else "",
                                                f"--{option['long']}" if option.get("long") else "") if flag)
            value = "" if option.get("type") is bool else " VALUE"
            lines.append(f"  {flags + value:24} {option['help']}")
        lines += ["", "Exit codes and every command: docs/commands.md"]
        return "\n".join(lines)

    def parse_execute(self, in_args: list[str]) -> int:
        if "--help" in in_args or "-h" in in_args:
            print(self.help())
            return 0
        parser = self.cmdparser  # type: ignore[attr-defined]
        try:
            options, positional = getopt.gnu_getopt(in_args, parser.get_short(), parser.get_long())
        except getopt.GetoptError as error:
            print(f"xsplice: error: {error}\n{self.help()}", file=sys.stderr)
            return 2
        ordered = [item for flag, value in options for item in ([flag, value] if value else [flag])]
        params, args = parser.parse([*ordered, "--", *positional])
        params.update(self.opt_vals)  # type: ignore[attr-defined]
        return self.execute(params, args)  # type: ignore[attr-defined]


