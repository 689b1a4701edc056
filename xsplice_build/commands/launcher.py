"""The `doit` command of this project's virtualenv: a no-op `doit build-patch` without doit, else doit itself.

`doit build-patch ...` (the command first) is answered from its stamp when the stamp says this
exact run is a no-op (xsplice_build.noop); otherwise, and for every other command, this is doit's
own entry point (`doit.__main__`), with the run recorded when it is a `build-patch`. Only the
standard library and noop.py are imported before doit, so a recognised no-op costs little more
than the interpreter's start.
"""

from __future__ import annotations

import sys

from .. import noop

RECOGNISED = "build-patch"


def main() -> int:
    arguments = sys.argv[1:]
    recording = None
    if arguments[:1] == [RECOGNISED]:
        code = noop.replay(sys.argv)
        if code is not None:
            return code
        recording = noop.record(sys.argv)
    from doit.doit_cmd import DoitMain

    code = DoitMain().run(arguments)
    if recording is not None:
        _finish(recording, code)
    return code


def _finish(recording: noop.Recording, code: int) -> None:
    from ..errors import XspliceError
    from ..lock import held
    from ..project import Project

    try:
        work = Project.find().work_dir
    except XspliceError:
        work = None
    recording.finish(code, work, held())
