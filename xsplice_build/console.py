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
import sys
from collections.abc import Callable
from typing import Any

from .baseline import DEFAULT_BASELINE
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


