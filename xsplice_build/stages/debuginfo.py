"""Debug compiles for the struct-layout rule: each changed translation unit, once more with -g.

The shipped build of a real hypervisor has no DWARF (Xen without CONFIG_DEBUG_INFO), yet
the struct-layout rule needs the compiler's own layouts of the original and the patched
unit. Each changed object's unit is compiled again, with the exact flags kbuild recorded
for it (its `.NAME.o.cmd`) plus `-g`, into a directory outside the build tree, so the
shipped objects are untouched. Both go under the pair's own directory, the only one the
sandboxed build-patched stage may write: an original unit's debug object, which depends
only on the original object, is kept there by its content and reused when the stage reruns.
Objects that already carry DWARF (minixen builds with -g) need no second compile.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..diff.types import has_dwarf, read_types
from ..errors import BuildError
from ..files import relative
from ..records import ChangedObject
from ..target.baseline import Baseline
from ..target.layout import compile_flags, kbuild_command
from .build import final_object, reuse_index_dir


@dataclass(frozen=True)
class DebugUnit:
    """One object to compile again with -g: where its tree is and where the debug object goes."""

    tree: Path
    object: str  # path in the tree, as the build records name it
    output: Path


def debug_objects(baseline: Baseline, changed: list[ChangedObject], orig_tree: Path, patched_tree: Path,
                  cache: Path, patch_dir: Path, root: Path,
                  early: EarlyDebugCompiles | None = None) -> dict[str, tuple[str | None, str]]:
    """{object: (original, patched)} (paths relative to `root`; no original for a new object) for each changed
    object whose units need a debug compile; objects with their own DWARF, or without a recorded command, are
    left out. A patched unit `early` compiled while make ran is taken when it still holds."""
    units: list[DebugUnit] = []
    pairs: dict[str, tuple[str | None, str]] = {}
    for change in changed:
        name = change.object
        if has_dwarf(patched_tree / name) or not _c_unit(baseline, patched_tree, name):
            continue  # DWARF already there, no recorded command, or assembly (no C types to compare)
        patched = debug_unit(patched_tree, name, patch_dir)
        if early is None or not early.take(patched):
            units.append(patched)
        original = None
        if change.original:
            original = original_debug_unit(orig_tree, name, cache, str(change.original_sha256))
            if not original.output.is_file():
                units.append(original)
        pairs[name] = (relative(original.output, root) if original else None, relative(patched.output, root))
    compiler = _compiler(baseline)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(lambda unit: _compile(baseline, unit, compiler), units))
    return pairs


def _directory(baseline: Baseline) -> str:
    return baseline.layout_probe.directory if baseline.layout_probe else "."


def _command_file(baseline: Baseline, tree: Path, name: str) -> Path | None:
    path = tree / name
    command = path.with_name(f".{path.name}.cmd")
    return command if command.is_file() and path.is_relative_to(tree / _directory(baseline)) else None


def _arguments(command_file: Path) -> list[str]:
    return shlex.split(kbuild_command(command_file).split(" && ")[0])


def _c_unit(baseline: Baseline, tree: Path, name: str) -> bool:
    """`name` was compiled from one C source by a command kbuild recorded in `tree`."""
    command_file = _command_file(baseline, tree, name)
    return command_file is not None and _c_source(command_file) is not None


def _compiler(baseline: Baseline) -> str:
    return shutil.which(baseline.build.compiler) or baseline.build.compiler


def _c_source(command_file: Path) -> str | None:
    """The one C source the recorded command compiles, or None (an assembly unit, a link step)."""
    sources = [a for a in _arguments(command_file)[1:] if a.endswith(".c") and not a.startswith("-")]
    return sources[0] if len(sources) == 1 else None


def debug_unit(patched_tree: Path, name: str, patch_dir: Path) -> DebugUnit:
    return DebugUnit(patched_tree, name, patch_dir / "debug" / name)


def original_debug_unit(orig_tree: Path, name: str, cache: Path, original_sha256: str) -> DebugUnit:
    """Kept by the original object's content, which is all it depends on: where trusted code made it for
    every pair of the baseline, else in the pair's own `cache` (which only that pair trusts)."""
    trusted = trusted_original(orig_tree, name, original_sha256)
    return DebugUnit(orig_tree, name, trusted if trusted.is_file() else cache / f"{name}.{original_sha256[:16]}.o")


