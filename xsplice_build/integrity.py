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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .files import sha256_file
from .project import Project

# Records whose outputs are files with a recorded sha256, keyed by stage.
_Listing = Callable[[Project, dict[str, Any], Path], dict[Path, str]]


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
    listing = _LISTINGS.get(stage)
    if listing is None:
        return True
    try:
        expected = listing(project, record, record_dir)
    except (KeyError, TypeError, AttributeError):
        return False  # a record without the fields it must have is itself damaged
    return all(path.is_file() and sha256_file(path) == digest for path, digest in expected.items())


def _tree_objects(project: Project, record: dict[str, Any], _record_dir: Path) -> dict[Path, str]:
    tree = project.root / record["tree"]
    return {tree / name: digest for name, digest in record["objects"].items()}


def _base_outputs(project: Project, record: dict[str, Any], record_dir: Path) -> dict[Path, str]:
    return {**_tree_objects(project, record, record_dir), project.root / record["image"]: record["image_sha256"]}


def _patched_objects(_project: Project, record: dict[str, Any], record_dir: Path) -> dict[Path, str]:
    return {record_dir / "objects" / f"{change['object']}.XSPLICE": change["patched_sha256"]
            for change in record["changed"]}


def _extract(_project: Project, record: dict[str, Any], record_dir: Path) -> dict[Path, str]:
    return {record_dir / "extract.o": record["extract_sha256"]}


def _unsigned(_project: Project, record: dict[str, Any], record_dir: Path) -> dict[Path, str]:
    return {record_dir / record["unsigned"]: record["sha256"]}


def _signed(_project: Project, record: dict[str, Any], record_dir: Path) -> dict[Path, str]:
    return {record_dir / record["payload"]: record["payload_sha256"]}


_LISTINGS: dict[str, _Listing] = {
    "build-base": _base_outputs,
    "build-orig": _tree_objects,
    "build-patched": _patched_objects,
    "diff": _extract,
    "payload": _unsigned,
    "sign": _signed,
}


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
