"""Cached stage results are checked before they are trusted: a damaged one is rebuilt, never used.

Each stage record lists the sha256 of the files the stage made (objects, image, extract,
payload); doit keeps the sha256 of the record itself from the last successful run. A stage
is up to date only when its record is byte for byte the one it wrote and every file the
record lists still has its recorded hash, so a truncated record, an edited object or a
tampered payload makes the stage run again instead of flowing into a signed release.

Hashing every output on every run made a no-op rebuild read every object of a baseline,
and checking the pristine tree ran git twice. So each check also leaves, in doit's saved
values, the size and mtime_ns of every file at the moment its hash was verified (and a
fingerprint of the pristine tree's files once git found it clean): a file whose size and
mtime_ns are the remembered ones keeps its remembered hash, any other is read and hashed
again, and a tree whose fingerprint changed is asked of git again. Rewriting a file
changes its mtime_ns, so a tampered output is still found; only a change that restores
both size and mtime_ns on purpose goes unseen, the limit make and doit accept too.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from ..errors import XspliceError
from ..files import read_json, sha256_file, write_atomic
from ..project import Project
from ..records import STAGE_RECORDS

# What a check remembers of a file it hashed: path (relative to the checkout, so a copied checkout keeps
# it) -> [size, mtime_ns, sha256].
Known = dict[str, list[Any]]


def _key(path: Path, root: Path | None) -> str:
    return os.path.relpath(path, root) if root is not None else str(path)


def file_sha256(path: Path, known: Known | None = None, root: Path | None = None) -> str | None:
    """The sha256 of `path` (None when it is not a regular file); the remembered one when its size and
    mtime_ns are those it had when that hash was taken."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(status.st_mode):
        return None
    entry = known.get(_key(path, root)) if known else None
    if isinstance(entry, list) and entry[:2] == [status.st_size, status.st_mtime_ns]:
        return str(entry[2])
    return sha256_file(path)


def remember(paths: list[Path], root: Path | None = None) -> Known:
    """Hash `paths` now and remember each with its size and mtime_ns (a file changing meanwhile is left out)."""
    known: Known = {}
    for path in paths:
        try:
            before = os.stat(path)
            digest = sha256_file(path)
            after = os.stat(path)
        except OSError:
            continue
        key = [after.st_size, after.st_mtime_ns]
        if stat.S_ISREG(after.st_mode) and key == [before.st_size, before.st_mtime_ns]:
            known[_key(path, root)] = [*key, digest]
    return known


def files_digest(paths: list[Path], known: Known | None = None, root: Path | None = None) -> str:
    """One sha256 over the names and bytes of `paths`; a missing file counts as different content."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.name}\0".encode())
        content = file_sha256(path, known, root)
        digest.update(content.encode() if content else b"missing")
    return digest.hexdigest()


def outputs_intact(project: Project, stage: str, record: dict[str, Any], record_dir: Path,
                   known: Known | None = None, tree_fingerprint: str | None = None) -> bool:
    """Whether every output `record` lists for `stage` still has its recorded content.

    `known` and `tree_fingerprint` are what an earlier check remembered (see `remember`, `tree_state`).
    """
    if stage == "checkout":
        return _checkout_intact(project, record, tree_fingerprint)
    expected = listed_outputs(project, stage, record, record_dir)
    if expected is None:
        return False
    return all(file_sha256(path, known, project.root) == digest for path, digest in expected.items())


def listed_outputs(project: Project, stage: str, record: dict[str, Any], record_dir: Path) -> dict[Path, str] | None:
    """The files `record` says `stage` made, with their hashes; None when the record lacks what it must hold."""
    declared = STAGE_RECORDS.get(stage)
    if declared is None:
        return {}
    try:
        return declared.from_json(record, record_dir / declared.FILE).outputs(project, record_dir)
    except (XspliceError, KeyError, TypeError, AttributeError):
        return None  # a record without the fields it must have is itself damaged


def _checkout_intact(project: Project, record: dict[str, Any], fingerprint: str | None = None) -> bool:
    """The pristine tree is at the recorded commit with no file changed, added or removed.

    Without git when the tree's fingerprint is the one remembered after git last found it so.
    """
    tree = project.root / str(record.get("tree", ""))
    if not (tree / ".git").exists():
        return False
    commit = str(record.get("commit"))
    before = tree_state(tree, commit)
    if before is not None and before in (fingerprint, _verified_state(tree)):
        return True
    # Imported here: the checkout stage's module (and GitPython) is for when git must run, not for every plan.
    from ..stages.checkout import pristine_at

    intact = pristine_at(tree, commit)
    if intact and before is not None and tree_state(tree, commit) == before:
        # doit keeps a task's values only when the task runs, so the fingerprint it saved stays the old one
        # while the checkout stage is up to date: after a file is only touched, every later check would run
        # git again. What git found intact, unchanged while it looked, is kept beside the tree instead.
        write_atomic(_verified_state_file(tree), before.encode())
    return intact


def _verified_state_file(tree: Path) -> Path:
    return tree.with_name(tree.name + ".verified-state")


def _verified_state(tree: Path) -> str | None:
    try:
        return _verified_state_file(tree).read_text() or None
    except OSError:
        return None


def checkout_state(project: Project, record: dict[str, Any]) -> str | None:
    """The pristine tree's fingerprint when git finds it intact now (what a later check may trust), else None."""
    if not _checkout_intact(project, record):
        return None
    return tree_state(project.root / str(record.get("tree", "")), str(record.get("commit")))