def trusted_original(orig_tree: Path, name: str, original_sha256: str) -> Path:
    """An original unit's debug object as trusted code keeps it: in the original tree's index directory,
    which patched builds cannot write (sandboxed_reuse.py)."""
    return reuse_index_dir(orig_tree) / "debug" / f"{name}.{original_sha256[:16]}.o"


def compile_trusted_original(baseline: Baseline, orig_tree: Path, name: str, original_sha256: str) -> bool:
    """Compile an original unit's debug object where every pair of the baseline takes it (trusted code only);
    False for a unit that has none (assembly, no recorded command, DWARF of its own)."""
    if not _c_unit(baseline, orig_tree, name) or has_dwarf(orig_tree / name):
        return False
    unit = DebugUnit(orig_tree, name, trusted_original(orig_tree, name, original_sha256))
    if not unit.output.is_file():
        _compile(baseline, unit, _compiler(baseline))
    return True


def _command(baseline: Baseline, unit: DebugUnit, compiler: str) -> tuple[list[str], Path]:
    """The unit's debug compile (kbuild's recorded flags, -g, the tree mapped out), writing the output's
    scratch name, and the directory it runs in."""
    command_file = _command_file(baseline, unit.tree, unit.object)
    assert command_file is not None
    arguments = _arguments(command_file)
    source = _c_source(command_file)
    if source is None:
        raise BuildError(f"{command_file}: the recorded command compiles no single C source")
    directory = unit.tree / _directory(baseline)
    return [compiler, *compile_flags(arguments[1:]), "-g", f"-ffile-prefix-map={directory}=.", "-c", source,
            "-o", str(_scratch(unit))], directory


def _scratch(unit: DebugUnit) -> Path:
    # Named for this process: two pairs' builds may compile the same trusted original at once (a parallel
    # nightly), and two compilers writing one file would leave neither's object. The name reaches no byte.
    return unit.output.with_name(f"{unit.output.name}.{_PROCESS_TAG}.tmp")


_PROCESS_TAG = f"{os.getpid()}-{secrets.token_hex(4)}"  # sandboxes have PID namespaces of their own


def _compile(baseline: Baseline, unit: DebugUnit, compiler: str, niced: bool = False) -> None:
    command, directory = _command(baseline, unit, compiler)
    _run(unit, [*_NICE, *command] if niced else command, directory)
    _scratch(unit).replace(unit.output)


def _run(unit: DebugUnit, command: list[str], directory: Path) -> None:
    unit.output.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(command, cwd=directory, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or ["no output"])[0]
        raise BuildError(f"{unit.object}: the debug compile for the struct-layout check failed: {first}")


# An early compile yields the processor to make's own work (its path to the link is what the build waits
# for) and takes what make leaves idle; once make has ended nothing else runs, and it runs at full speed.
_NICE = ("nice", "-n", "19")


@dataclass(frozen=True)
class _Started:
    command: list[str]
    dependencies: Path  # what the compile read (-MD), as make syntax
    started_ns: int


