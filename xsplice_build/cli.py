"""`xsplice-build`: the pipeline's engines as commands on files.

    xsplice-build diff ORIG.o PATCHED.o [--explain] [--json] [-o EXTRACT.o] [--types ORIG_G.o PATCHED_G.o]
        The function diff of one object pair, as create-diff-object runs it. Exit 0:
        something to patch; 3: nothing to patch; 4: unpatchable; 1: bad input. Struct
        layouts come from the objects' own DWARF, or from the --types pair (debug compiles).

    xsplice-build verify PAYLOAD --image IMAGE [--cert CERT] [--require-code-signing]
        Xen's loader rules, checked offline: one summary line and exit 0, or one line
        naming what breaks which rule and exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from .diff.engine import DebugPair, diff_objects, nothing_to_patch_message
from .diff.explain import explain_record, render
from .diff.extract import Extract
from .diff.profile import PROFILES, profile_named
from .errors import NothingToPatch, Unpatchable, XspliceError
from .files import write_atomic
from .hypervisor import trusted_certificate
from .project import Project
from .verify import summary, verify_file


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    return run_command("xsplice-build", lambda: arguments.run(arguments))


def run_command(program: str, command: Callable[[], int | None]) -> int:
    """The console scripts' one output boundary: a user-facing refusal is one line and its exit code."""
    for stream in (sys.stdout, sys.stderr):
        # Names from hostile files may hold undecodable bytes: escape them rather than crash printing.
        stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    try:
        return int(command() or 0)
    except XspliceError as error:
        print(f"{program}: {error.message}", file=sys.stderr)
        return error.exit_code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xsplice-build", description="xsplice-build's engines on single files")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    diff = commands.add_parser("diff", help="diff one original and patched object, as create-diff-object does")
    diff.add_argument("original", type=Path)
    diff.add_argument("patched", type=Path)
    diff.add_argument("--explain", action="store_true", help="show every correlation, change and inclusion")
    diff.add_argument("--json", action="store_true", help="print the decisions as JSON")
    diff.add_argument("-o", "--output", type=Path, help="write the extracted code (a relocatable object)")
    diff.add_argument("--profile", default="xen-x86_64", choices=sorted(PROFILES))
    diff.add_argument("--types", nargs=2, type=Path, metavar=("ORIG_DEBUG", "PATCHED_DEBUG"),
                      help="read struct layouts from these debug compiles of the two units")
    diff.add_argument("--name", help="the object's path in the tree, as the pipeline's reports name it "
                      "(default: PATCHED)")
    diff.set_defaults(run=_diff)
    verify = commands.add_parser("verify", help="check a signed payload against a base image, as Xen's loader")
    verify.add_argument("payload", type=Path)
    verify.add_argument("--image", type=Path, required=True, help="the base image (xen-syms) it was built for")
    verify.add_argument("--cert", type=Path, help="trusted certificate (default: the development certificate)")
    verify.add_argument("--require-code-signing", action="store_true", default=None,
                        help="refuse a certificate without the codeSigning extended key usage "
                             "(also XSPLICE_REQUIRE_CODE_SIGNING=1)")
    verify.set_defaults(run=_verify)
    return parser


def _verify(arguments: argparse.Namespace) -> int:
    certificate = arguments.cert or trusted_certificate(Project.find())
    linked, image = verify_file(arguments.payload, arguments.image, certificate, arguments.require_code_signing)
    print(summary(linked, image, certificate))
    return 0


def _diff(arguments: argparse.Namespace) -> int:
    debug = DebugPair(*arguments.types) if arguments.types else None
    result = diff_objects(arguments.original, arguments.patched, arguments.name or str(arguments.patched),
                          profile_named(arguments.profile), debug)
    record = explain_record(result)
    if arguments.json:
        print(json.dumps(record, indent=2, sort_keys=True))
    elif arguments.explain:
        print("\n".join(render(record)))
    if result.refusals:
        for refusal in result.refusals[1:]:
            print(f"xsplice-build: {refusal}", file=sys.stderr)
        raise Unpatchable(result.refusals)
    extract = Extract()
    extract.add(result)
    data, functions = extract.finish()
    if not functions:
        hint = "" if arguments.explain or arguments.json else "; run with --explain to see every decision"
        raise NothingToPatch(nothing_to_patch_message([result]) + hint)
    if not arguments.json:
        for function in functions:
            print(f"changed {function.name} ({function.old_size} -> {function.new_size} bytes)")
        for name in record["new_functions"]:
            print(f"new     {name}")
        for text in record["warnings"] + record["ignored"]:
            print(f"note    {text}")
    if arguments.output:
        write_atomic(arguments.output, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
