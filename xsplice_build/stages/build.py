"""Stages 3 and 4: build the baseline as shipped, the original objects, and the patched ones.

Every build runs the baseline's own recipe in the stage's own copy of the tree (the
pristine checkout is never built in), with the locked compiler behind the xsplice-cc
wrapper: it adds the stage's flags, maps the build directory out of every object, and
logs each object it compiles. The patched build starts from a copy of the original
build tree with its timestamps, so make recompiles only what the patch touches.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..elf.notes import image_build_id
from ..elf.reader import read_elf_file
from ..errors import BuildError, PatchError
from ..files import copy_tree, sha256_file, sync_tree
from ..project import Project
from ..target.baseline import Baseline
from .patch_rules import check_patch_listing, check_patch_text
from .toolchain import Tool

SPLIT_SECTIONS_FLAGS = "-ffunction-sections -fdata-sections"
# Variables a caller's environment must not leak into a build: they change what make compiles.
_SCRUBBED = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEFILES", "CFLAGS", "CPPFLAGS", "LDFLAGS", "CC", "LD",
             "GCC_EXEC_PREFIX", "COMPILER_PATH", "LIBRARY_PATH", "C_INCLUDE_PATH", "CPATH", "DEPENDENCIES_OUTPUT")


@dataclass(frozen=True)
class BuildOutput:
    tree: Path
    objects: dict[str, str]  # relative path in the tree -> sha256, for each object compiled by this build
    image: Path
    build_id: str


def wrapper_path() -> Path:
    return Path(str(resources.files("xsplice_build") / "data" / "xsplice-cc"))


def reuse_helper_path() -> Path:
    return Path(str(resources.files("xsplice_build") / "data" / "xsplice-reuse"))


@dataclass(frozen=True)
class Reuse:
    """How a build shares objects with another: `keep` its own for later builds (an original tree), or take
    those of `original` (the tree it was copied from) where the compiler would see the same input, as the
    original's index says (sandboxed_reuse.py), naming in `wanted` the units the index lacks."""

    keep: bool = False
    original: Path | None = None
    wanted: Path | None = None


def reuse_index_dir(original_tree: Path) -> Path:
    """Where the index of an original tree's kept objects lives: beside the tree, in the directory only the
    stage that builds that tree may write."""
    return original_tree.parent / "reuse-index"


def prepare_tree(project: Project, baseline: Baseline, source_tree: Path, tree: Path) -> None:
    """A fresh copy of the pristine tree with the pinned configuration in place."""
    copy_tree(source_tree, tree)
    if baseline.build.config and baseline.build.config_dest:
        destination = tree / baseline.build.config_dest
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(baseline.build.config.read_bytes())


# Files only an original tree needs: the objects and commands its builds keep for reuse.
_ORIGINAL_ONLY = (".xsplice-orig", ".xsplice-argv")


@contextmanager
def patched_tree(slots: Path, original: Path) -> Iterator[Path]:
    """A tree to build a patch in, equal to `original` as a fresh copy would be, held for the block.

    Trees are kept in numbered slots under `slots` and reset from the original on each use
    (only what the last build there changed is rewritten): copying a real hypervisor's tree
    for every patch cost more than compiling the one file a fix touches. A slot is held with
    an advisory lock, so parallel builds of one baseline take different slots.
    """
    slots.mkdir(parents=True, exist_ok=True)
    for number in itertools.count():
        descriptor = os.open(slots / f"{number}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            continue
        try:
            tree = slots / str(number)
            sync_tree(original, tree, lambda name: name == ".git" or name.endswith(_ORIGINAL_ONLY))
            yield tree
        finally:
            os.close(descriptor)
        return


def compiler_link(bin_dir: Path, baseline: Baseline, tools: dict[str, Tool]) -> Path:
    """The wrapper, under the name the recipe invokes the compiler by (made before the sandbox, found inside).

    `gcc --version` reaches Xen's compile.h and so the image: the wrapper must carry the
    compiler's name. A build finds it by that name alone (its directory first on PATH), so
    make's recorded command lines name no directory: a copied build tree, in another slot
    or another checkout, stays up to date.
    """
    real = shutil.which(baseline.build.compiler)
    if real is None or os.path.realpath(real) != tools["gcc"].path:
        raise BuildError(f"{baseline.definition}: compiler {baseline.build.compiler!r} does not resolve to the "
                         f"locked gcc {tools['gcc'].path}; install it or fix [build] compiler")
    link = bin_dir / Path(baseline.build.compiler).name
    bin_dir.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink() or os.readlink(link) != str(wrapper_path()):
        link.unlink(missing_ok=True)
        link.symlink_to(wrapper_path())
    return link


def object_log(log: Path) -> Path:
    """Where the wrapper logs each object a build with log `log` compiles, as it compiles it."""
    return log.with_suffix(".objects")


def run_build(baseline: Baseline, tree: Path, tools: dict[str, Tool], extra_cflags: str, log: Path,
              prepare: bool, bin_dir: Path, reuse: Reuse = Reuse()) -> BuildOutput:
    """Run the recipe in `tree`; returns what it compiled (or reused) and the image it linked."""
    objlog = object_log(log)
    objlog.unlink(missing_ok=True)
    compiler = compiler_link(bin_dir, baseline, tools)
    env = build_environment(baseline, tree, tools, extra_cflags, objlog)
    env["PATH"] = os.pathsep.join([str(compiler.parent.resolve()), env.get("PATH", os.defpath)])
    if reuse.keep:
        env["XSPLICE_KEEP"] = "1"
    if reuse.original is not None:
        env.update({"XSPLICE_REUSE_FROM": str(reuse.original.resolve()), "XSPLICE_PYTHON": sys.executable,
                    "XSPLICE_REUSE_HELPER": str(reuse_helper_path()),
                    "XSPLICE_REUSE_INDEX": str(reuse_index_dir(reuse.original.resolve())),
                    "XSPLICE_REUSE_WANTED": str(reuse.wanted.resolve()) if reuse.wanted else ""})
    env["XSPLICE_CC"] = shutil.which(baseline.build.compiler) or tools["gcc"].path
    commands = [baseline.build.prepare] if prepare and baseline.build.prepare else []
    commands.append(baseline.build.command)
    with log.open("w") as output:
        for template in commands:
            argv = [_fill(word, tools, compiler) for word in template]
            output.write("$ " + " ".join(argv) + "\n")
            output.flush()
            try:
                result = subprocess.run(argv, cwd=tree, env=env, stdout=output, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, check=False)
            except OSError as error:
                raise BuildError(f"{baseline.definition}: [build] command {argv[0]!r} cannot run: "
                                 f"{error.strerror or error}; install it or correct the definition") from None
            if result.returncode != 0:
                raise BuildError(f"building {baseline.name} failed ({' '.join(argv)} exited "
                                 f"{result.returncode}): {_first_error(log)}; full log: {log}")
    image = tree / baseline.build.image
    if not image.is_file():
        raise BuildError(f"{baseline.definition}: the build made no image at {baseline.build.image}")
    return BuildOutput(tree=tree, objects=_compiled_objects(baseline, tree, objlog), image=image,
                       build_id=image_build_id(read_elf_file(image)).hex())


def check_expected_build_id(baseline: Baseline, build_id: str) -> None:
    """Is the old code the same as what the hot-patch is based on? The rebuild must be the shipped image."""
    expected = baseline.build.expected_build_id
    if expected and build_id != expected:
        raise BuildError(f"{baseline.definition}: the rebuilt image has build-id {build_id}, but the shipped "
                         f"one is {expected}: same source, config and toolchain must give the same image; check the "
                         "toolchain lock and [build] env before trusting this baseline")


def apply_patch(patch: Path, tree: Path) -> list[str]:
    """Apply `patch` with git apply (atomic: all hunks or none); returns the files it touches."""
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(tree.parent), "LC_ALL": "C"}
    check_patch_text(patch)
    touched = check_patch_listing(patch, tree, env)
    _git_apply([], patch, tree, env)
    return touched


