"""The nightly release: out/release/<baseline>/<patch>.livepatch and manifest.json, one entry per pair.

The manifest is the nightly's answer for every (baseline, patch) pair that has a variant:
either the signed payload and the hashes that identify what it was built from, or the
one-line reason the pair failed. Its bytes depend only on the inputs (sorted entries,
sorted keys, no dates), so two nightlies of the same inputs give the same manifest.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import OutputError, XspliceError
from ..files import dump_json, read_json, remove_tree, sha256_file, write_atomic
from ..patches import chain, pair_patch_digest
from ..project import Project
from ..records import BaseRecord, Records, Report
from ..stages import toolchain
from ..stages.sign import configured_keys
from ..target.baseline import load_baseline

MANIFEST = "manifest.json"
SIGNER = "signer.pem"
_BASELINE_STAGES = ("checkout", "build-base", "build-orig")
# prove: only real-Xen baselines have it (baseline/runtime/NAME.toml); a pair of another never fails there.
_PAIR_STAGES = ("build-patched", "diff", "payload", "sign", "prove")


@dataclass(frozen=True)
class Pair:
    baseline: str
    patch: str

    @property
    def name(self) -> str:
        return f"{self.baseline}/{self.patch}"


def stage_tasks(pair: Pair) -> list[str]:
    """The doit tasks one pair's payload goes through, in order (the first failure is the pair's reason)."""
    return (["toolchain", "dev-keys"] + [f"{stage}:{pair.baseline}" for stage in _BASELINE_STAGES]
            + [f"{stage}:{pair.name}" for stage in _PAIR_STAGES])


def failure_reason(pair: Pair, failures: dict[str, str]) -> str | None:
    for task in stage_tasks(pair):
        if task in failures:
            return f"{task}: {failures[task]}"
    return None


def entry(project: Project, pair: Pair, reason: str | None) -> dict[str, Any]:
    """The manifest entry of one pair: from its report when it built, else what is known and why not."""
    if reason is None:
        try:
            return _ok_entry(project, pair)
        except XspliceError as error:
            reason = f"sign:{pair.name}: {error.message}"
    return _failed_entry(project, pair, reason)


def _ok_entry(project: Project, pair: Pair) -> dict[str, Any]:
    records = Records(project, pair.baseline, pair.patch)
    report = Report.read(records.report)
    if not records.signed.is_file() or sha256_file(records.signed) != report.payload_sha256:
        raise XspliceError(f"{records.signed}: missing or not the payload its report.json describes; run again")
    if not records.provenance.is_file() or sha256_file(records.provenance) != report.provenance_sha256:
        raise XspliceError(f"{records.provenance}: missing or not the envelope its report.json describes; run again")
    return {
        "patch": pair.patch, "baseline": pair.baseline, "status": "ok", "reason": None,
        "patch_sha256": report.patch_sha256, "commit": report.commit, "base_build_id": report.base_build_id,
        "toolchain_lock_sha256": report.toolchain_lock_sha256,
        "functions": [function.to_json() for function in report.functions],
        "new_functions": report.new_functions, "payload_build_id": report.payload_build_id,
        "unsigned_payload_sha256": report.unsigned_payload_sha256, "payload_sha256": report.payload_sha256,
        "payload": f"{pair.baseline}/{pair.patch}.livepatch",
        # The chain: what it goes on top of (applied in this order first), and how it is applied.
        "stack": report.stack, "fixes": report.fixes, "action": report.action,
        "depends_build_id": report.depends_build_id,
        "provenance": f"{pair.baseline}/{records.provenance.name}", "provenance_sha256": report.provenance_sha256,
    }


def _failed_entry(project: Project, pair: Pair, reason: str) -> dict[str, Any]:
    # Paths in the checkout as the manifest names everything: relative, so the bytes do not vary by directory.
    reason = reason.replace(f"{project.root.resolve()}/", "").replace(f"{project.root}/", "")
    return {
        "patch": pair.patch, "baseline": pair.baseline, "status": "failed", "reason": reason,
        "patch_sha256": _known(lambda: pair_patch_digest(project, pair.patch, pair.baseline)),
        "commit": _known(lambda: load_baseline(project, pair.baseline).source.commit),
        "base_build_id": _base_build_id(project, pair, reason),
        "toolchain_lock_sha256": _known(lambda: toolchain.lock_digest(project.lock_path)),
        "functions": [], "new_functions": [], "payload_build_id": None,
        "unsigned_payload_sha256": None, "payload_sha256": None, "payload": None,
        "provenance": None, "provenance_sha256": None, "stack": _known(lambda: list(chain(project, pair.patch))),
        "fixes": None, "action": None, "depends_build_id": None,
    }


def _base_build_id(project: Project, pair: Pair, reason: str) -> str | None:
    # Only when the baseline's own stages went through in this run: otherwise base.json may be stale.
    if not reason.startswith(tuple(f"{stage}:{pair.name}" for stage in _PAIR_STAGES)):
        return None
    return _known(lambda: BaseRecord.read(Records(project, pair.baseline).build_base).build_id)


def _known(value: Any) -> Any:
    try:
        return value()
    except (XspliceError, OSError, KeyError):
        return None


def write_release(project: Project, entries: list[dict[str, Any]]) -> Path:
    """Stage out/release/ beside the old one and swap it in: readers see the old release or the new one."""
    release = project.out_dir / "release"
    if release.is_symlink() or (release.exists() and not release.is_dir()):
        raise OutputError(f"{release}: is not a directory this tool made (a file or a symbolic link); refusing to "
                          "replace it: move it away and run again")
    try:
        project.out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".release-", dir=project.out_dir))
    except OSError as error:
        raise OutputError(f"{project.out_dir}: cannot write the release: {error.strerror or error}") from None
    try:
        ordered = sorted(entries, key=lambda e: (e["baseline"], e["patch"]))
        for item in ordered:
            if item["status"] == "ok":
                records = Records(project, item["baseline"], item["patch"])
                write_atomic(staging / item["payload"], records.signed.read_bytes())
                write_atomic(staging / item["provenance"], records.provenance.read_bytes())
        manifest: dict[str, Any] = {"payloads": ordered, "xsplice_build_version": __version__,
                                    "signer_certificate": None}
        certificate = configured_keys(project.root).certificate
        if certificate.is_file():
            write_atomic(staging / SIGNER, certificate.read_bytes())
            manifest["signer_certificate"] = SIGNER
        write_atomic(staging / MANIFEST, dump_json(manifest))
        _swap(staging, release)
    except OSError as error:
        raise OutputError(f"{release}: cannot write the release: {error.strerror or error}") from None
    finally:
        remove_tree(staging)
    return release


def _swap(staging: Path, release: Path) -> None:
    old = Path(tempfile.mkdtemp(prefix=".release-old-", dir=release.parent))
    old.rmdir()
    if release.exists():
        release.rename(old)
    staging.rename(release)
    shutil.rmtree(old, ignore_errors=True)


def load_manifest(path: Path) -> list[dict[str, Any]]:
    """The entries of a release manifest (a list, or an object holding one under "payloads")."""
    data = read_json(path, "release manifest")
    entries = data.get("payloads") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise XspliceError(f"{path}: not a release manifest (expected a list of entries or an object with "
                           "'payloads')")
    for number, item in enumerate(entries):
        missing = [key for key in ("patch", "baseline", "status") if not isinstance(item.get(key), str)]
        if missing:
            raise XspliceError(f"{path}: entry {number} lacks {', '.join(missing)}")
    return entries