def tree_state(tree: Path, commit: str) -> str | None:
    """A fingerprint of every entry of `tree` outside .git (name, kind, size, mtime_ns) and of its
    detached HEAD; None when HEAD is not `commit` detached (then only git can tell)."""
    try:
        head = (tree / ".git" / "HEAD").read_text().strip()
    except OSError:
        return None
    if head != commit:
        return None
    digest = hashlib.sha256(head.encode())
    _walk_state(tree, "", digest)
    return digest.hexdigest()


def _walk_state(directory: Path, prefix: str, digest: Any) -> None:
    with os.scandir(directory) as listing:
        entries = sorted(listing, key=lambda entry: entry.name)
    for entry in entries:
        if not prefix and entry.name == ".git":
            continue
        status = entry.stat(follow_symlinks=False)
        name = prefix + entry.name
        digest.update(f"{name}\0{status.st_mode:o}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
        if entry.is_dir(follow_symlinks=False):
            _walk_state(Path(entry.path), name + "/", digest)


def stage_intact(project: Project, stage: str, record_path: Path, targets: list[Path], saved: dict[str, Any]) -> bool:
    """Whether `stage`'s targets are as it last wrote them and every output its record lists is intact;
    `saved` is what `stage_values` returned after that run (doit keeps it)."""
    known = saved.get("known") if isinstance(saved.get("known"), dict) else None
    if saved.get("targets_sha256") != files_digest(targets, known, project.root):
        return False
    try:
        content = read_json(record_path, f"{stage} record")
    except XspliceError:
        return False
    fingerprint = saved.get("tree_state") if isinstance(saved.get("tree_state"), str) else None
    return isinstance(content, dict) and outputs_intact(project, stage, content, record_path.parent, known,
                                                        fingerprint)


def stage_values(project: Project, stage: str, record_path: Path, targets: list[Path]) -> dict[str, Any]:
    """What a later `stage_intact` needs, taken right after the stage ran: the targets' digest, and the
    size, mtime_ns and hash of every target and listed output, or the pristine tree's fingerprint."""
    try:
        content = read_json(record_path, f"{stage} record")
    except XspliceError:
        content = None
    outputs = listed_outputs(project, stage, content, record_path.parent) if isinstance(content, dict) else None
    known = remember([*targets, *(outputs or {})], project.root)
    values: dict[str, Any] = {"targets_sha256": files_digest(targets, known, project.root), "known": known}
    if stage == "checkout" and isinstance(content, dict):
        values["tree_state"] = checkout_state(project, content)
    return values