def _git_apply(options: list[str], patch: Path, tree: Path, env: dict[str, str]) -> str:
    result = subprocess.run(["git", "apply", "--whitespace=nowarn", *options, str(patch.resolve())], cwd=tree,
                            env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reasons = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        reason = " ".join(reasons[:2]) or result.stderr.strip() or "git apply failed"
        raise PatchError(f"{patch}: does not apply to the baseline: {reason}; rebase the patch onto the "
                         "baseline's commit")
    return result.stdout


def build_environment(baseline: Baseline, tree: Path, tools: dict[str, Tool], extra_cflags: str,
                      objlog: Path) -> dict[str, str]:
    """The environment a build of `tree` runs in (the wrapper's variables without PATH's wrapper directory)."""
    env = {key: value for key, value in os.environ.items() if key not in _SCRUBBED}
    env.update({"LC_ALL": "C", "TZ": "UTC", "SOURCE_DATE_EPOCH": "1439856000"})
    env.update(baseline.build.env)
    env.update({"XSPLICE_CC": tools["gcc"].path, "XSPLICE_CFLAGS": extra_cflags,
                "XSPLICE_PREFIX_MAP": str(tree.resolve()), "XSPLICE_OBJLOG": str(objlog.resolve())})
    return env


def _fill(word: str, tools: dict[str, Tool], compiler: Path) -> str:
    # {cc} is the wrapper's bare name, found first on the build's PATH (see compiler_link).
    return word.format(jobs=os.cpu_count() or 1, cc=compiler.name, ld=tools["ld"].path)


def _compiled_objects(baseline: Baseline, tree: Path, objlog: Path) -> dict[str, str]:
    """The objects the wrapper logged, as paths in the tree, with their hashes."""
    if not objlog.is_file():
        return {}
    root = tree.resolve()
    under = (root / baseline.build.objects_under).resolve()
    ignored = [re.compile(pattern) for pattern in baseline.build.ignore_objects]
    objects: dict[str, str] = {}
    for line in sorted(set(objlog.read_text().splitlines())):
        path = final_object(Path(os.path.normpath(line)))
        if not path.is_relative_to(under) or not path.is_file():
            continue
        relative = path.relative_to(root).as_posix()
        if any(pattern.search(relative) for pattern in ignored):
            continue
        objects[relative] = sha256_file(path)
    return objects


def final_object(path: Path) -> Path:
    # kbuild-style builds (Xen with ENFORCE_UNIQUE_SYMBOLS) compile to dir/.name.o.tmp and then
    # post-process into dir/name.o: the object that reaches the image is the latter.
    match = re.fullmatch(r"\.(.+\.o)\.tmp", path.name)
    return path.with_name(match.group(1)) if match else path


def _first_error(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines()
    for line in lines:
        if re.search(r"\berror\b", line, re.IGNORECASE) and not line.startswith("$ "):
            return line.strip()[:300]
    return (lines[-1].strip() if lines else "no output")[:300]