class EarlyDebugCompiles:
    """The debug compiles of the units whose objects change, run while make still builds.

    make links on one core for seconds after its compiles; the debug compiles of the units that
    changed can run meanwhile instead of after it. A unit is taken up once the wrapper has logged
    its compile and the object differs from the one the original build kept (a reused or unchanged
    object is the original's): its original side is compiled then if not already kept (the original
    tree never changes), and its patched side (everything it depends on, generated headers included,
    is made by then). After make a patched one is taken only when its recorded command is still the
    one it ran and no file it read (its own dependency list) changed since it started; otherwise, and
    for every unit not reached before make ended, debug_objects compiles it as before.
    """

    def __init__(self, baseline: Baseline, orig_tree: Path, patched_tree: Path, originals: dict[str, str],
                 cache: Path, patch_dir: Path, objlog: Path) -> None:
        self._baseline, self._objlog = baseline, objlog
        self._orig_tree, self._tree, self._cache, self._patch_dir = orig_tree, patched_tree, cache, patch_dir
        self._tree_real = patched_tree.resolve()  # the wrapper logs $PWD's paths
        self._originals = originals  # object -> the original's digest, for the units the stack left alone
        self._compiler = _compiler(baseline)
        self._seen: set[str] = set()
        self._started: dict[str, _Started] = {}
        self.taken: set[str] = set()  # the patched units whose early compile held
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> EarlyDebugCompiles:
        self._objlog.unlink(missing_ok=True)  # only what this make compiles
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        pending: dict[str, Path] = {}  # logged units whose final object is not made yet
        while not self._stop.wait(0.05):
            pending.update(self._newly_logged())
            for name, written in list(pending.items()):
                if self._stop.is_set():
                    return
                if written.exists() and written != self._tree_real / name:
                    continue  # kbuild still makes NAME.o from .NAME.o.tmp
                del pending[name]
                with contextlib.suppress(BuildError, OSError):  # what is not done here is done after make
                    self._take_up(name)

    def _newly_logged(self) -> dict[str, Path]:
        """{object: the file its compile wrote} for each compile the wrapper logged since the last look
        (kbuild compiles .NAME.o.tmp, which becomes NAME.o)."""
        try:
            lines = self._objlog.read_text().splitlines()
        except OSError:
            return {}
        found = {}
        for line in lines:
            written = Path(os.path.realpath(line))
            name = os.path.relpath(final_object(written), self._tree_real)
            if name not in self._seen:
                self._seen.add(name)
                found[name] = written
        return found

    def _take_up(self, name: str) -> None:
        if name not in self._originals or not _c_unit(self._baseline, self._tree, name) or \
                has_dwarf(self._orig_tree / name):
            return
        if (self._orig_tree / name).read_bytes() == (self._tree / name).read_bytes():
            return  # the original's object (reused, or the same compile): nothing of it is in the diff
        original = original_debug_unit(self._orig_tree, name, self._cache, self._originals[name])
        if not original.output.is_file():
            _compile(self._baseline, original, self._compiler, niced=True)
        patched = debug_unit(self._tree, name, self._patch_dir)
        self._start(patched)
        # The diff reads both sides' types next, in this process when the sandbox is kept for it: read now,
        # while make links on one core, they are there already (types.read_types keeps them by content).
        with contextlib.suppress(ValueError):
            read_types(original.output)
            read_types(_scratch(patched))

    def _start(self, unit: DebugUnit) -> None:
        command, directory = _command(self._baseline, unit, self._compiler)
        dependencies = _scratch(unit).with_name(unit.output.name + ".d")
        started_ns = time.time_ns()
        _run(unit, [*_NICE, *command, "-MD", "-MF", str(dependencies)], directory)
        self._started[unit.object] = _Started(command, dependencies, started_ns)

    def started(self) -> set[str]:
        """The patched units whose early compile has run."""
        return set(self._started)

    def take(self, unit: DebugUnit) -> bool:
        """Whether `unit`'s early compile holds; if so its output is in place."""
        started = self._started.get(unit.object)
        if started is None or not _scratch(unit).is_file():
            return False
        command, directory = _command(self._baseline, unit, self._compiler)
        holds = command == started.command and _unchanged_since(started.dependencies, directory, started.started_ns)
        started.dependencies.unlink(missing_ok=True)
        if holds:
            _scratch(unit).replace(unit.output)
            self.taken.add(unit.object)
        return holds


def _unchanged_since(dependencies: Path, directory: Path, started_ns: int) -> bool:
    """Every file the make-syntax dependency list names exists and was last written before `started_ns`."""
    try:
        text = dependencies.read_text().replace("\\\n", " ")
    except OSError:
        return False
    _, _, listed = text.partition(": ")
    try:
        return all(os.stat(directory / name).st_mtime_ns < started_ns for name in listed.split())
    except OSError:
        return False
