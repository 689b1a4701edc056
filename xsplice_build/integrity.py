"""Cached stage results are checked before they are trusted: a damaged one is rebuilt, never used.

Each stage record lists the sha256 of the files the stage made (objects, image, extract,
payload); doit keeps the sha256 of the record itself from the last successful run. A stage
is up to date only when its record is byte for byte the one it wrote and every file the
record lists still has its recorded hash, so a truncated record, an edited object or a
tampered payload makes the stage run again instead of flowing into a signed release.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

from .errors import XspliceError
from .files import sha256_file
from .project import Project
from .records import STAGE_RECORDS


def files_digest(paths: list[Path]) -> str:
    """One sha256 over the names and bytes of `paths`; a missing file counts as different content."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.name}\0".encode())
        digest.update(sha256_file(path).encode() if path.is_file() else b"missing")
    return digest.hexdigest()


def outputs_intact(project: Project, stage: str, record: dict[str, Any], record_dir: Path) -> bool:
    """Whether every output `record` lists for `stage` still has its recorded content."""
    if stage == "checkout":
        return _checkout_intact(project, record)
    declared = STAGE_RECORDS.get(stage)
    if declared is None:
        return True
    try:
        expected = declared.from_json(record, record_dir / declared.FILE).outputs(project, record_dir)
    except (XspliceError, KeyError, TypeError, AttributeError):
        return False  # a record without the fields it must have is itself damaged
    return all(path.is_file() and sha256_file(path) == digest for path, digest in expected.items())


def _checkout_intact(project: Project, record: dict[str, Any]) -> bool:
    """The pristine tree is at the recorded commit with no file changed, added or removed."""
    tree = project.root / str(record.get("tree", ""))
    if not (tree / ".git").exists():
        return False
    head = _git(tree, "rev-parse", "HEAD")
    status = _git(tree, "status", "--porcelain", "--untracked-files=all", "--ignored")
    return head is not None and head.strip() == record.get("commit") and status == ""


def _git(tree: Path, *args: str) -> str | None:
    result = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, check=False,
                            env={**os.environ, "LC_ALL": "C", "GIT_CONFIG_NOSYSTEM": "1",
                                 "GIT_CEILING_DIRECTORIES": str(tree.parent)})
    return result.stdout if result.returncode == 0 else None
