"""Stage 2, toolchain: the compiler and binutils must be the ones in toolchain.lock.

A payload is the difference between two compilations; built with another gcc, the
"old" code it assumes is not the code that runs, even when everything links. So the
lock records each tool's resolved path, version line and sha256, and a build runs
only when every one of them matches on this machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ConfigError, ToolchainMismatch, XspliceError
from ..files import TEXT_LIMIT, read_input
from ..schema import Field, check_table, load_toml

TOOLS = ("gcc", "cc1", "as", "ld")
_TOOL_FIELDS = {
    "path": Field(str, required=True, what="resolved absolute path of the binary"),
    "version": Field(str, required=True, what="first line of its --version output"),
    "sha256": Field(str, required=True, what="sha256 of the binary"),
}
_HEADER = """\
# toolchain.lock: the exact compiler and binutils that payloads are built with.
# Every build checks this machine against it; rewrite it only deliberately, with
#   doit lock-toolchain
# and review the change like any other: payloads built before and after differ.
"""


@dataclass(frozen=True)
class Tool:
    name: str
    path: str
    version: str
    sha256: str


def probe(compiler: str = "gcc") -> dict[str, Tool]:
    """Find gcc, the cc1 it runs, and the as and ld it calls, and fingerprint each."""
    gcc = _resolve(compiler)
    tools = {"gcc": gcc}
    for name in ("cc1", "as", "ld"):
        program = _run([gcc, f"-print-prog-name={name}"]).strip()
        tools[name] = _resolve(program)
    return {name: _fingerprint(name, path) for name, path in tools.items()}


def read_lock(path: Path) -> dict[str, Tool]:
    """Parse toolchain.lock strictly: every tool present, every key known and typed."""
    data = check_table(path, "", load_toml(path), {name: Field(dict, required=True, what=f"the locked {name}")
                                                  for name in TOOLS})
    return {name: Tool(name=name, **check_table(path, name, data[name], _TOOL_FIELDS)) for name in TOOLS}


def write_lock(path: Path, tools: dict[str, Tool]) -> None:
    lines = [_HEADER]
    for name in TOOLS:
        tool = tools[name]
        lines += [f"[{name}]", f"path = {_quote(tool.path)}", f"version = {_quote(tool.version)}",
                  f"sha256 = {_quote(tool.sha256)}", ""]
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("\n".join(lines))
    temporary.replace(path)


def check(lock_path: Path) -> dict[str, Tool]:
    """Return the locked tools when this machine has exactly them; else refuse naming the first difference."""
    if not lock_path.exists():  # anything else there (a device, a FIFO) is read_lock's refusal
        raise ConfigError(f"{lock_path}: missing; create it deliberately with `doit lock-toolchain`")
    locked = read_lock(lock_path)
    # The builds run the locked gcc by its path, so that is the binary to fingerprint.
    here = probe(locked["gcc"].path)
    for name in TOOLS:
        want, have = locked[name], here[name]
        for attribute in ("path", "version", "sha256"):
            if getattr(want, attribute) != getattr(have, attribute):
                raise ToolchainMismatch(
                    f"{lock_path.name}: {name} differs: {attribute} is {getattr(have, attribute)!r} here, "
                    f"{getattr(want, attribute)!r} in the lock; build with the locked toolchain, "
                    f"or rewrite the lock deliberately with `doit lock-toolchain`")
    return locked


def lock_digest(lock_path: Path) -> str:
    return hashlib.sha256(lock_path.read_bytes()).hexdigest()


def state(tools: dict[str, Tool], lock_path: Path) -> dict[str, object]:
    """What later stages depend on: the lock's hash and the tools' identities."""
    return {"lock_sha256": lock_digest(lock_path), "tools": {name: asdict(tool) for name, tool in tools.items()}}


def _resolve(program: str) -> str:
    found = program if os.path.isabs(program) else shutil.which(program)
    if not found or not os.path.isfile(found):
        raise ToolchainMismatch(f"{program}: not found on this machine; install the toolchain in toolchain.lock")
    return os.path.realpath(found)


def _fingerprint(name: str, path: str) -> Tool:
    version = _cc1_version(path) if name == "cc1" else _run([path, "--version"]).splitlines()[0].strip()
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return Tool(name=name, path=path, version=version, sha256=digest.hexdigest())


def _cc1_version(path: str) -> str:
    # cc1 reports itself with -version (to stderr), then compiles stdin: give it nothing.
    output = subprocess.run([path, "-quiet", "-version", "-o", os.devnull], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, check=False, env={**os.environ, "LC_ALL": "C"})
    lines = (output.stderr + output.stdout).splitlines()
    return lines[0].strip() if lines else "unknown"


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True,
                              env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise ToolchainMismatch(f"{argv[0]}: cannot run ({error}); install the toolchain in toolchain.lock") from None


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def files_state(lock_path: Path, state_path: Path) -> list[object] | None:
    """What a toolchain check depended on, cheaply: the lock's and the check record's bytes, PATH, and each
    checked binary's size, mtime, ctime and inode (a reinstalled or replaced binary changes them).
    None when there is no record yet. The same state since the last full check means the same result."""
    try:
        # Read as any input is (regular files, bounded): a device or FIFO there means "check again", and the
        # full check then refuses it in one line instead of this shortcut hanging or reading without end.
        lock = read_input(lock_path, "toolchain lock", TEXT_LIMIT)
        record = read_input(state_path, "toolchain record", TEXT_LIMIT)
        tools = json.loads(record)["tools"]
        binaries = [os.stat(tools[name]["path"]) for name in TOOLS]
    except (OSError, ValueError, KeyError, TypeError, XspliceError):
        return None
    stats = [[s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino] for s in binaries]
    return [hashlib.sha256(lock).hexdigest(), hashlib.sha256(record).hexdigest(), os.environ.get("PATH", ""), stats]
