"""What a source patch may do, checked before git apply writes anything: change text files in the tree.

A live patch replaces functions, so a patch that is empty, binary, CRLF-mangled, or that deletes,
renames, copies or re-modes files, creates a symlink, or reaches outside the baseline's tree (`../`,
an absolute path, a symlink in the tree) is refused in one line naming the patch and the file.
git apply refuses most of these too, but in words about hunks; these say what to do.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path, PurePosixPath

from ..errors import PatchError
from ..files import TEXT_LIMIT, read_input

# git apply --summary lines that change what files exist or what they are: (prefix, words before
# the path, what the refusal says).
_REFUSED_SUMMARIES = (
    ("delete mode", 1, "deletes {path}: a live patch replaces functions and cannot remove a source file"),
    ("rename", 0, "renames {path}: a live patch cannot move a source file; keep the name"),
    ("copy", 0, "copies {path}: a live patch cannot copy a source file; add the code as a new file"),
    ("mode change", 3, "changes the mode of {path}: a live patch changes source text only"),
)
_ALLOWED_NEW_MODES = ("100644", "100755")


def check_patch_text(patch: Path) -> None:
    """Refuse an empty patch or one whose lines were turned into CRLF, before any git runs."""
    data = read_input(patch, "patch", TEXT_LIMIT)
    lines = data.split(b"\n")
    headers = [line for line in lines if line.startswith((b"diff --git ", b"--- ", b"+++ ", b"@@ "))]
    if not headers:
        raise PatchError(f"{patch}: empty patch: it changes no file (no 'diff --git', '---'/'+++' or '@@' lines); "
                         "write the fix as a unified diff (git diff, tools/make-patch)")
    if any(line.endswith(b"\r") for line in headers):
        raise PatchError(f"{patch}: has CRLF line endings (an editor or mail client converted it); convert it "
                         "back to LF (dos2unix) and build again")


def check_patch_listing(patch: Path, tree: Path, env: dict[str, str]) -> list[str]:
    """The files `patch` changes, refusing binary changes, file deletions/renames/copies/mode changes,
    symlinks and paths outside `tree` (also through a symlink in it)."""
    for line in _git(["--summary"], patch, tree, env).splitlines():
        summary = line.strip()
        for prefix, skipped, rule in _REFUSED_SUMMARIES:
            if summary.startswith(prefix):
                path = summary.removeprefix(prefix).strip().split(maxsplit=skipped)[-1]
                raise PatchError(f"{patch}: {rule.format(path=path)}")
        if summary.startswith("create mode ") and summary.split()[2] not in _ALLOWED_NEW_MODES:
            raise PatchError(f"{patch}: creates {summary.split(maxsplit=3)[3]} with mode {summary.split()[2]} "
                             "(a symlink or special file); a patch may only add regular source files")
    touched = []
    for entry in _git(["--numstat", "-z"], patch, tree, env).split("\0"):
        if entry.count("\t") < 2:
            continue
        added, _removed, path = entry.split("\t", 2)
        if added == "-":
            raise PatchError(f"{patch}: changes {path} as a binary file; a live patch changes source text only")
        _check_inside(patch, tree, path)
        touched.append(path)
    return touched


def _check_inside(patch: Path, tree: Path, path: str) -> None:
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise PatchError(f"{patch}: touches {path!r}, outside the baseline's tree; paths must be relative to "
                         "its top directory (a/..., b/...)")
    for depth in range(1, len(pure.parts) + 1):
        prefix = tree.joinpath(*pure.parts[:depth])
        if prefix.is_symlink():
            raise PatchError(f"{patch}: touches {path!r} through the symbolic link "
                             f"{PurePosixPath(*pure.parts[:depth])} -> {os.readlink(prefix)} in the tree; "
                             "patch the file it stands for at its own path")


def _git(options: list[str], patch: Path, tree: Path, env: dict[str, str]) -> str:
    result = subprocess.run(["git", "apply", *options, str(patch.resolve())], cwd=tree, env=env,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reasons = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        reason = " ".join(reasons[:2]) or result.stderr.strip() or "git apply failed"
        raise PatchError(f"{patch}: is not a patch git can read: {reason}")
    return result.stdout
