"""A content-addressed store of unsigned payloads and their stage records, shared between nightly workers.

The key is the sha256 of every input a payload depends on: the baseline definition and
its pinned commit, the configuration, the patch bytes, the toolchain lock and the code
of the stages that make it. Same key, same bytes (the stages are deterministic), so a
job whose key is present returns the stored result instead of building. An entry is
a directory written beside its final name and renamed into place: readers see a whole
entry or none, and one whose payload does not have its recorded hash is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..code_identity import identity
from ..files import dump_json, remove_tree, sha256_bytes, sha256_file
from ..patches import build_spec, pair_patch_digest, spec_files
from ..project import Project
from ..target.baseline import load_baseline

# The stages whose code decides the unsigned payload (signing happens later, on the coordinator).
_STAGES = ("checkout", "build_base", "build_orig", "build_patched", "diff", "payload")
_PAYLOAD = "payload.unsigned"
_RECORDS = "records.json"


@dataclass(frozen=True)
class StoredResult:
    records: dict[str, str]  # name (relative to work/BASELINE) -> the record's JSON text
    unsigned: bytes


def stages_code() -> str:
    """One digest of this installation's code that decides unsigned payloads (workers must match the coordinator)."""
    code = {stage: identity(stage) for stage in _STAGES}
    return hashlib.sha256(json.dumps({"code": code, "version": __version__}, sort_keys=True).encode()).hexdigest()


def store_key(project: Project, baseline: str, patch: str, lock_sha256: str) -> str:
    """The sha256 of every input of (baseline, patch)'s unsigned payload."""
    definition = load_baseline(project, baseline)
    inputs = {
        "baseline": definition.name,
        "definition_sha256": sha256_file(definition.definition),
        "commit": definition.source.commit,
        "config_sha256": sha256_file(definition.build.config) if definition.build.config else None,
        "patch": patch,
        "patch_sha256": pair_patch_digest(project, patch, definition.name),
        # A stacked payload is built on its stack's patches too (and depends on their payloads).
        "stack_sha256": [sha256_file(path) for path in spec_files(project, build_spec(project, patch,
                                                                                       definition.name),
                                                                  definition.name)[0]],
        "toolchain_lock_sha256": lock_sha256,
        "code": stages_code(),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _entry(store: Path, key: str) -> Path:
    return store / key[:2] / key


def lookup(store: Path, key: str) -> StoredResult | None:
    """The stored result for `key`, or None when absent or damaged (then the job builds it again)."""
    entry = _entry(store, key)
    try:
        records = json.loads((entry / _RECORDS).read_text())
        unsigned = (entry / _PAYLOAD).read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(records, dict) or records.get("unsigned_sha256") != sha256_bytes(unsigned):
        return None
    return StoredResult(records=records["records"], unsigned=unsigned)


def put(store: Path, key: str, result: StoredResult) -> None:
    """Add an entry; a concurrent writer of the same key wrote the same bytes, so the first rename wins."""
    entry = _entry(store, key)
    if lookup(store, key) is not None:
        return
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=entry.parent))
    try:
        (staging / _PAYLOAD).write_bytes(result.unsigned)
        (staging / _RECORDS).write_bytes(dump_json({"records": result.records,
                                                    "unsigned_sha256": sha256_bytes(result.unsigned)}))
        remove_tree(entry)  # a damaged entry (lookup refused it) is replaced
        try:
            os.rename(staging, entry)
        except OSError:
            if lookup(store, key) is None:
                raise
    finally:
        remove_tree(staging)
