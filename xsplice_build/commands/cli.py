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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..console import run_command
from ..errors import NothingToPatch, Unpatchable, printable

if TYPE_CHECKING:
    from ..diff.state import ObjectDiff

# Each command imports its engine when it runs: `--help` loads neither cryptography nor pyelftools.


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    return run_command("xsplice-build", lambda: arguments.run(arguments))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xsplice-build", description="xsplice-build's engines on single files")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    diff = commands.add_parser("diff", help="diff one original and patched object, as create-diff-object does")
    diff.add_argument("original", type=Path)
    diff.add_argument("patched", type=Path)
    diff.add_argument("--explain", action="store_true", help="show every correlation, change and inclusion")
    diff.add_argument("--json", action="store_true", help="print the decisions as JSON")
    diff.add_argument("-o", "--output", type=Path, help="write the extracted code (a relocatable object)")
    diff.add_argument("--profile", default="xen-x86_64", choices=_profile_names())
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


def _profile_names() -> list[str]:
    from ..diff.profile import PROFILES

    return sorted(PROFILES)


def _verify(arguments: argparse.Namespace) -> int:
    from ..runtime.hypervisor import trusted_certificate
    from ..runtime.verify import summary, verify_file

    certificate = arguments.cert or trusted_certificate()
    linked, image = verify_file(arguments.payload, arguments.image, certificate, arguments.require_code_signing)
    print(printable(summary(linked, image, certificate)))  # function names come from the payload
    return 0


def _diff(arguments: argparse.Namespace) -> int:
    from ..diff.engine import DebugPair, conclude, diff_objects
    from ..diff.profile import profile_named
    from ..files import check_replaceable, write_atomic

    if arguments.output:
        check_replaceable(arguments.output)  # before any work: a device or directory is never ours to replace
    result = diff_objects(arguments.original, arguments.patched, arguments.name or str(arguments.patched),
                          profile_named(arguments.profile), DebugPair(*arguments.types) if arguments.types else None)
    try:
        # The pipeline's own conclusion (pass 5): extraction also resolves the base-image references.
        concluded = conclude([result])
    except (NothingToPatch, Unpatchable) as refusal:
        _show(arguments, result)
        for line in result.refusals[1:]:
            print(f"xsplice-build: {printable(line)}", file=sys.stderr)
        if isinstance(refusal, NothingToPatch) and not (arguments.explain or arguments.json):
            raise refusal.with_note("run with --explain to see every decision") from None
        raise
    record = _show(arguments, result)
    if not arguments.json:
        # Names come from the objects: a name holding ESC or a newline is printed escaped.
        for function in concluded.functions:
            print(printable(f"changed {function.name} ({function.old_size} -> {function.new_size} bytes)"))
        for name in record["new_functions"]:
            print(printable(f"new     {name}"))
        for text in record["warnings"] + record["ignored"]:
            print(printable(f"note    {text}"))
    if arguments.output:
        write_atomic(arguments.output, concluded.extract)
    return 0


def _show(arguments: argparse.Namespace, result: ObjectDiff) -> dict[str, Any]:
    """Print the decisions as --json or --explain asked (the pipeline's diff.explain.json / .txt record)."""
    from ..diff.explain import explain_record, render

    record = explain_record(result)
    if arguments.json:
        print(json.dumps(record, indent=2, sort_keys=True))  # escapes every control character itself
    elif arguments.explain:
        print("\n".join(printable(line) for line in render(record)))
    return record


if __name__ == "__main__":
    sys.exit(main())
